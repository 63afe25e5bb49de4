"""The Llama / Mistral / Qwen2 / Qwen3 decoder as Flax NNX modules, with a static-shape KV cache.

One implementation covers the family: RMSNorm, rotary embeddings (see `rope.py`), grouped-query attention with
optional q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3) and per-layer sliding windows (Mistral, Qwen2/3),
SwiGLU MLP, tied or untied lm_head. Every parameter carries logical axis names in its `out_sharding` metadata
(with `eager_sharding=False`, so models build without a mesh); `jax_cat.sharding` maps them onto a mesh.

Projection kernels are stored head-split ([embed, heads, head_dim]) so tensor parallelism shards whole heads;
`jax_cat.models.hf` converts to and from the flat HF [out, in] layout.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.config import ModelConfig
from jax_cat.models.rope import apply_rope, rope_cos_sin

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give a uniform softmax, not NaN


def _param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter annotated with logical axis names (one per dim) for `jax_cat.sharding`."""
    assert len(axes) == len(shape), (shape, axes)
    value = init(rngs.params(), tuple(shape), dtype) if rngs is not None else init(None, tuple(shape), dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _normal(stddev: float):
    return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, scaled after casting back (transformers' order of operations)."""

    def __init__(self, dim: int, eps: float, *, axis_name: str | None = None, dtype=jnp.float32):
        self.eps = eps
        self.weight = _param(None, _ones, (dim,), (axis_name,), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


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


class Attention(nnx.Module):
    """Self-attention with GQA, rotary positions, optional qkv bias and q/k norm."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        c = config
        d, h, kv, hd = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        init = _normal(0.02)
        self.q_proj = _param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), dtype)
        self.k_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype)
        self.v_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype)
        self.o_proj = _param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), dtype)
        if c.attention_bias:
            self.q_bias = _param(None, _zeros, (h, hd), ("heads", "head_dim"), dtype)
            self.k_bias = _param(None, _zeros, (kv, hd), ("kv_heads", "head_dim"), dtype)
            self.v_bias = _param(None, _zeros, (kv, hd), ("kv_heads", "head_dim"), dtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = _param(None, _zeros, (d,), (None,), dtype) if c.o_proj_bias else None
        if c.use_qk_norm:
            self.q_norm = RMSNorm(hd, c.rms_norm_eps, axis_name="head_dim", dtype=dtype)
            self.k_norm = RMSNorm(hd, c.rms_norm_eps, axis_name="head_dim", dtype=dtype)
        else:
            self.q_norm = self.k_norm = None

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...])
        k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...])
        v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...])
        if self.q_bias is not None:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # head-major [B, K, T, D], as attention() takes
        new_cache = None
        if cache is not None:
            cache_k, cache_v = cache
            start = (0, 0, cache_index, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (cache_k, cache_v)
            k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
        out = attention(q, k, v, mask)
        out = jnp.einsum("bthk,hkd->btd", out, self.o_proj[...])
        if self.o_bias is not None:
            out = out + self.o_bias[...]
        return out, new_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        d, f = config.hidden_size, config.intermediate_size
        init = _normal(0.02)
        self.gate_proj = _param(rngs, init, (d, f), ("embed", "mlp"), dtype)
        self.up_proj = _param(rngs, init, (d, f), ("embed", "mlp"), dtype)
        self.down_proj = _param(rngs, init, (f, d), ("mlp", "embed"), dtype)
        if config.mlp_bias:
            self.gate_bias = _param(None, _zeros, (f,), ("mlp",), dtype)
            self.up_bias = _param(None, _zeros, (f,), ("mlp",), dtype)
            self.down_bias = _param(None, _zeros, (d,), (None,), dtype)
        else:
            self.gate_bias = self.up_bias = self.down_bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = x @ self.gate_proj[...], x @ self.up_proj[...]
        if self.gate_bias is not None:
            gate, up = gate + self.gate_bias[...], up + self.up_bias[...]
        out = (jax.nn.silu(gate) * up) @ self.down_proj[...]
        if self.down_bias is not None:
            out = out + self.down_bias[...]
        return out


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.sliding_window = config.layer_window(layer)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(config, rngs=rngs, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(config, rngs=rngs, dtype=dtype)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        attn_out, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer key/value buffers, each [B, num_kv_heads, max_len, head_dim] (rotary already applied to keys).

    Head-major so the decode-step attention dots read the cache in place (no per-step re-layout of K and V).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]


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


class CausalLM(nnx.Module):
    """Decoder-only causal LM of the Llama/Mistral/Qwen2/Qwen3 family; logits are float32 whatever the dtype."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        c = config
        self.embed_tokens = _param(rngs, _normal(0.02), (c.vocab_size, c.hidden_size), ("vocab", "embed"), dtype)
        self.layers = nnx.List(
            [DecoderLayer(c, i, rngs=rngs, dtype=dtype) for i in range(c.num_hidden_layers)]
        )
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(rngs, _normal(0.02), (c.hidden_size, c.vocab_size), ("embed", "vocab"), dtype)
        self.remat = False  # set True to rematerialise each layer in the backward pass (saves activation memory)

    # ------------------------------------------------------------------ core
    def _windows(self) -> list[int | None]:
        return sorted({layer.sliding_window for layer in self.layers}, key=lambda w: (w is not None, w or 0))

    def _run_layers(self, x, positions, query_slots, kv_mask, cache: KVCache | None, cache_index):
        cos, sin = rope_cos_sin(self.config, positions)
        masks = {w: attention_mask_for_slots(query_slots, kv_mask, w) for w in self._windows()}
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            mask = masks[layer.sliding_window]
            if self.remat and cache is None:
                x, _ = nnx.remat(lambda lyr, *a: lyr(*a))(layer, x, cos, sin, mask)
            else:
                x, layer_cache = layer(x, cos, sin, mask, layer_cache, cache_index)
            if cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v)) if cache is not None else None
        return self.norm(x), new_cache

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, hidden] in the model dtype."""
        return jnp.take(self.embed_tokens[...], input_ids, axis=0)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., hidden] -> float32 logits [..., vocab]."""
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", hidden, self.embed_tokens[...], preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...], preferred_element_type=jnp.float32)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states [B, T, hidden] (for losses that chunk the vocab projection)."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = jnp.asarray(attention_mask).astype(bool)
        positions = positions_from_mask(attention_mask)
        slots = jnp.arange(input_ids.shape[1])
        hidden, _ = self._run_layers(self.embed(input_ids), positions, slots, attention_mask, None, None)
        return hidden

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, vocab] (float32); left padding handled via attention_mask (1 = real token)."""
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask))

    # ------------------------------------------------------------------ cached decoding
    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        """An all-zero KV cache for `batch_size` rows of up to `max_len` slots (dtype defaults to the model's).

        Each layer's K and V buffer is [batch_size, num_kv_heads, max_len, head_dim] (see `KVCache`).
        """
        c = self.config
        dtype = self.dtype if dtype is None else dtype
        shape = (batch_size, c.num_key_value_heads, max_len, c.head_dim)
        n = c.num_hidden_layers
        return KVCache(k=tuple(jnp.zeros(shape, dtype) for _ in range(n)), v=tuple(jnp.zeros(shape, dtype) for _ in range(n)))

    def forward_cached(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        cache_index: jax.Array | int,
        kv_mask: jax.Array,
    ) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens written to cache slots [cache_index, cache_index + T); returns (logits, new cache).

        The query in slot s sees key slot j iff j <= s and kv_mask[b, j] (and s - j < window on sliding layers).
        kv_mask[B, max_len] must already be True for the new slots holding real tokens.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        cache_index = jnp.asarray(cache_index, jnp.int32)
        query_slots = cache_index + jnp.arange(input_ids.shape[1], dtype=jnp.int32)
        hidden, new_cache = self._run_layers(
            self.embed(input_ids), jnp.asarray(positions, jnp.int32), query_slots, jnp.asarray(kv_mask).astype(bool),
            cache, cache_index,
        )
        return self.logits_from_hidden(hidden), new_cache

    @property
    def num_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))
