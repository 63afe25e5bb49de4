"""Prompts in, token id lists out: tokenisation (`tokenize_prompts`) and the checks `generate` makes before decoding.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]], *, add_special_tokens: bool = True) -> list[list[int]]:
    """Prompt strings -> token id lists (lists of ints pass through unchanged)."""
    if len(prompts) == 0:
        return []
    if all(isinstance(p, str) for p in prompts):
        return [list(map(int, ids)) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise TypeError(f"prompts mixes strings and token lists (prompt {i} is a string)")
        out.append([int(t) for t in p])
    return out


def _tokenize_checked(model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int,
                      add_special_tokens: bool) -> list[list[int]]:
    """Step 2: tokenise; refuse empty prompts and prompts that would outgrow the model's positions."""
    token_lists = tokenize_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens)
    for i, toks in enumerate(token_lists):
        if not toks:
            raise ValueError(f"prompt {i} is empty after tokenisation; give at least one token (e.g. a BOS)")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions:
        too_long = [i for i, t in enumerate(token_lists) if len(t) + max_new_tokens > max_positions]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"prompt {i} has {len(token_lists[i])} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                f"model's max_position_embeddings={max_positions} ({len(too_long)} prompt(s) too long)"
            )
    return token_lists
