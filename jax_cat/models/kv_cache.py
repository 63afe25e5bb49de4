"""The static-shape KV cache of cached decoding: its layouts (per layer, or stacked for `scan_layers` models), an
empty cache, and how one layer writes its new keys/values into it."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_cat.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Key/value buffers with rotary already applied to keys; batch is always the leading axis.

    Per-layer (the default): `k` and `v` are tuples of [B, num_kv_heads, max_len, head_dim] arrays, one per layer.
    Stacked (models built with `scan_layers=True`): `k` and `v` are single [B, layers, num_kv_heads, max_len,
    head_dim] arrays. Head-major either way, so the decode-step attention dots read the cache without a re-layout.
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array

    @property
    def stacked(self) -> bool:
        """Whether the cache is one stacked array over layers (the scanned stack) rather than a tuple per layer."""
        return not isinstance(self.k, tuple | list)

    @property
    def max_len(self) -> int:
        """The number of positions the cache holds (prompt plus new tokens), whichever layout."""
        return self.k.shape[3] if self.stacked else self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        """The number of rows the cache holds, whichever layout."""
        return self.k.shape[0] if self.stacked else self.k[0].shape[0]


@dataclasses.dataclass(frozen=True)
class _StackedCacheSlot:
    """One layer's view of a stacked cache [B, L, K, S, D] inside the layer scan: writes go in place."""

    k: jax.Array
    v: jax.Array
    layer: jax.Array


def empty_cache(config: ModelConfig, batch_size: int, max_len: int, dtype, *, stacked: bool) -> KVCache:
    """An all-zero cache: per layer [batch_size, num_kv_heads, max_len, head_dim], or one stacked array."""
    c = config
    shape = (batch_size, c.num_key_value_heads, max_len, c.head_dim)
    n = c.num_hidden_layers
    if stacked:
        stacked_shape = (batch_size, n, *shape[1:])
        return KVCache(k=jnp.zeros(stacked_shape, dtype), v=jnp.zeros(stacked_shape, dtype))
    return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in range(n)), v=tuple(jnp.zeros(shape, dtype) for _ in range(n)))


def write_kv(
    cache: tuple[jax.Array, jax.Array] | _StackedCacheSlot, k: jax.Array, v: jax.Array, cache_index, dtype
) -> tuple[tuple[jax.Array, jax.Array] | _StackedCacheSlot, jax.Array, jax.Array]:
    """Writes one layer's head-major k, v [B, K, T, D] into its cache at slot `cache_index`.

    Returns (the updated cache, the whole cache's keys and values in `dtype`, which the queries attend to).
    """
    if isinstance(cache, _StackedCacheSlot):  # scan over layers: write this layer's slots into [B, L, K, S, D]
        start = (0, cache.layer, 0, cache_index, 0)
        cache_k = jax.lax.dynamic_update_slice(cache.k, k[:, None].astype(cache.k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache.v, v[:, None].astype(cache.v.dtype), start)
        new_cache = _StackedCacheSlot(cache_k, cache_v, cache.layer)
        k = jax.lax.dynamic_index_in_dim(cache_k, cache.layer, axis=1, keepdims=False).astype(dtype)
        v = jax.lax.dynamic_index_in_dim(cache_v, cache.layer, axis=1, keepdims=False).astype(dtype)
        return new_cache, k, v
    cache_k, cache_v = cache
    start = (0, 0, cache_index, 0)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
    return (cache_k, cache_v), cache_k.astype(dtype), cache_v.astype(dtype)
