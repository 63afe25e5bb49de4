"""One reduction vocabulary for the SFT and RL losses, and the denominators that make micro-batching exact.

Every loss here is a sum over sequences of a per-sequence quantity s_b, divided by a denominator D:

| reduction | s_b | D (`loss_denominator(mask, reduction).policy`) |
|---|---|---|
| ``"token_mean"`` | Σ_t loss_bt (summed over the sequence's valid tokens) | valid tokens in the batch |
| ``"sequence_mean"`` | Σ_t loss_bt / L_b (the sequence's token mean) | sequences with at least one valid token |
| ``"token_sum"`` | Σ_t loss_bt | sequences (rows; ``sample_mask`` rows only if given) |

(``"sequence_sum"``, the SFT loss's old name for ``"token_sum"``, is accepted as a deprecated alias.)

Because D is a plain divisor of a sum over sequences, a logical batch split into micro-batches gives losses (and
gradients) that SUM exactly to the whole batch's when every micro-batch divides by the WHOLE batch's D: compute
``den = loss_denominator(full_mask, reduction)`` once and pass ``loss_denominator=den`` to every micro-batch call.
``den.sequences`` (sequences with a valid token) divides per-sequence terms that are always sequence means, such
as the RL loss's default KL term.
"""
from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Reduction", "REDUCTIONS", "LossDenominator", "loss_denominator", "canonical_reduction"]

Reduction = Literal["token_mean", "sequence_mean", "token_sum"]
REDUCTIONS = ("token_mean", "sequence_mean", "token_sum")


class LossDenominator(NamedTuple):
    """Divisors of one logical batch (a pytree of two float32 scalars; pass it through jit as an array argument).

    policy: the reduction's divisor (tokens for "token_mean", non-empty sequences for "sequence_mean",
    rows for "token_sum"); sequences: non-empty sequences (divides per-sequence-mean terms, e.g. the KL).
    """

    policy: jax.Array
    sequences: jax.Array


def canonical_reduction(reduction: str) -> str:
    """The reduction's canonical name; "sequence_sum" -> "token_sum" (deprecated alias); anything else unknown raises."""
    if reduction == "sequence_sum":
        warnings.warn("reduction='sequence_sum' is deprecated; it is 'token_sum' (the RL loss's name)",
                      DeprecationWarning, stacklevel=3)
        return "token_sum"
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (or the deprecated 'sequence_sum'), got {reduction!r}")
    return reduction


def loss_denominator(mask: jax.Array, reduction: str, *, sample_mask: jax.Array | None = None) -> LossDenominator:
    """The divisors of a WHOLE logical batch for ``reduction`` (see the module table) -> LossDenominator.

    mask [B, T] is the loss mask of the full batch (all micro-batches together). ``sample_mask`` [B] (False =
    padding row) only changes "token_sum", whose divisor counts rows; the others count valid tokens/sequences,
    which padding rows (mask all 0) never add to. Pass the result as ``loss_denominator=`` to `cat_rl_loss` /
    `cat_sft_loss` on each micro-batch: their losses and gradients then sum to the whole batch's.

    >>> import jax.numpy as jnp
    >>> mask = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    >>> [float(x) for x in loss_denominator(mask, "token_mean")], float(loss_denominator(mask, "token_sum").policy)
    ([4.0, 2.0], 3.0)
    """
    reduction = canonical_reduction(reduction)
    mask = jnp.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"loss_denominator: mask must be [B, T], got shape {mask.shape}")
    nonempty = jnp.sum(jnp.any(mask, axis=-1)).astype(jnp.float32)
    if reduction == "token_mean":
        policy = jnp.sum(mask).astype(jnp.float32)
    elif reduction == "sequence_mean":
        policy = nonempty
    else:
        if sample_mask is None:
            policy = jnp.asarray(mask.shape[0], jnp.float32)
        else:
            sample_mask = jnp.asarray(sample_mask).astype(bool)
            if sample_mask.shape != mask.shape[:1]:
                raise ValueError(f"loss_denominator: sample_mask {sample_mask.shape} must be [B]={mask.shape[:1]}")
            policy = jnp.sum(sample_mask).astype(jnp.float32)
    return LossDenominator(jnp.maximum(policy, 1.0), jnp.maximum(nonempty, 1.0))


def as_denominator(den, reduction: str, who: str) -> LossDenominator | None:
    """Accept a LossDenominator, a (policy, sequences) pair or a scalar policy divisor. A scalar also serves as the
    sequence count under the sequence reductions; under "token_mean" it leaves that count unknown (None)."""
    if den is None:
        return None
    if isinstance(den, LossDenominator):
        return LossDenominator(jnp.asarray(den.policy, jnp.float32), jnp.asarray(den.sequences, jnp.float32))
    if isinstance(den, tuple) and len(den) == 2:
        return LossDenominator(jnp.asarray(den[0], jnp.float32), jnp.asarray(den[1], jnp.float32))
    d = jnp.asarray(den, jnp.float32)
    if d.ndim != 0:
        raise ValueError(f"{who}: loss_denominator must be a scalar or loss_denominator(mask, reduction)'s result, "
                         f"got shape {d.shape}")
    return LossDenominator(d, d if reduction != "token_mean" else None)


def reduce_sequences(per_seq: jax.Array, lengths: jax.Array, reduction: str, policy_den: jax.Array) -> jax.Array:
    """Σ_b s_b (/ L_b under "sequence_mean") / D, for per-sequence sums s_b [B] over valid tokens."""
    if reduction == "sequence_mean":
        per_seq = jnp.where(lengths > 0, per_seq / jnp.maximum(lengths, 1), 0.0)
    return jnp.sum(per_seq) / policy_den


def local_denominator(mask: jax.Array, reduction: str) -> LossDenominator:
    """The denominators of this call's own rows (the behaviour without ``loss_denominator``); jit-safe."""
    nonempty = jnp.maximum(jnp.sum(jnp.any(mask, axis=-1)), 1).astype(jnp.float32)
    if reduction == "token_mean":
        policy = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    elif reduction == "sequence_mean":
        policy = nonempty
    else:
        policy = jnp.asarray(max(mask.shape[0], 1), jnp.float32)
    return LossDenominator(policy, nonempty)
