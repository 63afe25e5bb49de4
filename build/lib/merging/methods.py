"""Merge recipes: base + fine-tuned models -> merged model, for every method, in memory or tensor by tensor.

One engine (`merge_tensors`) walks tensor names, takes the task vectors against the base in float32, runs the
global-statistics passes a method needs, and yields merged tensors one at a time. `merge` (pytrees in memory) and
`merging.stream.merge_checkpoints` (safetensors on disk) both drive it, so they agree bit for bit; the engine itself
is built from the public pytree functions' leaf kernels (`task_vectors`, `sparsify`).

Imports nothing from jax_cat.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from merging._paths import PathSelector, is_vector_leaf, make_selector
from merging.sparsify import (
    Breadcrumbs, Dare, ProgressFn, Rescale, Sparsifier, TopK, _no_progress, apply_sparsifier, prepare,
    ram_counts_leaf, ram_leaf, ram_rescales, ties_leaf,
)
from merging.task_vectors import check_compatible, combine_leaf, tv_leaf

__all__ = ["METHODS", "MergeSpec", "merge", "merge_tensors"]

METHODS = ("task_arithmetic", "dots", "ties", "dare", "breadcrumbs", "ram", "ram_plus")
DEFAULT_DENSITY = {"dots": 0.3, "ties": 0.2, "dare": 0.1, "breadcrumbs": 0.1}


@dataclass(frozen=True)
class MergeSpec:
    """What to merge and how. `coeffs[i]` weights model i's task vector (default 1.0 each).

    method:
      task_arithmetic  base + sum c_i tau_i
      dots             base + sum c_i S(tau_i), S = top-`density` per tensor (`topk_scope`) + norm-preserving
                       rescale (`norm`, `scope`: one global factor per vector by default)
      dare             base + sum c_i DARE(tau_i), drop rate 1 - density, survivors x 1/(1-p) (`dare_rescale`="inverse")
                       or to the original norm ("norm", with `norm`, `scope`); seed `seed + i` for model i
      breadcrumbs      base + sum c_i band(tau_i): drop the `top_remove` largest per row, keep the next `density`
      ties             base + lam * disjoint_mean(elect(trim_density(c_i tau_i)))
      ram / ram_plus   base + RAM({c_i tau_i}) with changed = |tau_i| > ram_threshold; ram_plus rescales entries
                       unique to one vector by 1 + (ram_rescale - 1) min(1, shared/unique), counts over `ram_scope`
    filter/exclude: regexes (or predicates) on tensor names; unselected tensors keep the base value.
    """

    method: Literal["task_arithmetic", "dots", "ties", "dare", "breadcrumbs", "ram", "ram_plus"]
    coeffs: tuple[float, ...] | None = None
    density: float | None = None
    scope: Literal["tensor", "global"] = "global"
    topk_scope: Literal["tensor", "global"] = "tensor"
    norm: Literal["l2", "l1", "linf"] = "l2"
    seed: int = 0
    dare_rescale: Literal["inverse", "norm"] = "inverse"
    top_remove: float = 0.01
    lam: float = 1.0
    ram_threshold: float = 1e-5
    ram_rescale: float | None = None
    ram_scope: Literal["tensor", "global"] = "global"
    filter: PathSelector = field(default=None, compare=False)
    exclude: PathSelector = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dare_rescale not in ("inverse", "norm"):
            raise ValueError(f"dare_rescale must be 'inverse' or 'norm', got {self.dare_rescale!r}")
        Rescale(self.norm, self.scope)  # validates norm / scope
        if self.topk_scope not in ("tensor", "global") or self.ram_scope not in ("tensor", "global"):
            raise ValueError("topk_scope and ram_scope must be 'tensor' or 'global'")
        if self.density is not None and self.method not in DEFAULT_DENSITY:
            raise ValueError(f"density has no effect with method {self.method!r} (it applies to {tuple(DEFAULT_DENSITY)})")
        for i in range(2):  # validate the sparsifier arguments early, with their names
            self.sparsifier(i)

    @property
    def effective_density(self) -> float:
        return self.density if self.density is not None else DEFAULT_DENSITY.get(self.method, 1.0)

    def coefficients(self, n_models: int) -> tuple[float, ...]:
        coeffs = self.coeffs if self.coeffs is not None else (1.0,) * n_models
        if len(coeffs) != n_models:
            raise ValueError(f"got {n_models} models but {len(coeffs)} coeffs")
        return tuple(float(c) for c in coeffs)

    def sparsifier(self, i: int) -> Sparsifier | None:
        """The per-vector sparsifier of model i (None when the method does not sparsify vectors one by one)."""
        d = self.effective_density
        if self.method == "dots":
            return TopK(d, self.topk_scope, Rescale(self.norm, self.scope))
        if self.method == "ties":
            return TopK(d, self.topk_scope)
        if self.method == "dare":
            rescale = "inverse" if self.dare_rescale == "inverse" else Rescale(self.norm, self.scope)
            return Dare(1.0 - d, self.seed + i, rescale)
        if self.method == "breadcrumbs":
            return Breadcrumbs(d, self.top_remove)
        return None

    @property
    def ram_factor(self) -> float:
        if self.ram_rescale is not None:
            return self.ram_rescale
        return 1.2 if self.method == "ram_plus" else 1.0

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the recipe (written next to merged checkpoints)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("filter", "exclude")}
        out["density"] = self.effective_density
        out["filter"] = self.filter if isinstance(self.filter, (str, type(None))) else repr(self.filter)
        out["exclude"] = self.exclude if isinstance(self.exclude, (str, type(None))) else repr(self.exclude)
        if self.method in ("ram", "ram_plus"):
            out["ram_rescale"] = self.ram_factor
        return out


def merge_tensors(
    names: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    get_base: Callable[[str], Any],
    get_finetuned: Callable[[int, str], Any],
    n_models: int,
    spec: MergeSpec,
    *,
    is_float: Callable[[str], bool] = lambda name: True,
    progress: ProgressFn = _no_progress,
) -> Iterator[tuple[str, Any]]:
    """Yield (name, merged tensor) in `names` order; runs the statistics passes `spec` needs first.

    Tensors that are not selected by spec.filter/exclude, or not floating point, are yielded as the base's.
    """
    select = make_selector(spec.filter, spec.exclude)
    vector_names = [n for n in names if is_float(n) and select(n)]
    sizes = {n: int(np.prod(shapes[n])) for n in vector_names}
    coeffs = spec.coefficients(n_models)
    k = jnp.asarray(coeffs, jnp.float32)

    def taus(name: str) -> list[Any]:
        base = jnp.asarray(get_base(name))
        return [tv_leaf(jnp.asarray(get_finetuned(i, name)), base, out_dtype=jnp.float32) for i in range(n_models)]

    sparsifiers = [spec.sparsifier(i) for i in range(n_models)]
    plans = prepare(sparsifiers, vector_names, sizes, taus, progress) if any(sparsifiers) else [None] * n_models

    ram_thr = jnp.asarray(spec.ram_threshold, jnp.float32)
    if spec.method in ("ram", "ram_plus") and spec.ram_scope == "global":
        changed, shared = [0] * n_models, [0] * n_models
        for name in progress(vector_names, "stats pass (RAM overlap counts)", len(vector_names)):
            ch, sh = ram_counts_leaf(tuple(taus(name)), ram_thr)
            changed = [a + int(b) for a, b in zip(changed, np.asarray(ch))]
            shared = [a + int(b) for a, b in zip(shared, np.asarray(sh))]
        global_rescales = jnp.asarray(ram_rescales(changed, shared, spec.ram_factor), jnp.float32)

    def merge_one(name: str) -> Any:  # a function, so its temporaries are freed before the next tensor is read
        base = jnp.asarray(get_base(name))
        ts = taus(name)
        if spec.method == "task_arithmetic":
            return combine_leaf(base, tuple(ts), k)
        if spec.method in ("dots", "dare", "breadcrumbs"):
            sparse = tuple(apply_sparsifier(sp, t, name, plan) for sp, t, plan in zip(sparsifiers, ts, plans))
            return combine_leaf(base, sparse, k)
        if spec.method == "ties":
            trimmed = tuple(apply_sparsifier(sp, t, name, plan) for sp, t, plan in zip(sparsifiers, ts, plans))
            return combine_leaf(base, (ties_leaf(trimmed, k),), jnp.asarray([spec.lam], jnp.float32))
        if spec.ram_scope == "global":  # ram / ram_plus
            rescales = global_rescales
        else:
            ch, sh = ram_counts_leaf(tuple(ts), ram_thr)
            rescales = ram_rescales(ch, sh, spec.ram_factor, xp=jnp)
        return combine_leaf(base, (ram_leaf(tuple(ts), k, rescales, ram_thr),), jnp.ones((1,), jnp.float32))

    vector_set = set(vector_names)
    for name in progress(names, "merging", len(names)):
        yield name, merge_one(name) if name in vector_set else get_base(name)


def merge(base: Any, finetuned: Sequence[Any], spec: MergeSpec) -> Any:
    """In-memory merge of pytrees (same structure/shapes/dtypes) with `spec`; returns a pytree like `base`.

    Equal bit for bit to `merging.stream.merge_checkpoints` on the same tensors, and to composing the public
    functions by hand, e.g. for dots:
    combine(base, [dots_sparsify(task_vector(ft, base, dtype=jnp.float32), ...) for ft in finetuned], coeffs).
    """
    finetuned = list(finetuned)
    if not finetuned:
        raise ValueError("merge needs at least one fine-tuned model")
    rows = check_compatible([base, *finetuned], ["base"] + [f"finetuned[{i}]" for i in range(len(finetuned))])
    leaves = {path: ls for path, ls in rows}
    names = [path for path, _ in rows]
    merged = dict(
        merge_tensors(
            names,
            {p: tuple(getattr(ls[0], "shape", ())) for p, ls in rows},
            lambda name: leaves[name][0],
            lambda i, name: leaves[name][i + 1],
            len(finetuned),
            spec,
            is_float=lambda name: is_vector_leaf(leaves[name][0]),
        )
    )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(base), [merged[p] for p in names])
