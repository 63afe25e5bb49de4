"""Compute-aligned SFT and RL objectives (CAT): pure JAX on arrays, jit-able, shardable over a batch axis.

Shapes: B sequences (completions), T tokens. Per-token arrays are [B, T] with a {0,1} ``mask``; per-sequence
arrays are [B]; ``group_ids`` [B] are arbitrary ints marking the completions of one prompt (groups may have
different sizes). Nothing here knows about models: pass logits or per-token log-probabilities.
See docs/losses.md for the formulas and conventions.

The objectives live one idea per module; this module gathers them under their historical path
(``jax_cat.losses.cat.X`` keeps working):
- `arrays`: token log-probs, dense group indices, per-group and masked per-sequence sums;
- `success`: the success estimates p / q and the majority threshold k the CAT weight is evaluated at;
- `sft`: strategy-aligned SFT, `cat_sft_loss`;
- `weights`: the CAT weight of each sample and its batch normalisation, `cat_weights`;
- `advantages`: GRPO's group advantages and the CAT-weighted advantages of a whole batch;
- `rl`: GRPO's clipped surrogate on CAT-weighted advantages, `cat_rl_loss`.
"""
from __future__ import annotations

from jax_cat.losses.advantages import cat_advantages, group_advantages
from jax_cat.losses.arrays import group_index, token_logprobs
from jax_cat.losses.rl import cat_rl_loss
from jax_cat.losses.sft import cat_sft_loss
from jax_cat.losses.success import (consensus_threshold, dynamic_consensus_threshold, estimate_success,
                                    group_quantiles, success_from_group, success_from_logprobs)
from jax_cat.losses.weights import cat_weights

__all__ = [
    "token_logprobs",
    "group_index",
    "success_from_logprobs",
    "success_from_group",
    "group_quantiles",
    "dynamic_consensus_threshold",
    "consensus_threshold",
    "estimate_success",
    "group_advantages",
    "cat_weights",
    "cat_advantages",
    "cat_sft_loss",
    "cat_rl_loss",
]
