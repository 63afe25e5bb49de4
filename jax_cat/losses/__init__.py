"""CAT losses: test-time strategies and strategy-aligned SFT/RL objectives (pure JAX on arrays).

Usage from any JAX training step (logits [B, T, V], targets/mask [B, T]; see docs/losses.md):

>>> import jax.numpy as jnp
>>> from jax_cat.losses import PassAtN, MajorityAtN, cat_sft_loss, cat_rl_loss, cat_advantages, loss_denominator
>>> logits, targets, mask = jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
>>> loss, metrics = cat_sft_loss(logits, targets, mask, PassAtN(8))  # -log S(p): pass@8-aligned SFT
>>> rewards, group_ids = jnp.array([1.0, 0.0, 0.0, 1.0]), jnp.array([0, 0, 1, 1])
>>> logprobs = -jnp.ones((4, 3))  # current-policy log-probs of the sampled tokens (differentiate through these)
>>> loss, metrics = cat_rl_loss(logprobs, None, None, rewards, group_ids, jnp.ones((4, 3)), MajorityAtN(8), "raw")

Micro-batches: advantages and the denominator from the WHOLE batch, then the micro-batch losses/grads just add up:

>>> adv, m = cat_advantages(MajorityAtN(8), rewards=rewards, group_ids=group_ids)
>>> den = loss_denominator(jnp.ones((4, 3)), "token_mean")
>>> parts = [cat_rl_loss(logprobs[i:i + 2], None, None, None, None, jnp.ones((2, 3)), MajorityAtN(8),
...                      advantages=adv[i:i + 2], loss_denominator=den)[0] for i in (0, 2)]
>>> bool(jnp.allclose(parts[0] + parts[1], loss))
True
"""
from jax_cat.losses.alignment import AlignmentReport, alignment_coefficient
from jax_cat.losses.cat import (
    cat_advantages,
    cat_rl_loss,
    cat_sft_loss,
    cat_weights,
    consensus_threshold,
    dynamic_consensus_threshold,
    estimate_success,
    group_advantages,
    group_quantiles,
    success_from_group,
    success_from_logprobs,
    token_logprobs,
)
from jax_cat.losses.config import REFERENCE_MAJORITY, REFERENCE_PASS_AT_N, CATLossConfig
from jax_cat.losses.reduce import LossDenominator, loss_denominator
from jax_cat.losses.state import CATState, history_append, history_quantiles, init_cat_state
from jax_cat.losses.strategies import (
    BestOfN,
    MajorityAtN,
    PassAtN,
    Strategy,
    pass_at_k,
    majority_rl_weight,
    majority_sft_weight,
    pass_at_k_many,
    strategy_from_spec,
)

__all__ = [
    "AlignmentReport",
    "alignment_coefficient",
    "cat_advantages",
    "CATLossConfig",
    "REFERENCE_PASS_AT_N",
    "REFERENCE_MAJORITY",
    "LossDenominator",
    "loss_denominator",
    "CATState",
    "init_cat_state",
    "history_quantiles",
    "history_append",
    "cat_rl_loss",
    "cat_sft_loss",
    "cat_weights",
    "consensus_threshold",
    "dynamic_consensus_threshold",
    "estimate_success",
    "group_advantages",
    "group_quantiles",
    "success_from_group",
    "success_from_logprobs",
    "token_logprobs",
    "BestOfN",
    "MajorityAtN",
    "PassAtN",
    "Strategy",
    "pass_at_k",
    "majority_rl_weight",
    "majority_sft_weight",
    "pass_at_k_many",
    "strategy_from_spec",
]
