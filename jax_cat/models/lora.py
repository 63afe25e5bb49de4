"""LoRA adapters for the NNX decoders: y = x W + (dropout(x) A) B * alpha / rank, W frozen, A and B trained.

Our own small module rather than qwix's `LoraProvider` (docs/lora.md says why: qwix finds the weight of an
intercepted einsum by object identity or by shape, which our cast-then-einsum projections and the equal-shaped
k/v kernels defeat; it creates the adapters lazily inside the first traced call, which a `scan_layers` model runs
under `lax.scan` over split state; and its adapters take the base weight's dtype and its placement, not float32
masters with logical axes).

An adapter of a projection whose kernel is [*in, *out] (our head-split layouts: q_proj [embed, heads, head_dim],
o_proj [heads, head_dim, embed], gate_proj [embed, mlp], ...) holds `lora_a` [*in, rank] (the in-dims' logical axes,
rank replicated) and `lora_b` [rank, *out] (the out-dims' axes), so both shard on the mesh like the kernel they adapt;
on a `scan_layers` model they carry the leading "layers" axis too. A is drawn as PEFT draws it (kaiming-uniform,
bound 1/sqrt(fan_in)), B starts at zero: the adapted model starts equal to the base. Adapters are stored in float32
(the base may be bf16) and cast to the compute dtype where used.

In a model's params (`nnx.to_pure_dict`) the adapters are the sub-dicts under keys ending in "_lora"
(`layers.0.self_attn.q_proj_lora.lora_a`); `adapter_params` / `with_adapter_params` split and join them.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cat.models.lora_targets import DEFAULT_TARGETS, TARGETS  # noqa: F401  (public here too)

SUFFIX = "_lora"  # attribute `q_proj_lora` next to the kernel `q_proj`


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """rank (> 0), alpha (scale = alpha / rank, PEFT's rule), dropout on the adapter's input (training steps only),
    targets (HF module names, `TARGETS`), seed of A's initialisation."""

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"targets {list(self.targets)}: expected a non-empty list of {', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        """alpha / rank: the factor on B @ A, so the update's size does not change with the rank."""
        return float(self.alpha) / self.rank


# ------------------------------------------------------------------------------------------------ dropout scope
_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("lora_dropout_key", default=None)


@contextlib.contextmanager
def dropout_scope(key: jax.Array | None) -> Iterator[None]:
    """Within it (at trace time), adapters with dropout > 0 drop their inputs with masks drawn from `key` (folded
    with the layer index by the decoder and the target's index here). Outside it, adapters never drop: sampling,
    old-policy / reference log-probs and evaluation are deterministic."""
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


def fold_dropout_key(data: int | jax.Array) -> contextlib.AbstractContextManager:
    """A `dropout_scope` whose key is the current one folded with `data` (the layer index); no-op outside a scope."""
    key = _DROPOUT_KEY.get()
    return dropout_scope(jax.random.fold_in(key, data)) if key is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ the module
class LoRA(nnx.Module):
    """One adapter: `__call__(x, dtype)` -> (dropout(x) . A) . B * scale, contracting x's last `n_in` dims."""

    def __init__(self, a: jax.Array, b: jax.Array, a_axes: Sequence[str | None], b_axes: Sequence[str | None], *,
                 scale: float, n_in: int, dropout: float = 0.0, stream: int = 0, stacked: bool = False):
        self.lora_a = nnx.LoRAParam(a, out_sharding=tuple(a_axes), eager_sharding=False)
        self.lora_b = nnx.LoRAParam(b, out_sharding=tuple(b_axes), eager_sharding=False)
        self.scale = float(scale)
        self.n_in = int(n_in)
        self.dropout = float(dropout)
        self.stream = int(stream)
        self.stacked = bool(stacked)

    def __call__(self, x: jax.Array, dtype) -> jax.Array:
        key = _DROPOUT_KEY.get()
        if self.dropout > 0 and key is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.stream), 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        h = jnp.tensordot(x, self.lora_a[...].astype(dtype), axes=self.n_in)
        return (jnp.tensordot(h, self.lora_b[...].astype(dtype), axes=1) * self.scale).astype(dtype)

    def delta(self) -> jax.Array:
        """The dense update A . B * scale in the kernel's layout ([L, *in, *out] when stacked), float32."""
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        if self.stacked:
            return jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a, b) * self.scale
        return jnp.tensordot(a, b, axes=1) * self.scale


