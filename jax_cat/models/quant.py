"""QLoRA's frozen base: the decoder's projection kernels stored int8 or 4-bit NormalFloat, dequantized where used.

`quantize_model(model, "nf4" | "int8")` replaces every layer's seven projection kernels (q/k/v/o, gate/up/down: all
the decoder's linear layers but the embedding and lm_head, which stay in `param_dtype`, as bitsandbytes leaves them)
by a `QuantizedKernel`, in place. The adapters (`jax_cat.models.lora`) stay float32. A `QuantizedKernel` answers
`kernel[...]` with its dequantized values, so the projection that reads `p[...].astype(dtype)` dequantizes on the
fly inside the layer (the decoder is unchanged); no full-precision copy of the base is kept.

- **nf4** (the QLoRA paper, Dettmers et al. 2023, as bitsandbytes implements it): the weight in HF's [out, in]
  layout is cut into blocks of 64 consecutive input entries; each block is divided by its absmax (float32, kept)
  and each entry replaced by the index of the nearest of the 16 NormalFloat values `NF4_CODE` (a value halfway
  between two goes to the lower one); two 4-bit indices share a uint8, the even input entry in the high nibble.
  Dequantized: NF4_CODE[index] * absmax, in float32. No double quantization of the absmax (bitsandbytes'
  `bnb_4bit_use_double_quant`): 4.5 bits a weight instead of ~4.13.
- **int8**: symmetric per-output-channel absmax (LLM.int8()'s vector-wise weight quantization without its outlier
  decomposition): scale = max over the input dims of |W| / 127, codes = round(W / scale) in [-127, 127] (half to
  even); dequantized: codes * scale.

Layout: for a kernel [*lead, *in, *out] (lead = the stacked "layers" axis of a `scan_layers` model) nf4 stores codes
[*lead, prod(in) / 2, *out] (uint8) and absmax [*lead, prod(in) / 64, *out]: the input dims flattened in our order
(o_proj's (heads, head_dim): HF's input order too), so the blocks are bitsandbytes' blocks. int8 stores codes with the
kernel's shape (int8) and the scale [*lead, 1.., *out]. Both carry the kernel's logical axes (o_proj's flattened
input axis keeps "heads"), so they shard on the mesh like the kernel: FSDP splits the codes' embed dim, tensor
parallelism the heads / mlp dims (a dim that does not divide is replicated, `jax_cat.sharding`).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MODES = ("none", "int8", "nf4")
NF4_BLOCK = 64
# The 16 NormalFloat-4 values (QLoRA, appendix E; bitsandbytes' `get_4bit_type("nf4")`), ascending.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)
_NF4_MIDS = ((NF4_CODE[:-1] + NF4_CODE[1:]) / 2).astype(np.float32)  # decision thresholds between neighbours


class QuantizedParam(nnx.Param):
    """The arrays of a quantized kernel (codes, absmax / scale): frozen parameters, never differentiated."""


# ------------------------------------------------------------------------------------------------ array functions
def nf4_quantize(w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(codes uint8, absmax float32) of `w` in blocks of 64 consecutive entries along `axis` (its size a multiple
    of 64): codes halve that axis (two indices a byte, the even entry high), absmax divides it by 64."""
    axis = axis % w.ndim
    n = w.shape[axis]
    pre, post = w.shape[:axis], w.shape[axis + 1:]
    blocks = w.astype(jnp.float32).reshape(*pre, n // NF4_BLOCK, NF4_BLOCK, *post)
    absmax = jnp.max(jnp.abs(blocks), axis=axis + 1, keepdims=True)
    x = blocks / jnp.where(absmax > 0, absmax, 1.0)
    index = jnp.searchsorted(jnp.asarray(_NF4_MIDS), x, side="left").astype(jnp.uint8)  # = #thresholds below x
    pairs = index.reshape(*pre, n // 2, 2, *post)
    hi = jax.lax.index_in_dim(pairs, 0, axis + 1, keepdims=False)
    lo = jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False)
    return (hi << 4) | lo, absmax.reshape(*pre, n // NF4_BLOCK, *post)


def nf4_dequantize(codes: jax.Array, absmax: jax.Array, axis: int) -> jax.Array:
    """float32 weights from `nf4_quantize`'s (codes, absmax) along `axis`: NF4_CODE[index] * the block's absmax."""
    axis = axis % codes.ndim
    half = codes.shape[axis]
    pre, post = codes.shape[:axis], codes.shape[axis + 1:]
    index = jnp.stack([codes >> 4, codes & 0xF], axis=axis + 1).reshape(*pre, 2 * half, *post)
    values = jnp.asarray(NF4_CODE)[index.astype(jnp.int32)]
    blocks = values.reshape(*pre, 2 * half // NF4_BLOCK, NF4_BLOCK, *post)
    return (blocks * jnp.expand_dims(absmax.astype(jnp.float32), axis + 1)).reshape(*pre, 2 * half, *post)


def int8_quantize(w: jax.Array, in_axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(codes int8, scale float32 with `in_axes` kept as size 1): scale = max |w| over `in_axes` / 127 (one per
    output channel), codes = round(w / scale) (half to even), clipped to [-127, 127]."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True) / 127.0
    codes = jnp.clip(jnp.round(w / jnp.where(scale > 0, scale, 1.0)), -127, 127).astype(jnp.int8)
    return codes, scale


def int8_dequantize(codes: jax.Array, scale: jax.Array) -> jax.Array:
    """float32 weights codes * scale."""
    return codes.astype(jnp.float32) * scale.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ the module
class QuantizedKernel(nnx.Module):
    """A frozen projection kernel [*lead, *in, *out] stored quantized; `kernel[...]` gives the dequantized kernel in
    its original dtype (what `p[...]` of a Param gives). `mode` "nf4" or "int8" (the module doc has the layouts)."""

    def __init__(self, codes: jax.Array, scale: jax.Array, *, mode: str, in_shape: tuple[int, ...],
                 in_axes: tuple[str | None, ...], n_out: int, codes_axes: tuple, scale_axes: tuple, dtype: Any):
        self.codes = QuantizedParam(codes, out_sharding=tuple(codes_axes), eager_sharding=False)
        self.scale = QuantizedParam(scale, out_sharding=tuple(scale_axes), eager_sharding=False)
        self.mode = mode
        self.in_shape = tuple(int(d) for d in in_shape)
        self.in_axes = tuple(in_axes)
        self.n_out = int(n_out)
        self.dtype = jnp.dtype(dtype)

    def _lead(self) -> int:
        stored_in = 1 if self.mode == "nf4" else len(self.in_shape)
        return len(self.codes.shape) - stored_in - self.n_out

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical kernel shape [*lead, *in, *out]."""
        codes = tuple(self.codes.shape)
        lead = self._lead()
        return (*codes[:lead], *self.in_shape, *codes[len(codes) - self.n_out:])

    @property
    def axes(self) -> tuple[str | None, ...]:
        """The kernel's logical axes (those of the Param it replaced)."""
        codes_axes = tuple(self.codes.get_metadata().get("out_sharding") or (None,) * len(self.codes.shape))
        lead = self._lead()
        return (*codes_axes[:lead], *self.in_axes, *codes_axes[len(codes_axes) - self.n_out:])

    def dequantize(self, layer: int | None = None) -> jax.Array:
        """float32 kernel [*lead, *in, *out] (of one stacked layer when `layer` is given)."""
        codes, scale = self.codes[...], self.scale[...]
        if layer is not None:
            codes, scale = codes[layer], scale[layer]
        if self.mode == "nf4":
            axis = codes.ndim - self.n_out - 1
            flat = nf4_dequantize(codes, scale, axis)
            return flat.reshape(*flat.shape[:axis], *self.in_shape, *flat.shape[axis + 1:])
        return int8_dequantize(codes, scale)

    def __getitem__(self, index: Any) -> jax.Array:
        return self.dequantize().astype(self.dtype)[index]


def quantize_kernel(kernel: nnx.Param, mode: str, *, n_in: int, lead: int, name: str = "kernel",
                    mesh: jax.sharding.Mesh | None = None) -> QuantizedKernel:
    """A `QuantizedKernel` of `kernel` ([*lead, *in, *out], `n_in` input dims), its arrays placed on `mesh` (or on
    the kernel's own mesh when it has a NamedSharding) by their logical axes. ValueError naming the kernel when nf4's
    blocks do not fit its input size."""
    from jax_cat.sharding import logical_axes, logical_to_pspec

    value = kernel.get_value()
    shape = tuple(value.shape)
    axes = logical_axes(kernel) or (None,) * len(shape)
    in_shape, out_shape = shape[lead:lead + n_in], shape[lead + n_in:]
    if mesh is None and isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        sharding = getattr(value, "sharding", None)
        mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None

    def place(x, x_axes):
        if mesh is None or isinstance(x, jax.core.Tracer):
            return x
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, logical_to_pspec(x_axes, x.shape, mesh)))

    value = place(value, axes)
    if mode == "nf4":
        n = math.prod(in_shape)
        if n % NF4_BLOCK:
            raise ValueError(f"{name}: nf4 quantizes blocks of {NF4_BLOCK} input entries; its input size {n} "
                             f"(kernel shape {shape}) is not a multiple of {NF4_BLOCK}: use lora.quantize='int8'")
        flat = jnp.reshape(value, (*shape[:lead], n, *out_shape))
        codes, scale = _nf4_jit(flat, lead)
        codes_axes = scale_axes = (*axes[:lead], axes[lead], *axes[lead + n_in:])
    elif mode == "int8":
        codes, scale = _int8_jit(value, tuple(range(lead, lead + n_in)))
        codes_axes = scale_axes = axes
    else:
        raise ValueError(f"quantization mode {mode!r}: expected 'int8' or 'nf4'")
    return QuantizedKernel(place(codes, codes_axes), place(scale, scale_axes), mode=mode, in_shape=in_shape,
                           in_axes=axes[lead:lead + n_in], n_out=len(out_shape), codes_axes=codes_axes,
                           scale_axes=scale_axes, dtype=value.dtype)


_nf4_jit = jax.jit(nf4_quantize, static_argnums=1)
_int8_jit = jax.jit(int8_quantize, static_argnums=1)


# ------------------------------------------------------------------------------------------------ model level
def _projections(model: Any):
    """(layer module path, submodule, attribute, input dims) of every layer's seven projection kernels."""
    from jax_cat.models.lora_targets import TARGETS

    stacked = bool(getattr(model, "scan_layers", False))
    layers = [(None, model.layers)] if stacked else list(enumerate(model.layers))
    for li, layer in layers:
        for name, (sub, attr, n_in) in TARGETS.items():
            yield li, getattr(layer, sub), attr, n_in, name


def quantization_of(model: Any) -> str:
    """"nf4", "int8" or "none": how `model`'s base projections are stored."""
    return getattr(model, "quantization", None) or "none"


def quantize_model(model: Any, mode: str, *, mesh: jax.sharding.Mesh | None = None) -> Any:
    """Stores `model`'s projection kernels quantized (`mode` "nf4" / "int8"; "none" returns `model` as is), in place,
    one kernel at a time (each full-precision kernel is dropped as its quantized form replaces it); records
    `model.quantization = mode`. Adapters already on the model are untouched. Returns `model`."""
    if mode not in MODES:
        raise ValueError(f"quantization mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "none":
        return model
    if quantization_of(model) != "none":
        raise ValueError(f"the model's base is already quantized ({quantization_of(model)})")
    stacked = bool(getattr(model, "scan_layers", False))
    for li, module, attr, n_in, name in list(_projections(model)):
        where = f"layers.{'*' if li is None else li}.{name}"
        setattr(module, attr, quantize_kernel(getattr(module, attr), mode, n_in=n_in, lead=1 if stacked else 0,
                                              name=where, mesh=mesh))
    model.quantization = mode
    return model


def dequantize_model(model: Any) -> Any:
    """Replaces `model`'s quantized kernels by Params of their dequantized values (in the original dtype, placed
    like the codes), in place; a model without quantized kernels is returned as is. Returns `model`."""
    if quantization_of(model) == "none":
        return model
    for _, module, attr, _, _ in list(_projections(model)):
        kernel = getattr(module, attr)
        if isinstance(kernel, QuantizedKernel):
            setattr(module, attr, _dense_param(kernel))
    model.quantization = None
    return model


def _dense_param(kernel: QuantizedKernel) -> nnx.Param:
    from jax_cat.sharding import logical_to_pspec

    value = kernel.dequantize().astype(kernel.dtype)
    sharding = getattr(kernel.codes.get_value(), "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh = sharding.mesh
        value = jax.device_put(value, jax.sharding.NamedSharding(mesh, logical_to_pspec(kernel.axes, value.shape,
                                                                                         mesh)))
    return nnx.Param(value, out_sharding=kernel.axes, eager_sharding=False)


def kernel_spec(kernel: Any) -> tuple[tuple[int, ...], tuple[str | None, ...], Any]:
    """(shape, logical axes, sharding or None) of a projection kernel, a Param or a `QuantizedKernel`."""
    if isinstance(kernel, QuantizedKernel):
        return kernel.shape, kernel.axes, getattr(kernel.codes.get_value(), "sharding", None)
    from jax_cat.sharding import logical_axes

    shape = tuple(kernel.shape)
    return shape, logical_axes(kernel) or (None,) * len(shape), getattr(kernel.get_value(), "sharding", None)


def dense_kernel(model: Any, path: tuple, layer: int | None = None) -> np.ndarray:
    """The dequantized kernel at NNX `path` of `model` (of stacked layer `layer`), as numpy in its original dtype:
    what the HF export writes for a quantized base (one tensor at a time)."""
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    if not isinstance(node, QuantizedKernel):
        raise KeyError(f"{'.'.join(map(str, path))} is not a quantized kernel")
    return np.asarray(jax.device_get(node.dequantize(layer).astype(node.dtype)))


def param_count(model: Any) -> int:
    """Parameters of `model` counted as the model has them (a quantized kernel counts its logical [*in, *out]
    entries, not its packed codes and scales); adapters included."""
    plain = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if not isinstance(v, QuantizedParam))
    return int(plain + sum(math.prod(node.shape) for _, node in nnx.iter_graph(model)
                           if isinstance(node, QuantizedKernel)))


def is_projection_path(path: tuple) -> bool:
    """Whether an NNX parameter path is one of the layers' projection kernels (what `quantize_model` quantizes)."""
    from jax_cat.models.lora_targets import TARGETS

    return len(path) >= 3 and path[0] == "layers" and any(path[-2:] == (sub, attr) for sub, attr, _ in
                                                           TARGETS.values())


__all__ = ["MODES", "NF4_BLOCK", "NF4_CODE", "QuantizedKernel", "QuantizedParam", "dense_kernel", "dequantize_model",
           "int8_dequantize", "int8_quantize", "is_projection_path", "kernel_spec", "nf4_dequantize", "nf4_quantize", "param_count",
           "quantization_of", "quantize_kernel", "quantize_model"]
