"""Task-vector arithmetic on pytrees: tau = finetuned - base, sums, scalings, and base + sum_i c_i tau_i.

Pure functions over any JAX pytree (nested dicts, tuples, `nnx.State`, Equinox modules). Leaves that are not
floating-point arrays (integer counters, PRNG keys, activation functions in an Equinox module) are passengers:
they are taken from the first argument (the base) unchanged. Arithmetic runs in float32 (or the leaf's wider float
type) and is cast back to each leaf's dtype, so bf16 in gives bf16 out. Every function is jit-able.

Imports nothing from jax_cat.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from merging._paths import PathSelector, is_vector_leaf, make_selector, path_to_str
from merging.lora_adapter import LoRAAdapter

__all__ = ["TreeMismatchError", "task_vector", "add", "scale", "combine", "check_compatible", "compute_dtype"]


class TreeMismatchError(ValueError):
    """Two pytrees that should match differ in structure, shape or dtype; the message names the first path."""


def compute_dtype(dtype: Any) -> Any:
    """The dtype arithmetic runs in: float32, or the leaf's own float type when wider (float64 under x64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__}{tuple(x.shape)} {x.dtype}"
    return type(x).__name__


def check_compatible(
    trees: Sequence[Any], names: Sequence[str], *, check_dtype: bool = True
) -> list[tuple[str, list[Any]]]:
    """Flatten `trees` together; raise `TreeMismatchError` naming the first path whose structure/shape/dtype differs.

    Returns [(path string, [leaf of each tree])] in flatten order.
    """
    flat = [jax.tree_util.tree_flatten_with_path(t) for t in trees]
    ref_paths = [path_to_str(p) for p, _ in flat[0][0]]
    for (leaves, treedef), name in zip(flat[1:], names[1:]):
        paths = [path_to_str(p) for p, _ in leaves]
        if paths != ref_paths or treedef != flat[0][1]:
            path_set, ref_set = set(paths), set(ref_paths)
            only_ref = [p for p in ref_paths if p not in path_set]
            only_other = [p for p in paths if p not in ref_set]
            if only_ref:
                detail = f"path '{only_ref[0]}' is in {names[0]} but not in {name}"
            elif only_other:
                detail = f"path '{only_other[0]}' is in {name} but not in {names[0]}"
            else:
                first = next((a for a, b in zip(ref_paths, paths) if a != b), ref_paths[0] if ref_paths else "")
                detail = f"node types differ at or above '{first}' ({flat[0][1]} vs {treedef})"
            raise TreeMismatchError(f"pytree structure differs between {names[0]} and {name}: {detail}")
    out: list[tuple[str, list[Any]]] = []
    for i, path in enumerate(ref_paths):
        leaves = [f[0][i][1] for f in flat]
        ref = leaves[0]
        for leaf, name in zip(leaves[1:], names[1:]):
            if is_vector_leaf(ref) != is_vector_leaf(leaf):
                raise TreeMismatchError(
                    f"leaf kind differs at '{path}': {names[0]} has {_describe(ref)}, {name} has {_describe(leaf)}"
                )
            if not is_vector_leaf(ref):
                continue
            if tuple(ref.shape) != tuple(leaf.shape):
                raise TreeMismatchError(
                    f"shape differs at '{path}': {names[0]} {tuple(ref.shape)} vs {name} {tuple(leaf.shape)}"
                )
            if check_dtype and ref.dtype != leaf.dtype:
                raise TreeMismatchError(f"dtype differs at '{path}': {names[0]} {ref.dtype} vs {name} {leaf.dtype}")
        out.append((path, leaves))
    return out


# --- leaf kernels (jitted once per shape/dtype; the streaming merge calls the very same kernels) -----------------
@partial(jax.jit, static_argnames=("out_dtype",))
def tv_leaf(finetuned: jax.Array, base: jax.Array, out_dtype: Any) -> jax.Array:
    """finetuned - base in the compute dtype (float32, or the wider input float type), cast to `out_dtype`."""
    c = jnp.promote_types(compute_dtype(base.dtype), compute_dtype(finetuned.dtype))
    return (finetuned.astype(c) - base.astype(c)).astype(out_dtype)


@jax.jit
def combine_leaf(base: jax.Array, taus: tuple[jax.Array, ...], coeffs: jax.Array) -> jax.Array:
    """base + sum_i coeffs[i] * taus[i], accumulated left to right in the compute dtype, cast to base's dtype."""
    c = compute_dtype(base.dtype)
    acc = base.astype(c)
    for i, tau in enumerate(taus):
        acc = acc + coeffs[i].astype(c) * tau.astype(c)
    return acc.astype(base.dtype)


@jax.jit
def _add_leaf(a: jax.Array, b: jax.Array) -> jax.Array:
    c = compute_dtype(a.dtype)
    return (a.astype(c) + b.astype(c)).astype(a.dtype)


@jax.jit
def _scale_leaf(a: jax.Array, coeff: jax.Array) -> jax.Array:
    c = compute_dtype(a.dtype)
    return (coeff.astype(c) * a.astype(c)).astype(a.dtype)


