"""Canonical answer keys and per-group answer ids: what majority voting compares (evaluation and the dynamic
consensus threshold of the CAT losses).

Two answers are the same vote when they have the same key: the exact rational value (written ``str(Fraction)``,
so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` agree) when the answer is a plain number, else its normalised string.
Pure Python and numpy (no JAX), like the rest of `jax_cat.rewards`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jax_cat.rewards.extract import extract_answer, normalize_answer, parse_number


def canonical_answer(answer: str | None) -> str | None:
    """The vote key of an already-extracted answer (see module doc); None when there is no answer."""
    if answer is None:
        return None
    value = parse_number(answer)
    if value is not None:
        return str(value)
    key = normalize_answer(answer)
    return key or None


def answer_key(text: str | None) -> str | None:
    """The vote key of a completion: its extracted final answer (`extract_answer`), canonicalised."""
    return canonical_answer(extract_answer(text))


def answer_ids(answers: Sequence[str | None], group_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """[B] int32 id of each row's answer within its group: 0, 1, ... in order of first appearance; -1 = no answer.

    `answers` are extracted final answers (`extract_answer` outputs, or keys from `answer_key`; None = nothing
    extracted); rows are compared by `canonical_answer`, so equal values share an id. `group_ids` [B] is the prompt
    index of each row (`SampleOutput.group_ids`, `jax_cat.sampling.group_ids`). The result is what
    `jax_cat.losses.dynamic_consensus_threshold` and `cat_rl_loss(answer_ids=...)` take.
    """
    groups = np.asarray(group_ids)
    if groups.ndim != 1 or len(answers) != groups.shape[0]:
        raise ValueError(
            f"answer_ids: need one answer per row and group_ids of shape [B]; got {len(answers)} answers and "
            f"group_ids of shape {groups.shape}"
        )
    seen: dict[int, dict[str, int]] = {}
    out = np.full((len(answers),), -1, np.int32)
    for row, (answer, group) in enumerate(zip(answers, groups.tolist())):
        key = canonical_answer(answer)
        if key is None:
            continue
        ids = seen.setdefault(int(group), {})
        out[row] = ids.setdefault(key, len(ids))
    return out
