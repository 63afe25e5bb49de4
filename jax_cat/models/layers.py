"""The decoder's small building blocks: parameters annotated with logical axes, RMSNorm, the SwiGLU MLP, the LoRA
hook every projection goes through, and the batch-sharding constraint on activations.

Every parameter carries logical axis names in its `out_sharding` metadata (with `eager_sharding=False`, so models
build without a mesh); `jax_cat.sharding` maps them onto a mesh.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.config import ModelConfig
from jax_cat.models.lora import SUFFIX as _LORA
from jax_cat.models.projection import dense


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
