"""Self-attention of the decoder family: grouped-query attention with rotary positions, optional q/k/v bias (Qwen2)
and per-head q/k RMSNorm (Qwen3), the two attention kernels, and the masks (causal, padding, sliding window).

Projection kernels are stored head-split ([embed, heads, head_dim]) so tensor parallelism shards whole heads;
`jax_cat.models.hf` converts to and from the flat HF [out, in] layout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.config import ModelConfig
from jax_cat.models.kv_cache import _StackedCacheSlot, write_kv
from jax_cat.models.layers import RMSNorm, _adapted, _normal, _param, _zeros
from jax_cat.models.rope import apply_rope

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give a uniform softmax, not NaN
ATTENTION_IMPLS = ("xla", "dot_product_attention")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: q[B,T,H,D], k/v[B,K,S,D] (head-major, the cache layout), mask[B,T,S] bool -> [B,T,H,D].

    Queries are regrouped to [B, K, G*T, D] so both products are plain batched matmuls with large M (on XLA:CPU
    the direct 5-d einsum ran ~3x slower). Keys/values come head-major so that the batch dims (B, K) lead and the
    cache feeds both dots as is: with a [B, S, K, D] cache XLA re-laid-out every layer's K and V each decode step.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[1]
    groups = h // kv_heads
    q = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = scores.reshape(b, kv_heads, groups, t, -1)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, groups * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(b, kv_heads, groups, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attention` through `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs; XLA elsewhere).

    Same arguments and result as `attention`. The kernel wants [B, S, K, D] keys/values, so the head-major cache
    is transposed here; fully masked rows (left padding) give finite outputs as in `attention`.
    """
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :]).astype(q.dtype)


def attention_mask_for_slots(
    query_slots: jax.Array, kv_mask: jax.Array, window: int | None
) -> jax.Array:
    """mask[B,T,S]: query in slot s attends key slot j iff j <= s, kv_mask[b, j] and (s - j < window if set)."""
    key_slots = jnp.arange(kv_mask.shape[1])
    rel = query_slots[:, None] - key_slots[None, :]  # [T, S]: s - j
    allowed = rel >= 0
    if window is not None:
        allowed = allowed & (rel < window)
    return allowed[None, :, :] & kv_mask[:, None, :].astype(bool)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions for left-padded rows: cumsum(mask) - 1, clipped at 0 (pads get position 0)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class Attention(nnx.Module):
    """Self-attention with GQA, rotary positions, optional qkv bias and q/k norm."""

    def __init__(
        self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=None, attention_impl: str = "xla"
    ):
        c = config
        d, h, kv, hd = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        init = _normal(0.02)
        pdt = param_dtype or dtype
        self.dtype = jnp.dtype(dtype)
        self.attention_impl = attention_impl
        self.q_proj = _param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pdt)
        self.k_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o_proj = _param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), pdt)
        if c.attention_bias:
            self.q_bias = _param(None, _zeros, (h, hd), ("heads", "head_dim"), pdt)
            self.k_bias = _param(None, _zeros, (kv, hd), ("kv_heads", "head_dim"), pdt)
            self.v_bias = _param(None, _zeros, (kv, hd), ("kv_heads", "head_dim"), pdt)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = _param(None, _zeros, (d,), (None,), pdt) if c.o_proj_bias else None
        if c.use_qk_norm:
            self.q_norm = RMSNorm(hd, c.rms_norm_eps, axis_name="head_dim", dtype=dtype, param_dtype=pdt)
            self.k_norm = RMSNorm(hd, c.rms_norm_eps, axis_name="head_dim", dtype=dtype, param_dtype=pdt)
        else:
            self.q_norm = self.k_norm = None

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | _StackedCacheSlot | None = None,
        cache_index: jax.Array | int | None = None,
        prefill: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | _StackedCacheSlot | None]:
        """`prefill`: `cache_index` is a Python int and the queries attend to the cache slots [0, cache_index + T)
        only (not to the whole cache; the mask is [B, T, cache_index + T]), see `CausalLM.prefill`."""
        w = lambda p: p[...].astype(self.dtype)
        q = _adapted(self, "q_proj", x, jnp.einsum("btd,dhk->bthk", x, w(self.q_proj)), self.dtype)
        k = _adapted(self, "k_proj", x, jnp.einsum("btd,dhk->bthk", x, w(self.k_proj)), self.dtype)
        v = _adapted(self, "v_proj", x, jnp.einsum("btd,dhk->bthk", x, w(self.v_proj)), self.dtype)
        if self.q_bias is not None:
            q, k, v = q + w(self.q_bias), k + w(self.k_bias), v + w(self.v_bias)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # head-major [B, K, T, D], as attention() takes
        new_cache = None
        if cache is not None:  # cached decoding: write the new slots, attend to the whole cache (kv_cache.py)
            new_cache, k, v = write_kv(cache, k, v, cache_index, q.dtype)
        if prefill:  # only the slots written so far
            k, v = k[:, :, : cache_index + x.shape[1]], v[:, :, : cache_index + x.shape[1]]
        out = (fused_attention if self.attention_impl == "dot_product_attention" else attention)(q, k, v, mask)
        out = _adapted(self, "o_proj", out, jnp.einsum("bthk,hkd->btd", out, w(self.o_proj)), self.dtype)
        if self.o_bias is not None:
            out = out + w(self.o_bias)
        return out, new_cache
