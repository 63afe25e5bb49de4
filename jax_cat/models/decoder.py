"""The Llama / Mistral / Qwen2 / Qwen3 decoder as Flax NNX modules, with a static-shape KV cache.

One implementation covers the family: RMSNorm, rotary embeddings (see `rope.py`), grouped-query attention with
optional q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3) and per-layer sliding windows (Mistral, Qwen2/3),
SwiGLU MLP, tied or untied lm_head. Every parameter carries logical axis names in its `out_sharding` metadata
(with `eager_sharding=False`, so models build without a mesh); `jax_cat.sharding` maps them onto a mesh.

Projection kernels are stored head-split ([embed, heads, head_dim]) so tensor parallelism shards whole heads;
`jax_cat.models.hf` converts to and from the flat HF [out, in] layout.

Precision follows Flax: `param_dtype` is the storage dtype of the parameters (e.g. float32 master weights) and
`dtype` the compute dtype (e.g. bfloat16); parameters are cast to `dtype` where they are used, and logits are
always float32. Two options change how the layers run, not what they compute: `scan_layers=True` stores the
per-layer parameters stacked on a leading "layers" axis and runs the layers under `jax.lax.scan` (compile time
independent of depth; the only layout in which `remat` saves memory on XLA:CPU, see docs/planning.md), and `remat`
rematerialises each layer in the backward pass under a named policy (`REMAT_POLICIES`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.config import ModelConfig
from jax_cat.models.lora import SUFFIX as _LORA, fold_dropout_key
from jax_cat.models.projection import dense, vocab_logits
from jax_cat.models.rope import apply_rope, rope_cos_sin

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give a uniform softmax, not NaN

# remat option -> jax.checkpoint policy (what each layer keeps for the backward pass; everything else is recomputed)
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,  # keep only the layer's inputs
    "dots": jax.checkpoint_policies.dots_saveable,  # keep every matmul output, recompute the elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, not attention
}
ATTENTION_IMPLS = ("xla", "dot_product_attention")


def _remat_policy_name(remat: bool | str | None) -> str | None:
    """Normalises the `remat` option: False/None/'none' -> None, True -> 'full', else a REMAT_POLICIES key."""
    if remat is None or remat is False or remat == "none":
        return None
    if remat is True:
        return "full"
    if isinstance(remat, str) and remat in REMAT_POLICIES:
        return remat
    raise ValueError(f"remat={remat!r}: expected a bool or one of 'none', {', '.join(map(repr, REMAT_POLICIES))}")


def shard_batch(x: jax.Array) -> jax.Array:
    """Under `jax.set_mesh(mesh)`, constrains activations [B, ...] to be split by batch over the mesh's data/fsdp axes.

    A no-op without a mesh (or when B does not divide). With FSDP the parameters are sharded on "embed", so XLA's
    propagation may otherwise split (or replicate) activations by the hidden dim; inside a layer scan the saved
    residuals then came out replicated (measured, AOT: 76 GiB a device instead of 12 for a 1.5B model, B=8, T=1024
    on 8 devices, no remat).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    if not axes or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