def _rebuild(like: Any, leaves: list[Any]) -> Any:
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def task_vector(
    finetuned: Any,
    base: Any,
    *,
    filter: PathSelector = None,
    exclude: PathSelector = None,
    dtype: Any = None,
) -> Any:
    """tau = finetuned - base, leaf by leaf (the direction fine-tuning moved the weights).

    `finetuned` may also be a PEFT LoRA adapter folder (str / PathLike) or an in-memory adapter
    (`merging.lora_adapter.LoRAAdapter`) with `base` a dict keyed by HF tensor names: tau is then B @ A * alpha / r on
    the adapted weights and zero elsewhere.

    `dtype=None` keeps each leaf's dtype (bf16 in, bf16 out); pass `jnp.float32` to keep the difference exact.
    Leaves not selected by `filter`/`exclude` (regex or predicate on "a/b/0/c" paths) are zero.

    >>> import jax.numpy as jnp
    >>> tau = task_vector({"w": jnp.array([1.5, 2.0])}, {"w": jnp.array([1.0, 2.0])}, exclude=r"embed|lm_head")
    >>> tau["w"].tolist()
    [0.5, 0.0]
    """
    selected = make_selector(filter, exclude)
    if isinstance(finetuned, str | os.PathLike | LoRAAdapter):
        from merging.adapters import adapter_task_vector

        tau = (finetuned.task_vector(base, dtype=dtype) if isinstance(finetuned, LoRAAdapter) else
               adapter_task_vector(finetuned, base, dtype=dtype))
        return {k: v if selected(k) else jnp.zeros_like(v) for k, v in tau.items()}
    leaves = []
    for path, (ft, b) in check_compatible([finetuned, base], ["finetuned", "base"]):
        if not is_vector_leaf(b):
            leaves.append(b)
        elif not selected(path):
            leaves.append(jnp.zeros(b.shape, dtype if dtype is not None else b.dtype))
        else:
            leaves.append(tv_leaf(ft, b, out_dtype=jnp.dtype(dtype if dtype is not None else b.dtype)))
    return _rebuild(base, leaves)


def add(a: Any, b: Any) -> Any:
    """a + b leaf by leaf (e.g. two task vectors); dtype of `a`."""
    leaves = [
        _add_leaf(x, y) if is_vector_leaf(x) else x
        for _, (x, y) in check_compatible([a, b], ["first", "second"])
    ]
    return _rebuild(a, leaves)


def scale(tau: Any, coeff: float | jax.Array) -> Any:
    """coeff * tau leaf by leaf."""
    k = jnp.asarray(coeff, jnp.float32) if not isinstance(coeff, jax.Array) else coeff
    return jax.tree_util.tree_map(lambda x: _scale_leaf(x, k) if is_vector_leaf(x) else x, tau)


def combine(
    base: Any,
    taus: Sequence[Any],
    coeffs: Sequence[float] | jax.Array | None = None,
    *,
    coefficients: Sequence[float] | jax.Array | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """base + sum_i coeffs[i] * taus[i]: the merged model (task arithmetic, Ilharco et al. 2023).

    The coefficients are given positionally or as `coefficients=` (the name every merge uses; `coeffs` is the
    older one).

    Task vectors may be stored in a wider dtype than the base (float32 vectors onto a bf16 base); the result has
    the base's dtypes. Leaves not selected by `filter`/`exclude` keep the base value.

    >>> import jax.numpy as jnp
    >>> base = (jnp.array([1.0, 1.0]), {"b": jnp.array([0.0])})  # any pytree: dicts, tuples, nnx.State, ...
    >>> combine(base, [(jnp.array([2.0, 0.0]), {"b": jnp.array([4.0])})], [0.5])[0].tolist()
    [2.0, 1.0]
    """
    if (coeffs is None) == (coefficients is None):
        raise TypeError("combine needs the coefficients once: positionally (coeffs) or as coefficients=")
    coeffs = coeffs if coeffs is not None else coefficients
    taus = list(taus)
    if isinstance(coeffs, jax.Array):
        if coeffs.shape != (len(taus),):
            raise ValueError(f"coeffs has shape {coeffs.shape}, expected ({len(taus)},) for {len(taus)} task vectors")
        k = coeffs
    else:
        if len(coeffs) != len(taus):
            raise ValueError(f"got {len(taus)} task vectors but {len(coeffs)} coeffs")
        k = jnp.asarray(list(coeffs), jnp.float32) if taus else jnp.zeros((0,), jnp.float32)
    selected = make_selector(filter, exclude)
    names = ["base"] + [f"taus[{i}]" for i in range(len(taus))]
    leaves = []
    for path, (b, *ts) in check_compatible([base, *taus], names, check_dtype=False):
        if not is_vector_leaf(b) or not selected(path) or not ts:
            leaves.append(b)
        else:
            leaves.append(combine_leaf(b, tuple(ts), k))
    return _rebuild(base, leaves)
