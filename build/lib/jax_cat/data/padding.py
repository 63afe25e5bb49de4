"""Left padding and the pad/EOS id rules: the one home shared by the data pipeline and the sampler (numpy only).

Names follow docs/glossary.md: `pad_token_id` (int), `eos_token_ids` (tuple), `attention_mask` (int32 {0, 1}).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]


def resolve_eos_token_ids(model: Any = None, tokenizer: Any = None) -> tuple[int, ...]:
    """EOS ids: the tokenizer's `eos_token_id`, then the model config's (an int or a list), deduplicated in order."""
    ids = _as_id_list(getattr(tokenizer, "eos_token_id", None))
    ids += _as_id_list(getattr(getattr(model, "config", None), "eos_token_id", None))
    return tuple(dict.fromkeys(ids))


def resolve_pad_token_id(model: Any = None, tokenizer: Any = None, eos_token_ids: Sequence[int] | None = None) -> int:
    """The pad id: the tokenizer's `pad_token_id`, else the model config's, else the first EOS id, else 0.

    The EOS ids are `eos_token_ids` when given, else `resolve_eos_token_ids(model, tokenizer)`. Padding positions
    are never read (the attention mask hides them), so any id works; this rule only keeps every caller on the same one.
    """
    for source in (tokenizer, getattr(model, "config", None)):
        candidate = getattr(source, "pad_token_id", None)
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    eos = resolve_eos_token_ids(model, tokenizer) if eos_token_ids is None else tuple(eos_token_ids)
    return int(eos[0]) if eos else 0


def pad_token_id(tokenizer: Any) -> int:
    """`resolve_pad_token_id` with a tokenizer only: its pad token, else its EOS, else 0 (kept name)."""
    return resolve_pad_token_id(tokenizer=tokenizer)


def left_pad(
    sequences: Sequence[Sequence[int]],
    max_len: int | None = None,
    pad_token_id: int | None = None,
    *,
    truncate: bool = False,
    names: Sequence[str] | None = None,
    pad_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-align token lists in [len(sequences), max_len]: int32 `(input_ids, attention_mask)`.

    Both call styles work: `left_pad(lists, 16, pad)` and `left_pad(lists, max_len=16, pad_id=pad)` (`pad_id` is the
    old name of `pad_token_id`). A sequence longer than `max_len` raises, naming it (`names[row]` or its row), unless
    `truncate`, which keeps its last `max_len` tokens.
    """
    if max_len is None:
        raise TypeError("left_pad: give max_len (the padded length)")
    if pad_token_id is not None and pad_id is not None and int(pad_token_id) != int(pad_id):
        raise TypeError(f"left_pad: pad_token_id={pad_token_id} and its alias pad_id={pad_id} disagree; give one")
    pad = pad_token_id if pad_token_id is not None else pad_id
    if pad is None:
        raise TypeError("left_pad: give pad_token_id (e.g. resolve_pad_token_id(model, tokenizer))")
    max_len = int(max_len)
    ids = np.full((len(sequences), max_len), int(pad), dtype=np.int32)
    mask = np.zeros((len(sequences), max_len), dtype=np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > max_len:
            if not truncate:
                who = names[row] if names is not None else f"row {row}"
                raise ValueError(
                    f"prompt {who} has {len(seq)} tokens > max_prompt_len={max_len}; raise max_prompt_len, "
                    "filter long prompts (filter_by_length) or pass truncate=True (keeps the last tokens)"
                )
            seq = seq[len(seq) - max_len :]
        if len(seq):
            ids[row, max_len - len(seq) :] = seq
            mask[row, max_len - len(seq) :] = 1
    return ids, mask
