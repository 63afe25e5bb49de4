"""Exact-format rewards for tasks whose answer has one written form (the shipped arithmetic task, plain style).

The general verifier (`compute_rewards`) extracts the last number of a completion and compares values, so for the
gold `084` it also accepts `=84`, `1+084` or `84`: a hole an RL policy can learn to use. A task that fixes the
answer's format (the plain arithmetic preset: a zero-padded number, then EOS) needs the completion to BE the answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def exact_match(completion: Any, gold: Any) -> bool:
    """True iff the completion, stripped of surrounding whitespace, is exactly the gold answer (strings only)."""
    if not isinstance(completion, str) or gold is None:
        return False
    return completion.strip() == str(gold).strip() != ""


def exact_match_rewards(completions: Sequence[Any], golds: Sequence[Any]) -> np.ndarray:
    """0/1 float32 rewards, one per (completion, gold): `exact_match` (a reward_fn for GRPO and evaluation)."""
    if len(completions) != len(golds):
        raise ValueError(f"exact_match_rewards: {len(completions)} completions but {len(golds)} golds")
    return np.asarray([float(exact_match(c, g)) for c, g in zip(completions, golds)], np.float32)
