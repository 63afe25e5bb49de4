"""TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models", NeurIPS).

Rule: merged = base + scale * m, m = disjoint_mean(elect(trim(c_i tau_i))):
trim keeps the top `density` entries of each tau_i by |x| (per tensor, as mergekit; `topk_scope="global"` over
the whole vector, as the authors' code) -- exactly k, ties at the threshold in index order, unless
`tie_break="keep_all"`; elect takes sign(sum_i c_i t_i) per entry; the disjoint mean averages the c_i t_i that
are non-zero and agree with it (0 where none do). `scale` is the paper's lambda (default 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from merging._paths import PathSelector, is_vector_leaf
from merging.methods.base import MergeMethod, check_choice
from merging.sparsify import Scope, Sparsifier, TieBreak, TopK, _check_fraction, _rebuild, _selected_leaves, \
    apply_sparsifier, prepare
from merging.task_vectors import combine_leaf, compute_dtype

__all__ = ["TiesMerge", "ties", "ties_leaf"]


@jax.jit
def ties_leaf(trimmed: tuple[jax.Array, ...], weights: jax.Array) -> jax.Array:
    """Elect sign(sum_i w_i t_i) per entry; mean of the w_i t_i that are non-zero and agree with it (else 0)."""
    c = compute_dtype(trimmed[0].dtype)
    xs = [weights[i].astype(c) * t.astype(c) for i, t in enumerate(trimmed)]
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    elected = jnp.sign(total)
    agree = [(x != 0) & (jnp.sign(x) == elected) for x in xs]
    num = jnp.zeros_like(total)
    cnt = jnp.zeros_like(total)
    for x, a in zip(xs, agree):
        num = num + jnp.where(a, x, 0)
        cnt = cnt + a.astype(c)
    return (num / jnp.maximum(cnt, 1)).astype(trimmed[0].dtype)


@dataclass(frozen=True, kw_only=True)
class TiesMerge(MergeMethod):
    """base + scale * disjoint_mean(elect(trim_density(c_i tau_i)))."""

    name = "ties"
    paper = "Yadav et al. 2023, TIES-Merging (NeurIPS)"
    rule = "base + scale * disjoint_mean(elect(topk_density(c_i tau_i)))"

    density: float = 0.2
    topk_scope: str = "tensor"
    tie_break: str = "index"
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("density", self.density)
        check_choice("topk_scope", self.topk_scope, ("tensor", "global"))
        check_choice("tie_break", self.tie_break, ("index", "keep_all"))
        object.__setattr__(self, "scale", float(self.scale))

    def sparsifier(self, i: int) -> Sparsifier:
        return TopK(self.density, self.topk_scope, None, self.tie_break)

    @property
    def blockable(self) -> bool:
        return True  # trim is per-tensor top-k (found over the blocks); elect + disjoint mean are elementwise

    def merge_leaf(self, base: jax.Array, taus: tuple[jax.Array, ...], stats: Any, coeffs: jax.Array) -> jax.Array:
        return combine_leaf(base, (ties_leaf(taus, coeffs),), jnp.asarray([self.scale], jnp.float32))


def ties(
    taus: Sequence[Any],
    density: float = 0.2,
    *,
    scope: Scope = "tensor",
    coefficients: Sequence[float] | None = None,
    tie_break: TieBreak = "index",
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """TIES-Merging's merged task vector: trim (top-k), elect sign, disjoint mean. Apply as combine(base, [m], [lam]).

    `scope="tensor"` trims each tensor (mergekit); `scope="global"` trims over the whole vector (the authors' code).
    `coefficients` multiply each trimmed vector before the election (default 1). Unselected
    leaves are zero.
    """
    taus = list(taus)
    if not taus:
        raise ValueError("ties needs at least one task vector")
    w = jnp.asarray(list(coefficients) if coefficients is not None else [1.0] * len(taus), jnp.float32)
    if w.shape != (len(taus),):
        raise ValueError(f"got {len(taus)} task vectors but {w.shape[0]} coefficients")
    rows, chosen = _selected_leaves(taus, [f"taus[{i}]" for i in range(len(taus))], filter, exclude)
    names = list(chosen)
    trims = [TopK(density, scope, None, tie_break)] * len(taus)
    plans = prepare(trims, names, {n: int(np.prod(chosen[n][0].shape)) for n in names}, lambda n: chosen[n])
    out = []
    for path, leaves in rows:
        if path not in chosen:
            out.append(jnp.zeros_like(leaves[0]) if is_vector_leaf(leaves[0]) else leaves[0])
            continue
        trimmed = tuple(apply_sparsifier(sp, x, path, plan) for sp, x, plan in zip(trims, leaves, plans))
        out.append(ties_leaf(trimmed, w))
    return _rebuild(taus[0], out)
