"""Stop strings, applied after decoding: a row's text, tokens and log-probs cut at the first stop string.

The device loop only knows token ids, so generation of a row continues to EOS or max_new_tokens; then its text is
decoded and, if it contains a stop string, cut just before it, with the tokens and log-probs cut after the token that
completed it (see `Completion`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jax_cat.sampling.completion import Completion, FinishReason


def _cut_at_stop(tokenizer: Any, tokens: np.ndarray, stop: Sequence[str]) -> tuple[int, str] | None:
    """If the decoded tokens contain a stop string: (number of tokens up to and including the one that completes the
    first stop string, text before it). Else None."""

    def first_stop(text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        return min(hits) if hits else None

    full = tokenizer.decode(tokens, skip_special_tokens=True)
    if first_stop(full) is None:
        return None
    lo, hi = 1, len(tokens)  # smallest prefix whose text contains a stop string (monotone in the prefix length)
    while lo < hi:
        mid = (lo + hi) // 2
        if first_stop(tokenizer.decode(tokens[:mid], skip_special_tokens=True)) is None:
            lo = mid + 1
        else:
            hi = mid
    text = tokenizer.decode(tokens[:lo], skip_special_tokens=True)
    return lo, text[: first_stop(text)]


def _to_completion(tokenizer: Any, tokens: np.ndarray, logprobs: np.ndarray, sample_logprobs: np.ndarray,
                   ended_eos: bool, stop: Sequence[str], prompt_index: int, sample_index: int) -> Completion:
    text_tokens = tokens[:-1] if ended_eos else tokens
    finish: FinishReason = "eos" if ended_eos else "length"
    cut = _cut_at_stop(tokenizer, text_tokens, stop) if stop else None
    if cut is not None:
        keep, text = cut
        tokens, logprobs, sample_logprobs, finish = tokens[:keep], logprobs[:keep], sample_logprobs[:keep], "stop"
    else:
        text = tokenizer.decode(text_tokens, skip_special_tokens=True)
    return Completion(
        text=text, tokens=np.asarray(tokens, np.int32), logprobs=np.asarray(logprobs, np.float32),
        sample_logprobs=np.asarray(sample_logprobs, np.float32), finish_reason=finish,
        prompt_index=prompt_index, sample_index=sample_index,
    )
