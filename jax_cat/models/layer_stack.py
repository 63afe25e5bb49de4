"""The decoder layer and how the stack of them runs: a Python loop over per-layer modules, or `jax.lax.scan` over
parameters stacked on a leading "layers" axis (compile time independent of depth; the only layout in which remat
saves memory on XLA:CPU, see docs/planning.md), each optionally rematerialised in the backward pass under a named
policy (`REMAT_POLICIES`); with a KV cache both write every layer's new keys/values (`kv_cache.py`)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.attention import Attention
from jax_cat.models.config import ModelConfig
from jax_cat.models.kv_cache import KVCache, _StackedCacheSlot
from jax_cat.models.layers import MLP, RMSNorm, shard_batch
from jax_cat.models.lora import fold_dropout_key

# remat option -> jax.checkpoint policy (what each layer keeps for the backward pass; everything else is recomputed)
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,  # keep only the layer's inputs
    "dots": jax.checkpoint_policies.dots_saveable,  # keep every matmul output, recompute the elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections, not attention
}


def _remat_policy_name(remat: bool | str | None) -> str | None:
    """Normalises the `remat` option: False/None/'none' -> None, True -> 'full', else a REMAT_POLICIES key."""
    if remat is None or remat is False or remat == "none":
        return None
    if remat is True:
        return "full"
    if isinstance(remat, str) and remat in REMAT_POLICIES:
        return remat
    raise ValueError(f"remat={remat!r}: expected a bool or one of 'none', {', '.join(map(repr, REMAT_POLICIES))}")


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


def distinct_windows(layer_windows: list[int | None]) -> list[int | None]:
    """The distinct sliding windows of the layers (None = full attention first): one attention mask each."""
    return sorted(set(layer_windows), key=lambda w: (w is not None, w or 0))


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


def run_layer_loop(layers, layer_windows, x, cos, sin, masks, cache: KVCache | None, cache_index,
                   policy_name: str | None, prefill: bool = False):
    """The per-layer modules `layers` (an nnx.List) in a Python loop; returns (hidden, new cache or None)."""
    new_k, new_v = [], []
    for i, layer in enumerate(layers):
        layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
        mask = masks[layer_windows[i]]
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
    return x, new_cache


def run_layer_scan(layers, layer_windows, x, cos, sin, masks, cache: KVCache | None, cache_index,
                   policy_name: str | None, prefill: bool = False):
    """The stacked `layers` under `jax.lax.scan` (and the stacked cache, carried in place); returns (hidden, cache)."""
    graphdef, state = nnx.split(layers)
    windows = distinct_windows(layer_windows)
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