def _kaiming_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / np.sqrt(fan_in)  # torch's kaiming_uniform_(a=sqrt(5)), PEFT's default for lora_A
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def add_lora(model: Any, config: LoRAConfig, *, dtype=jnp.float32) -> Any:
    """Adds an adapter (A random, B zero, stored in `dtype`) to each `config.targets` projection of every layer of
    `model` (a CausalLM, per-layer or `scan_layers`), in place; records `model.lora = config`. Returns `model`."""
    from jax_cat.models.quant import kernel_spec

    if getattr(model, "lora", None) is not None:
        raise ValueError("the model already has LoRA adapters")
    stacked = bool(getattr(model, "scan_layers", False))
    layers = [model.layers] if stacked else list(model.layers)
    root = jax.random.key(config.seed)
    for li, layer in enumerate(layers):
        for ti, name in enumerate(config.targets):
            sub, attr, n_in = TARGETS[name]
            module = getattr(layer, sub)
            kernel = getattr(module, attr)
            shape, axes, sharding = kernel_spec(kernel)  # a Param, or a quantized base's kernel (quant.py)
            lead = 1 if stacked else 0
            in_shape, out_shape = shape[lead:lead + n_in], shape[lead + n_in:]
            in_axes, out_axes = axes[lead:lead + n_in], axes[lead + n_in:]
            a_shape = (*shape[:lead], *in_shape, config.rank)
            b_shape = (*shape[:lead], config.rank, *out_shape)
            key = jax.random.fold_in(jax.random.fold_in(root, li), ti)
            a = _kaiming_uniform(key, a_shape, int(np.prod(in_shape))).astype(dtype)
            b = jnp.zeros(b_shape, dtype)
            adapter = LoRA(a, b, (*axes[:lead], *in_axes, None), (*axes[:lead], None, *out_axes),
                           scale=config.scale, n_in=n_in, dropout=config.dropout, stream=ti, stacked=stacked)
            if isinstance(sharding, jax.sharding.NamedSharding):  # the base is placed on a mesh: place A, B alike
                from jax_cat.sharding import shard_model

                shard_model(adapter, sharding.mesh)
            setattr(module, attr + SUFFIX, adapter)
    model.lora = config
    return model


def adapters_of(model: Any) -> Iterator[tuple[str, int | None, str, LoRA]]:
    """(HF module name, layer index or None when stacked, kernel attribute path "self_attn.q_proj", adapter) of
    each adapter of `model`."""
    config = getattr(model, "lora", None)
    if config is None:
        return
    stacked = bool(getattr(model, "scan_layers", False))
    layers = [(None, model.layers)] if stacked else list(enumerate(model.layers))
    for li, layer in layers:
        for name in config.targets:
            sub, attr, _ = TARGETS[name]
            yield name, li, f"{sub}.{attr}", getattr(getattr(layer, sub), attr + SUFFIX)


def merge_lora(model: Any) -> Any:
    """A copy of `model` without adapters whose kernels are W + A.B.scale (cast to W's dtype): the merged model
    (what `save_hf` exports; `model` itself is unchanged). A model without adapters is returned as is."""
    if getattr(model, "lora", None) is None:
        return model
    from jax_cat.models.quant import dequantize_model

    merged = dequantize_model(nnx.clone(model))  # a quantized base merges dequantized (W is then dense)
    for _, li, path, adapter in list(adapters_of(merged)):
        sub, attr = path.split(".")
        module = getattr(merged.layers if li is None else merged.layers[li], sub)
        kernel = getattr(module, attr)
        kernel.set_value((kernel[...].astype(jnp.float32) + adapter.delta()).astype(kernel.dtype))
        delattr(module, attr + SUFFIX)
    merged.lora = None
    return merged


# ------------------------------------------------------------------------------------------------ pure-dict helpers
def _is_adapter_key(key: Any) -> bool:
    return isinstance(key, str) and key.endswith(SUFFIX)


def has_adapters(params: Mapping) -> bool:
    """Whether a params pure dict (or a tree of the same structure) holds LoRA adapters."""
    return any(_is_adapter_key(k) or (isinstance(v, Mapping) and has_adapters(v)) for k, v in params.items())


def adapter_params(params: Mapping) -> dict:
    """The adapters' sub-tree of a params pure dict (same nesting, only the "_lora" sub-dicts): what LoRA trains."""
    out = {}
    for k, v in params.items():
        if _is_adapter_key(k):
            out[k] = v
        elif isinstance(v, Mapping):
            sub = adapter_params(v)
            if sub:
                out[k] = sub
    return out


def strip_adapters(params: Mapping) -> dict:
    """A params pure dict without its adapters (the frozen base)."""
    return {k: strip_adapters(v) if isinstance(v, Mapping) else v for k, v in params.items() if not _is_adapter_key(k)}


def with_adapter_params(params: Mapping, adapters: Mapping) -> dict:
    """`params` with its adapter sub-dicts replaced by those of `adapters` (the base leaves are shared, not copied)."""
    out = dict(params)
    for k, v in adapters.items():
        out[k] = v if _is_adapter_key(k) else with_adapter_params(params[k], v)
    return out


__all__ = ["DEFAULT_TARGETS", "LoRA", "LoRAConfig", "TARGETS", "adapter_params", "adapters_of", "add_lora",
           "dropout_scope", "fold_dropout_key", "has_adapters", "merge_lora", "strip_adapters", "with_adapter_params"]
