"""The merge engine: base + fine-tuned models -> merged model, tensor by tensor, for every registered method.

`merge_tensors` walks tensor names, takes the task vectors against the base (float32, or float64 for float64
inputs under x64; mixed input dtypes are computed in the wider one and written in the base's dtype), checks every
input tensor for NaN/Inf once, runs the statistics passes the method needs, and yields merged tensors one at a
time. `merge` (pytrees in memory) and `merging.stream.merge_checkpoints` (safetensors on disk) both drive it, so
they agree bit for bit.

Imports nothing from jax_cat.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from merging._checks import check_finite, check_float64
from merging._paths import is_vector_leaf, make_selector
from merging.methods.base import MergeMethod
from merging.sparsify import ProgressFn, _no_progress, apply_sparsifier, prepare
from merging.task_vectors import check_compatible, compute_dtype, tv_leaf

__all__ = ["merge", "merge_tensors"]


def tau_dtype(base_dtype: Any, finetuned_dtypes: Sequence[Any]) -> Any:
    """The dtype task vectors are taken in: float32, or the widest input float type (float64 under x64)."""
    out = compute_dtype(base_dtype)
    for d in finetuned_dtypes:
        out = jnp.promote_types(out, compute_dtype(d))
    return jnp.dtype(out)


@partial(jax.jit, static_argnames=("dtype",))
def _taus_and_finite(base: jax.Array, fts: tuple[jax.Array, ...], dtype: Any) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """The task vectors (exactly `tv_leaf`'s arithmetic) and whether all of them are finite, in one computation."""
    taus = []
    for ft in fts:
        c = jnp.promote_types(compute_dtype(base.dtype), compute_dtype(ft.dtype))
        taus.append((ft.astype(c) - base.astype(c)).astype(dtype))
    finite = jnp.asarray(True)
    for t in taus:
        finite = finite & jnp.all(jnp.isfinite(t))
    return tuple(taus), finite


def merge_tensors(
    names: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    get_base: Callable[[str], Any],
    get_finetuned: Callable[[int, str], Any],
    n_models: int,
    spec: MergeMethod,
    *,
    is_float: Callable[[str], bool] = lambda name: True,
    progress: ProgressFn = _no_progress,
    allow_nonfinite: bool = False,
    labels: Sequence[str] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield (name, merged tensor) in `names` order; runs the statistics passes `spec` needs first.

    Tensors that are not selected by spec.filter/exclude, or not floating point, are yielded as the base's.
    Every float tensor read is checked for NaN/Inf once (`NonFiniteError` naming it and `labels[j]`, default
    "base", "models[i]") unless `allow_nonfinite`.
    """
    if not isinstance(spec, MergeMethod):
        raise TypeError(f"spec must be a merge method's settings (e.g. MergeSpec('dots', ...)), got {spec!r}")
    labels = list(labels) if labels is not None else ["base"] + [f"models[{i}]" for i in range(n_models)]
    select = make_selector(spec.filter, spec.exclude)
    vector_names = [n for n in names if is_float(n) and select(n)]
    sizes = {n: int(np.prod(shapes[n])) for n in vector_names}
    k = jnp.asarray(spec.resolved_coefficients(n_models), jnp.float32)
    checked: set[str] = set()

    def read(name: str) -> tuple[Any, list[Any]]:
        return jnp.asarray(get_base(name)), [jnp.asarray(get_finetuned(i, name)) for i in range(n_models)]

    def taus_of(name: str, base: Any, fts: Sequence[Any]) -> list[Any]:
        dtype = tau_dtype(base.dtype, [f.dtype for f in fts])
        if allow_nonfinite or name in checked:
            return [tv_leaf(ft, base, out_dtype=dtype) for ft in fts]
        # first visit of this tensor: the task vectors and their finiteness in one pass over the inputs (a NaN/Inf
        # in the base or a model makes its task vector non-finite); the inputs are only examined one by one when
        # that flag says something is wrong
        taus, finite = _taus_and_finite(base, tuple(fts), dtype)
        if not bool(finite):
            check_finite(name, [base, *fts], labels)
        checked.add(name)
        return list(taus)

    def taus(name: str) -> list[Any]:
        return taus_of(name, *read(name))

    sparsifiers = [spec.sparsifier(i) for i in range(n_models)]
    sparsify = any(s is not None for s in sparsifiers)
    plans = prepare(sparsifiers, vector_names, sizes, taus, progress) if sparsify else [None] * n_models
    stats = spec.statistics(vector_names, taus, n_models, progress)

    def merge_one(name: str) -> Any:  # a function, so its temporaries are freed before the next tensor is read
        base, fts = read(name)
        ts = taus_of(name, base, fts)
        if sparsify:
            ts = [apply_sparsifier(sp, t, name, plan) if sp is not None else t
                  for sp, t, plan in zip(sparsifiers, ts, plans)]
        return spec.merge_leaf(base, tuple(ts), stats, k)

    def passthrough(name: str) -> Any:
        base = get_base(name)
        if not allow_nonfinite and is_float(name):
            check_finite(name, [base], labels[:1])
        return base

    vector_set = set(vector_names)
    for name in progress(names, "merging", len(names)):
        yield name, merge_one(name) if name in vector_set else passthrough(name)


def merge(base: Any, finetuned: Sequence[Any], spec: MergeMethod, *, allow_nonfinite: bool = False) -> Any:
    """In-memory merge of pytrees (same structure and shapes) with `spec`; returns a pytree like `base`.

    Equal bit for bit to `merging.stream.merge_checkpoints` on the same tensors, and to composing the public
    functions by hand, e.g. for dots:
    combine(base, [dots_sparsify(task_vector(ft, base, dtype=jnp.float32), ...) for ft in finetuned], coeffs).
    Float inputs may differ in dtype (computed in float32 or wider, written in the base's dtype); float64 leaves
    need JAX's x64 mode (else ValueError up front); NaN/Inf anywhere is a `NonFiniteError` unless `allow_nonfinite`.
    """
    finetuned = list(finetuned)
    if not finetuned:
        raise ValueError("merge needs at least one fine-tuned model")
    labels = ["base"] + [f"finetuned[{i}]" for i in range(len(finetuned))]
    rows = check_compatible([base, *finetuned], labels, check_dtype=False)
    leaves = {path: ls for path, ls in rows}
    names = [path for path, _ in rows]
    for path, ls in rows:
        if is_vector_leaf(ls[0]):
            for leaf, label in zip(ls, labels):
                check_float64(path, leaf.dtype, label)
    merged = dict(
        merge_tensors(
            names,
            {p: tuple(getattr(ls[0], "shape", ())) for p, ls in rows},
            lambda name: leaves[name][0],
            lambda i, name: leaves[name][i + 1],
            len(finetuned),
            spec,
            is_float=lambda name: is_vector_leaf(leaves[name][0]),
            allow_nonfinite=allow_nonfinite,
            labels=labels,
        )
    )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(base), [merged[p] for p in names])
