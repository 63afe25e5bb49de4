"""The array plumbing every CAT objective shares: token log-probs, dense group indices, per-group and per-sequence sums.

Shapes: B sequences (completions), T tokens. Per-token arrays are [B, T] with a {0,1} ``mask``; per-sequence
arrays are [B]; ``group_ids`` [B] are arbitrary ints marking the completions of one prompt (groups may have
different sizes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[targets] per token: [B, T, V], [B, T] -> [B, T] (float32 or wider)."""
    logits = jnp.asarray(logits)
    if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"token_logprobs: logits {logits.shape} must be targets {targets.shape} + [V]")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    # logit[target] - logsumexp(logits): no second [B, T, V] array of log-probs (matters at 150k vocabularies)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def group_index(group_ids: jax.Array) -> jax.Array:
    """Dense group index in [0, B) for arbitrary int group ids (jit-able: fixed size B)."""
    group_ids = jnp.asarray(group_ids)
    if group_ids.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [B], got shape {group_ids.shape}")
    _, inverse = jnp.unique(group_ids, return_inverse=True, size=group_ids.shape[0])
    return inverse.reshape(-1)


def _segment_sum(x: jax.Array, seg: jax.Array) -> jax.Array:
    """Per-sample sum over its group, broadcast back to the samples."""
    return jax.ops.segment_sum(x, seg, num_segments=seg.shape[0])[seg]


def _check_1d(name: str, x: jax.Array, b: int) -> None:
    if x.shape != (b,):
        raise ValueError(f"{name} must have shape [B]=({b},), got {x.shape}")


def _masked_seq_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0), axis=-1)
