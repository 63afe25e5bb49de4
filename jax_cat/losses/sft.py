"""Strategy-aligned SFT (`cat_sft_loss`): -log S(p) per sequence, p = exp(sum of the target tokens' log-probs).

Its gradient is the strategy's SFT weight times plain cross-entropy's; ``PassAtN(1)`` is exactly cross-entropy.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jax_cat.losses.arrays import _masked_seq_sum, token_logprobs
from jax_cat.losses.reduce import (LossDenominator, Reduction, as_denominator, canonical_reduction, local_denominator,
                                   reduce_sequences)
from jax_cat.losses.strategies import Strategy


def cat_sft_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, strategy: Strategy, *,
                 reduction: Reduction = "token_mean", logprobs: jax.Array | None = None,
                 loss_denominator: LossDenominator | jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Strategy-aligned SFT: -log S(p) per sequence with p = exp(sum of target log-probs) -> (loss, metrics).

    Its gradient is sft_weight(p) x the sequence's cross-entropy gradient (a custom JVP makes this exact).
    reduction (jax_cat.losses.reduce): "token_mean" = sum over sequences / number of target tokens (plain CE SFT's
    normalisation); "token_sum" = mean over sequences of the per-sequence loss (CE summed over each sequence's
    tokens; "sequence_sum" is its deprecated alias); "sequence_mean" = mean over sequences of the per-sequence loss
    divided by the sequence's length. ``PassAtN(1)`` is exactly plain cross-entropy. Pass ``logprobs`` [B, T]
    instead of logits to skip the softmax. Micro-batching: pass ``loss_denominator=loss_denominator(full_mask,
    reduction)`` to every micro-batch; their losses and gradients then sum to the whole batch's.

    >>> import jax, jax.numpy as jnp
    >>> from jax_cat.losses import PassAtN
    >>> logits, targets, mask = jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
    >>> grads = jax.grad(lambda x: cat_sft_loss(x, targets, mask, PassAtN(16))[0])(logits)
    """
    reduction = canonical_reduction(reduction)
    den = as_denominator(loss_denominator, reduction, "cat_sft_loss")
    return _sft_loss(strategy, reduction, logits, targets, jnp.asarray(mask), logprobs,
                     None if den is None else den.policy)


@partial(jax.jit, static_argnames=("strategy", "reduction"))
def _sft_loss(strategy, reduction, logits, targets, mask, logprobs, policy_den):
    mask = mask.astype(bool)
    if logprobs is None:
        logprobs = token_logprobs(logits, targets)
    if logprobs.shape != mask.shape:
        raise ValueError(f"cat_sft_loss: token log-probs {logprobs.shape} and mask {mask.shape} differ")
    seq_logp = _masked_seq_sum(logprobs, mask)  # [B]
    per_seq = -strategy.log_success_from_logp(seq_logp)
    num_tokens = jnp.sum(mask)
    if policy_den is None:
        policy_den = local_denominator(mask, reduction).policy
    loss = reduce_sequences(per_seq, jnp.sum(mask, axis=-1), reduction, policy_den)
    p = jnp.exp(jax.lax.stop_gradient(seq_logp))
    weight = jax.lax.stop_gradient(strategy.sft_weight(p))
    metrics = {
        "loss": loss,
        "ce_token_mean": -jnp.sum(jnp.where(mask, jax.lax.stop_gradient(logprobs), 0)) / jnp.maximum(num_tokens, 1),
        "seq_logp_mean": jnp.mean(jax.lax.stop_gradient(seq_logp)),
        "p_mean": jnp.mean(p),
        "sft_weight_mean": jnp.mean(weight),
        "sft_weight_max": jnp.max(weight),
    }
    return loss, metrics
