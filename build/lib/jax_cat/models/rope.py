"""Rotary position embeddings: inverse frequencies for each rope_type, and their application (HF rotate_half layout).

The frequency formulas follow transformers' `modeling_rope_utils` for the same config, so that positions map to the
same angles; the test suite checks each variant against transformers' own init functions.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_cat.models.config import ModelConfig


def _base_inv_freq(base: float, dim: int) -> np.ndarray:
    return (1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)


def rope_inv_freq(config: ModelConfig) -> tuple[np.ndarray, float]:
    """(inv_freq[head_dim // 2], attention_scaling) for the config's rope at init time (as transformers computes)."""
    dim, base = config.head_dim, config.rope_theta
    params = dict(config.rope_scaling or {})
    rope_type = config.rope_type
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    if rope_type in ("default", "dynamic"):  # dynamic == default until positions exceed max_position_embeddings
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "linear":
        return (_base_inv_freq(base, dim) / np.float32(params["factor"])).astype(np.float32), 1.0
    if rope_type == "llama3":
        inv_freq = _base_inv_freq(base, dim)
        factor = params["factor"]
        low, high = params["low_freq_factor"], params["high_freq_factor"]
        old_len = params.get("original_max_position_embeddings", config.max_position_embeddings)
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32), 1.0
    if rope_type == "yarn":
        return _yarn(config, params)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


def _yarn(config: ModelConfig, params: dict) -> tuple[np.ndarray, float]:
    dim, base = config.head_dim, config.rope_theta
    original_max = params.get("original_max_position_embeddings", config.max_position_embeddings)
    factor = params.get("factor") or config.max_position_embeddings / original_max
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original_max / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (np.float32(factor) * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_cos_sin(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim // 2] (float32) for integer positions[B, T]."""
    inv_freq, scaling = rope_inv_freq(config)
    inv_freq = jnp.asarray(inv_freq)
    if config.rope_type == "dynamic":  # NTK: grow the base once positions pass max_position_embeddings
        dim, max_pos = config.head_dim, config.max_position_embeddings
        factor = config.rope_scaling["factor"]
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_pos).astype(jnp.float32)
        base = config.rope_theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles) * scaling, jnp.sin(angles) * scaling


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x[B, T, heads, head_dim] by the angles in cos/sin[B, T, head_dim // 2] (rotate_half layout)."""
    dtype = x.dtype
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[:, :, None, :].astype(dtype), sin[:, :, None, :].astype(dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