def _param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: tuple[str | None, ...], dtype) -> nnx.Param:
    """A parameter annotated with logical axis names (one per dim) for `jax_cat.sharding`."""
    assert len(axes) == len(shape), (shape, axes)
    value = init(rngs.params(), tuple(shape), dtype) if rngs is not None else init(None, tuple(shape), dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _normal(stddev: float):
    return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _adapted(module: nnx.Module, name: str, x: jax.Array, y: jax.Array, dtype) -> jax.Array:
    """y (= x . W of kernel `name`) plus its LoRA adapter's update when the model has one (`jax_cat.models.lora`)."""
    adapter = getattr(module, name + _LORA, None)
    return y if adapter is None else y + adapter(x, dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, scaled after casting back (transformers' order of operations)."""

    def __init__(self, dim: int, eps: float, *, axis_name: str | None = None, dtype=jnp.float32, param_dtype=None):
        self.eps = eps
        self.weight = _param(None, _ones, (dim,), (axis_name,), param_dtype or dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


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


@dataclasses.dataclass(frozen=True)
class _StackedCacheSlot:
    """One layer's view of a stacked cache [B, L, K, S, D] inside the layer scan: writes go in place."""

    k: jax.Array
    v: jax.Array
    layer: jax.Array


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
        if isinstance(cache, _StackedCacheSlot):  # scan over layers: write this layer's slots into [B, L, K, S, D]
            start = (0, cache.layer, 0, cache_index, 0)
            cache_k = jax.lax.dynamic_update_slice(cache.k, k[:, None].astype(cache.k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache.v, v[:, None].astype(cache.v.dtype), start)
            new_cache = _StackedCacheSlot(cache_k, cache_v, cache.layer)
            k = jax.lax.dynamic_index_in_dim(cache_k, cache.layer, axis=1, keepdims=False).astype(q.dtype)
            v = jax.lax.dynamic_index_in_dim(cache_v, cache.layer, axis=1, keepdims=False).astype(q.dtype)
        elif cache is not None:
            cache_k, cache_v = cache
            start = (0, 0, cache_index, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            new_cache = (cache_k, cache_v)
            k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
        if prefill:  # only the slots written so far
            k, v = k[:, :, : cache_index + x.shape[1]], v[:, :, : cache_index + x.shape[1]]
        out = (fused_attention if self.attention_impl == "dot_product_attention" else attention)(q, k, v, mask)
        out = _adapted(self, "o_proj", out, jnp.einsum("bthk,hkd->btd", out, w(self.o_proj)), self.dtype)
        if self.o_bias is not None:
            out = out + w(self.o_bias)
        return out, new_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=None):
        d, f = config.hidden_size, config.intermediate_size
        init = _normal(0.02)
        pdt = param_dtype or dtype
        self.dtype = jnp.dtype(dtype)
        self.gate_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.up_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.down_proj = _param(rngs, init, (f, d), ("mlp", "embed"), pdt)
        if config.mlp_bias:
            self.gate_bias = _param(None, _zeros, (f,), ("mlp",), pdt)
            self.up_bias = _param(None, _zeros, (f,), ("mlp",), pdt)
            self.down_bias = _param(None, _zeros, (d,), (None,), pdt)
        else:
            self.gate_bias = self.up_bias = self.down_bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = lambda p: p[...].astype(self.dtype)  # dense: x @ w, its backward laid out for XLA:CPU (projection.py)
        gate = _adapted(self, "gate_proj", x, dense(x, w(self.gate_proj)), self.dtype)
        up = _adapted(self, "up_proj", x, dense(x, w(self.up_proj)), self.dtype)
        if self.gate_bias is not None:
            gate, up = gate + w(self.gate_bias), up + w(self.up_bias)
        act = jax.nn.silu(gate) * up
        out = _adapted(self, "down_proj", act, dense(act, w(self.down_proj)), self.dtype)
        if self.down_bias is not None:
            out = out + w(self.down_bias)
        return out


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=None,
        attention_impl: str = "xla",
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype or dtype)
        self.sliding_window = config.layer_window(layer)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.self_attn = Attention(config, rngs=rngs, attention_impl=attention_impl, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
        self.mlp = MLP(config, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, prefill=False):
        attn_out, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index, prefill)
        x = shard_batch(x + attn_out)
        x = shard_batch(x + self.mlp(self.post_attention_layernorm(x)))
        return x, new_cache


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
        return not isinstance(self.k, tuple | list)

    @property
    def max_len(self) -> int:
        return self.k.shape[3] if self.stacked else self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[0] if self.stacked else self.k[0].shape[0]


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
    """Decoder-only causal LM of the Llama/Mistral/Qwen2/Qwen3 family; logits are float32 whatever the dtype.

    Args:
      config: the model's hyper-parameters.
      rngs: initialisation keys.
      dtype: compute dtype (activations, matmul inputs, default KV-cache dtype).
      param_dtype: storage dtype of the parameters; None (the default) stores them in `dtype`, as before this
        option existed. Use `dtype=jnp.bfloat16, param_dtype=jnp.float32` for bf16 compute on float32 masters.
      remat: rematerialise each layer in the backward pass: False, True (= "full") or a `REMAT_POLICIES` name.
        It only saves memory together with `scan_layers=True` (measured on XLA:CPU; see docs/planning.md).
      scan_layers: store the layers' parameters stacked ([num_layers, ...], logical axis "layers") and run them
        under `jax.lax.scan`. The HF names at load/save are unchanged (`jax_cat.models.hf` stacks and unstacks).
      attention_impl: "xla" (the batched-matmul `attention`) or "dot_product_attention" (`jax.nn.
        dot_product_attention`, which dispatches to cuDNN flash attention on GPUs).
      lora: a `jax_cat.models.lora.LoRAConfig` to add LoRA adapters (float32, B = 0) to its target projections;
        None = none. `model.lora` is the config of the adapters the model holds (None without).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=None,
        remat: bool | str = False,
        scan_layers: bool = False,
        attention_impl: str = "xla",
        lora=None,
    ):
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={attention_impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
        _remat_policy_name(remat)  # validate now, not at the first call
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype or dtype)
        self.remat = remat
        self.scan_layers = bool(scan_layers)
        self.attention_impl = attention_impl
        c = config
        pdt = self.param_dtype
        layer_kw = dict(dtype=self.dtype, param_dtype=pdt, attention_impl=attention_impl)
        self.embed_tokens = _param(rngs, _normal(0.02), (c.vocab_size, c.hidden_size), ("vocab", "embed"), pdt)
        if self.scan_layers:
            self.layers = _stacked_layers(c, rngs, layer_kw)
        else:
            self.layers = nnx.List([DecoderLayer(c, i, rngs=rngs, **layer_kw) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=self.dtype, param_dtype=pdt)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(rngs, _normal(0.02), (c.hidden_size, c.vocab_size), ("embed", "vocab"), pdt)
        self.lora = None
        if lora is not None:
            from jax_cat.models.lora import add_lora

            add_lora(self, lora)

    # ------------------------------------------------------------------ core
    def _layer_windows(self) -> list[int | None]:
        return [self.config.layer_window(i) for i in range(self.config.num_hidden_layers)]

    def _windows(self) -> list[int | None]:
        return sorted(set(self._layer_windows()), key=lambda w: (w is not None, w or 0))

    def _run_layers(self, x, positions, query_slots, kv_mask, cache: KVCache | None, cache_index,
                    prefill: bool = False):
        cos, sin = rope_cos_sin(self.config, positions)
        masks = {w: attention_mask_for_slots(query_slots, kv_mask, w) for w in self._windows()}
        policy_name = _remat_policy_name(self.remat) if cache is None else None
        if self.scan_layers:
            x, new_cache = self._scan_layers(x, cos, sin, masks, cache, cache_index, policy_name, prefill)
            return self.norm(x), new_cache
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            mask = masks[self.config.layer_window(i)]
            with fold_dropout_key(i):  # LoRA dropout masks differ per layer (training steps only)
                if policy_name is not None:
                    remat_layer = nnx.remat(lambda lyr, *a: lyr(*a), policy=REMAT_POLICIES[policy_name])
                    x, _ = remat_layer(layer, x, cos, sin, mask)
                else:
                    x, layer_cache = layer(x, cos, sin, mask, layer_cache, cache_index, prefill)
            if cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v)) if cache is not None else None
        return self.norm(x), new_cache

    def _scan_layers(self, x, cos, sin, masks, cache: KVCache | None, cache_index, policy_name: str | None,
                     prefill: bool = False):
        """The layers under `jax.lax.scan` over the stacked parameters (and the stacked cache, carried in place)."""
        graphdef, state = nnx.split(self.layers)
        windows = self._windows()
        layer_windows = self._layer_windows()
        n = len(layer_windows)
        if len(windows) == 1:
            mask_of = lambda _: masks[windows[0]]
        else:  # per-layer sliding windows: pick this layer's mask from the distinct ones
            mask_stack = jnp.stack([masks[w] for w in windows])
            mask_of = lambda wi: mask_stack[wi]
        xs = (state, jnp.asarray([windows.index(w) for w in layer_windows], jnp.int32), jnp.arange(n, dtype=jnp.int32))
        if cache is not None:
            if not cache.stacked:
                raise ValueError("a scan_layers model needs a stacked KVCache: build it with model.init_cache")

            def body(carry, xs):
                h, ck, cv = carry
                layer_state, wi, i = xs
                h, slot = nnx.merge(graphdef, layer_state)(
                    h, cos, sin, mask_of(wi), _StackedCacheSlot(ck, cv, i), cache_index, prefill
                )
                return (h, slot.k, slot.v), None

            (x, ck, cv), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs)
            return x, KVCache(k=ck, v=cv)

        def body(h, xs):
            layer_state, wi, i = xs
            with fold_dropout_key(i):
                h, _ = nnx.merge(graphdef, layer_state)(h, cos, sin, mask_of(wi))
            return h, None

        if policy_name is not None:
            body = jax.checkpoint(body, policy=REMAT_POLICIES[policy_name], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, xs)
        return x, None

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, T, hidden] in the compute dtype."""
        return shard_batch(jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype))

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., hidden] -> float32 logits [..., vocab]."""
        hidden = hidden.astype(self.dtype)
        if self.lm_head is None:  # vocab_logits: einsum "...d,vd->...v" / "...d,dv->...v", backward laid out for CPU
            return vocab_logits(hidden, self.embed_tokens[...].astype(self.dtype), tied=True)
        return vocab_logits(hidden, self.lm_head[...].astype(self.dtype), tied=False)

    def token_logprobs_from_hidden(
        self, hidden: jax.Array, targets: jax.Array, *, chunk_size: int | None = 1024
    ) -> jax.Array:
        """log p(targets) [B, T] (float32) from final-norm hidden states [B, T, hidden], without [B, T, vocab] arrays.

        The vocabulary projection and log-softmax run over `chunk_size` positions at a time under `jax.checkpoint`,
        so neither the forward nor the backward pass holds more than one chunk's [chunk_size, vocab] logits (the
        plain route keeps the logits, their softmax and their gradient: three [B, T, vocab] float32 arrays, 15 GiB
        at B=8, T=1024 on Qwen's 152k vocabulary). `chunk_size=None` computes it in one piece.
        """
        b, t, d = hidden.shape
        targets = jnp.asarray(targets, jnp.int32)

        def logprobs(h, y):
            logits = self.logits_from_hidden(h)
            return jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)

        n = b * t
        if chunk_size is None or chunk_size >= n:
            return logprobs(hidden, targets)
        chunks = -(-n // chunk_size)
        pad = chunks * chunk_size - n
        h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0))).reshape(chunks, chunk_size, d)
        y = jnp.pad(targets.reshape(n), (0, pad)).reshape(chunks, chunk_size)
        out = jax.lax.map(lambda hy: jax.checkpoint(logprobs)(*hy), (h, y))
        return out.reshape(-1)[:n].reshape(b, t)

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
        """An all-zero KV cache for `batch_size` rows of up to `max_len` slots (dtype defaults to the compute dtype).

        Each layer's K and V buffer is [batch_size, num_kv_heads, max_len, head_dim]; a `scan_layers` model gets
        them stacked into one [batch_size, num_layers, num_kv_heads, max_len, head_dim] array (see `KVCache`).
        """
        c = self.config
        dtype = self.dtype if dtype is None else dtype
        shape = (batch_size, c.num_key_value_heads, max_len, c.head_dim)
        n = c.num_hidden_layers
        if self.scan_layers:
            stacked = (batch_size, n, *shape[1:])
            return KVCache(k=jnp.zeros(stacked, dtype), v=jnp.zeros(stacked, dtype))
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

    def prefill(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        prompt_mask: jax.Array,
        *,
        chunk_size: int = 256,
    ) -> KVCache:
        """Writes a prompt's keys/values [B, T] into cache slots [0, T) and returns the cache (no logits).

        The same cache as `forward_cached(input_ids, positions, cache, 0, kv_mask)` with kv_mask True on the
        prompt's real tokens, at a fraction of the memory: the prompt runs through the layers `chunk_size` tokens at
        a time (at least T / 8), each block attending to the slots written so far (not to the cache's max_len), and
        no vocabulary projection is computed. The largest temporaries are then [B, heads, chunk, T] scores and
        [B, chunk, intermediate] activations instead of [B, heads, T, max_len] and [B, T, intermediate] (the
        sampler's long-context peak; docs/benchmarks.md, "Sampling"). `prompt_mask` [B, T]: True on real tokens.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        positions = jnp.asarray(positions, jnp.int32)
        prompt_mask = jnp.asarray(prompt_mask).astype(bool)
        t = input_ids.shape[1]
        if t > cache.max_len:
            raise ValueError(f"prefill: {t} prompt tokens do not fit a KV cache of {cache.max_len} slots")
        if chunk_size < 1:
            raise ValueError(f"prefill: chunk_size must be >= 1, got {chunk_size}")
        chunk = max(int(chunk_size), -(-t // 8))  # at most 8 blocks: each is unrolled in the compiled program
        for start in range(0, t, chunk):
            end = min(start + chunk, t)
            _, cache = self._run_layers(
                self.embed(input_ids[:, start:end]), positions[:, start:end], jnp.arange(start, end, dtype=jnp.int32),
                prompt_mask[:, :end], cache, start, prefill=True,
            )
        return cache

    @property
    def num_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))


def _stacked_layers(config: ModelConfig, rngs: nnx.Rngs, layer_kw: dict) -> DecoderLayer:
    """One DecoderLayer whose parameters carry a leading [num_layers] axis (logical axis name "layers")."""
    n = config.num_hidden_layers

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=n, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(config, 0, rngs=rngs, **layer_kw)

    layers = build(rngs)
    layers.sliding_window = None  # per-layer windows differ: CausalLM reads them from the config
    return layers
