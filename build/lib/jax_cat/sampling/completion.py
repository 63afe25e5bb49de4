"""`Completion`: one sampled continuation of one prompt, with its tokens and log-probabilities."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

FinishReason = Literal["eos", "stop", "length"]


@dataclasses.dataclass(frozen=True, eq=False)
class Completion:
    """One generated continuation.

    - `text`: the decoded continuation, special tokens skipped, cut just before the first stop string (if any).
    - `tokens` [length] int32: the generated token ids, INCLUDING the EOS token when generation ended on one and the
      tokens that spelled a stop string (the model produced them; an RL loss should train on them).
    - `logprobs` [length] float32: the policy's log-probability of each generated token, log softmax of the raw
      model logits (temperature 1, no top-k/top-p), whatever the sampling settings: what CAT/RL losses and the
      mean-log-prob best-of-N scorer need.
    - `sample_logprobs` [length] float32: the log-probability under the distribution actually sampled from (after
      temperature, top-k and top-p); 0 for greedy decoding.
    - `finish_reason`: "eos" (an end-of-sequence token), "stop" (a stop string), "length" (max_new_tokens reached).
    - `prompt_index`, `sample_index`: where it came from in `generate(prompts, n=...)`; `prompt_index` is the row's
      group id (`group_id`, and `group_ids(...)` for a whole result).
    """

    text: str
    tokens: np.ndarray
    logprobs: np.ndarray
    sample_logprobs: np.ndarray
    finish_reason: FinishReason
    prompt_index: int = 0
    sample_index: int = 0

    @property
    def group_id(self) -> int:
        """The glossary name of `prompt_index`: the index of the prompt this completion continues."""
        return self.prompt_index

    @property
    def length(self) -> int:
        """Number of generated tokens (EOS included)."""
        return int(len(self.tokens))

    @property
    def cumulative_logprob(self) -> float:
        """Sum of the policy log-probs: log p(completion | prompt) at temperature 1."""
        return float(np.sum(self.logprobs, dtype=np.float64))

    @property
    def mean_logprob(self) -> float:
        """Length-normalised policy log-prob (the reward-free best-of-N score); -inf for an empty completion."""
        return self.cumulative_logprob / self.length if self.length else float("-inf")

    def __repr__(self) -> str:  # the arrays make the default repr unreadable
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return (
            f"Completion(text={text!r}, length={self.length}, finish_reason={self.finish_reason!r}, "
            f"mean_logprob={self.mean_logprob:.3f}, prompt_index={self.prompt_index}, "
            f"sample_index={self.sample_index})"
        )


def group_ids(completions: Sequence[Completion] | Sequence[Sequence[Completion]]) -> np.ndarray:
    """[B] int32 prompt index of each completion, in row-major order of `generate`'s output (or of a flat list).

    The `group_ids` the CAT losses take for these rows (docs/glossary.md).
    """
    flat: list = []
    for item in completions:
        flat.extend(item if not isinstance(item, Completion) else [item])
    bad = [i for i, c in enumerate(flat) if not isinstance(c, Completion)]
    if bad:
        raise TypeError(f"group_ids: expected Completions (or lists of them); item {bad[0]} is {type(flat[bad[0]]).__name__}")
    return np.asarray([c.prompt_index for c in flat], np.int32)
