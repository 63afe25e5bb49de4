"""Input checks shared by every merge and analysis path (in memory and streamed): non-finite weights, float64.

Imports nothing from jax_cat.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NonFiniteError", "check_finite", "check_float64", "ALLOW_NONFINITE_HINT"]

ALLOW_NONFINITE_HINT = "pass allow_nonfinite=True (CLI: --allow-nonfinite) to use it anyway"


class NonFiniteError(ValueError):
    """A weight holds NaN or Inf (a corrupt checkpoint); the message names the tensor and the input."""


@jax.jit
def _all_finite(arrays: tuple[jax.Array, ...]) -> jax.Array:
    ok = jnp.asarray(True)
    for x in arrays:
        ok = ok & jnp.all(jnp.isfinite(x))
    return ok


def check_finite(name: str, arrays: Sequence[Any], labels: Sequence[str]) -> None:
    """Raise NonFiniteError naming `name` and the first input (labels[i]) whose tensor holds NaN or Inf.

    One fused jitted pass over all inputs (a read of each, no temporaries kept); the slow per-input count only runs
    when something is wrong.
    """
    arrays = [jnp.asarray(a) for a in arrays]
    floats = tuple(a for a in arrays if jnp.issubdtype(a.dtype, jnp.inexact))
    if not floats or bool(_all_finite(floats)):
        return
    for array, label in zip(arrays, labels):
        if not jnp.issubdtype(array.dtype, jnp.inexact):
            continue
        n_nan = int(jnp.sum(jnp.isnan(array)))
        n_inf = int(jnp.sum(jnp.isinf(array)))
        if n_nan or n_inf:
            what = ", ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "Inf")) if n)
            raise NonFiniteError(
                f"tensor {name!r} of {label} holds {what} of {array.size} entries: the weights are corrupt; "
                f"{ALLOW_NONFINITE_HINT}"
            )


def check_float64(name: str, dtype: Any, label: str) -> None:
    """Refuse a float64 tensor up front when JAX runs without x64 (it would be merged in float32 and written as
    something else than planned); with x64 enabled float64 inputs are merged in float64."""
    if np.dtype(dtype) == np.float64 and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
        raise ValueError(
            f"tensor {name!r} of {label} is float64, but JAX runs in 32-bit mode and would merge it in float32: "
            f"enable float64 first (jax.config.update('jax_enable_x64', True), or JAX_ENABLE_X64=1) to merge in "
            f"float64, or convert the checkpoint to float32"
        )
