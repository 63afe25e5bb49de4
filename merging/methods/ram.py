"""RAM / RAM+ (Yuan et al. 2026, "Behavior Knowledge Merge in Reinforced Agentic Models").

Rule: an entry counts as changed by model i when |tau_i| > `threshold`. Entries changed by one model only keep
c_i tau_i (RAM+: times 1 + (r - 1) min(1, shared_i / unique_i), r = `rescale_factor`, where shared_i / unique_i
count model i's changed entries that another model also changed / that only it changed, over the whole vector
(`count_scope="global"`, the authors' code) or per tensor); entries changed by several models take the mean of
their c_i tau_i; entries changed by none stay at the base. merged = base + that vector. No top-k.
Counts are exact integers at any size (per-row int32 partial counts summed on the host as Python ints).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from merging._paths import PathSelector, is_vector_leaf
from merging.methods.base import MergeMethod, check_choice
from merging.sparsify import ProgressFn, Scope, _rebuild, _selected_leaves
from merging.task_vectors import combine_leaf, compute_dtype

__all__ = ["RamMerge", "RamPlusMerge", "ram", "ram_counts", "ram_counts_leaf", "ram_rescales", "ram_leaf"]


@jax.jit
def ram_counts_leaf(taus: tuple[jax.Array, ...], threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per vector and per row of the last axis: (#entries it changed (|tau| > threshold), #of those also changed by
    another vector). int32 per row (a row never nears 2^31 entries); `ram_counts` sums the rows exactly."""
    masks = [jnp.abs(t) > threshold.astype(t.dtype) for t in taus]
    count = sum(m.astype(jnp.int32) for m in masks)
    rows = lambda m: m.reshape(-1, m.shape[-1]) if m.ndim >= 2 else m.reshape(1, -1)  # noqa: E731
    changed = jnp.stack([jnp.sum(rows(m), axis=-1, dtype=jnp.int32) for m in masks])
    shared = jnp.stack([jnp.sum(rows(m & (count >= 2)), axis=-1, dtype=jnp.int32) for m in masks])
    return changed, shared


def ram_counts(taus: Sequence[Any], threshold: jax.Array) -> tuple[list[int], list[int]]:
    """Exact (changed, shared) counts per vector of one tensor, as Python ints (no int32 overflow at 2^31)."""
    ch, sh = ram_counts_leaf(tuple(taus), threshold)
    ch, sh = np.asarray(ch), np.asarray(sh)
    return [int(r.sum(dtype=np.int64)) for r in ch], [int(r.sum(dtype=np.int64)) for r in sh]


def ram_rescales(changed: Sequence[int], shared: Sequence[int], rescale_factor: float, xp: Any = np) -> Any:
    """RAM+ factor per vector: 1 + (r - 1) * min(1, shared / unique) (authors' code, arm-r-v2); r <= 1 gives RAM."""
    r = max(float(rescale_factor), 1.0)
    changed = xp.asarray(changed, dtype=xp.float64 if xp is np else jnp.float32)
    shared = xp.asarray(shared, dtype=changed.dtype)
    unique = changed - shared
    rho = xp.where(unique > 0, shared / xp.where(unique > 0, unique, 1), xp.where(shared > 0, xp.inf, 0.0))
    return 1.0 + (r - 1.0) * xp.minimum(1.0, rho)


@jax.jit
def ram_leaf(
    taus: tuple[jax.Array, ...], weights: jax.Array, rescales: jax.Array, threshold: jax.Array
) -> jax.Array:
    """Entries changed by one vector: w_i tau_i * rescale_i; by several: mean of their w_i tau_i; by none: 0."""
    c = compute_dtype(taus[0].dtype)
    masks = [jnp.abs(t) > threshold.astype(t.dtype) for t in taus]
    count = jnp.zeros(taus[0].shape, jnp.int32)
    for m in masks:
        count = count + m.astype(jnp.int32)
    unique = jnp.zeros(taus[0].shape, c)
    shared = jnp.zeros(taus[0].shape, c)
    for i, (t, m) in enumerate(zip(taus, masks)):
        x = weights[i].astype(c) * t.astype(c)
        unique = unique + jnp.where(m, x * rescales[i].astype(c), 0)
        shared = shared + jnp.where(m, x, 0)
    shared = shared / jnp.maximum(count, 1).astype(c)
    return jnp.where(count == 1, unique, jnp.where(count >= 2, shared, 0)).astype(taus[0].dtype)


def _tensor_rescales(taus: Sequence[Any], thr: jax.Array, rescale_factor: float) -> Any:
    if any(isinstance(t, jax.core.Tracer) for t in taus):  # under jit: sum the per-row counts on device
        ch, sh = ram_counts_leaf(tuple(taus), thr)
        return ram_rescales(ch.sum(-1, dtype=jnp.float32), sh.sum(-1, dtype=jnp.float32), rescale_factor, xp=jnp)
    ch, sh = ram_counts(taus, thr)
    return ram_rescales(ch, sh, rescale_factor, xp=jnp)


@dataclass(frozen=True, kw_only=True)
class RamMerge(MergeMethod):
    """base + RAM({c_i tau_i}): unique changes kept, shared changes averaged (rescale_factor 1: plain RAM)."""

    name = "ram"
    paper = "Yuan et al. 2026, Behavior Knowledge Merge in Reinforced Agentic Models (RAM)"
    rule = "base + (unique: c_i tau_i * rescale_i; shared: mean of c_i tau_i)"

    threshold: float = 1e-5
    rescale_factor: float = 1.0
    count_scope: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("count_scope", self.count_scope, ("tensor", "global"))
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        object.__setattr__(self, "rescale_factor", float(self.rescale_factor))

    @property
    def blockable(self) -> bool:
        return self.count_scope == "global"  # global counts add up over blocks; per-tensor ones need the whole tensor

    def _thr(self) -> jax.Array:
        return jnp.asarray(self.threshold, jnp.float32)

    def statistics(
        self, names: Sequence[str], taus: Callable[[str], list[Any]], n_models: int, progress: ProgressFn
    ) -> Any:
        if self.count_scope != "global":
            return None
        changed, shared = [0] * n_models, [0] * n_models
        for name in progress(names, "stats pass (RAM overlap counts)", len(names)):
            ch, sh = ram_counts(taus(name), self._thr())
            changed = [a + b for a, b in zip(changed, ch)]
            shared = [a + b for a, b in zip(shared, sh)]
        return jnp.asarray(ram_rescales(changed, shared, self.rescale_factor), jnp.float32)

    def merge_leaf(self, base: jax.Array, taus: tuple[jax.Array, ...], stats: Any, coeffs: jax.Array) -> jax.Array:
        rescales = stats if stats is not None else _tensor_rescales(taus, self._thr(), self.rescale_factor)
        return combine_leaf(base, (ram_leaf(tuple(taus), coeffs, rescales, self._thr()),), jnp.ones((1,), jnp.float32))


@dataclass(frozen=True, kw_only=True)
class RamPlusMerge(RamMerge):
    """RAM+: RAM with unique changes rescaled by 1 + (r - 1) min(1, shared/unique), r = 1.2 (the authors')."""

    name = "ram_plus"
    rule = "RAM with unique changes times 1 + (r - 1) min(1, shared_i / unique_i)"

    rescale_factor: float = 1.2


def ram(
    taus: Sequence[Any],
    *,
    threshold: float = 1e-5,
    rescale_factor: float = 1.0,
    scope: Scope = "global",
    coefficients: Sequence[float] | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """RAM (rescale_factor=1) / RAM+ (rescale_factor r > 1, authors use 1.2) merged task vector; apply with combine.

    Overlap counts for the RAM+ factor are taken over the whole vector (scope="global", the authors' code) or per
    tensor. `coefficients` multiply each vector after the masks are computed (default 1).
    """
    taus = list(taus)
    if not taus:
        raise ValueError("ram needs at least one task vector")
    if scope not in ("tensor", "global"):
        raise ValueError(f"scope must be one of ('tensor', 'global'), got {scope!r}")
    w = jnp.asarray(list(coefficients) if coefficients is not None else [1.0] * len(taus), jnp.float32)
    if w.shape != (len(taus),):
        raise ValueError(f"got {len(taus)} task vectors but {w.shape[0]} coefficients")
    thr = jnp.asarray(threshold, jnp.float32)
    rows, chosen = _selected_leaves(taus, [f"taus[{i}]" for i in range(len(taus))], filter, exclude)
    if scope == "global":
        changed = [0] * len(taus)
        shared = [0] * len(taus)
        for leaves in chosen.values():
            ch, sh = ram_counts(leaves, thr)
            changed = [a + b for a, b in zip(changed, ch)]
            shared = [a + b for a, b in zip(shared, sh)]
        global_rescales = jnp.asarray(ram_rescales(changed, shared, rescale_factor), jnp.float32)
    out = []
    for path, leaves in rows:
        if path not in chosen:
            out.append(jnp.zeros_like(leaves[0]) if is_vector_leaf(leaves[0]) else leaves[0])
            continue
        rescales = global_rescales if scope == "global" else _tensor_rescales(leaves, thr, rescale_factor)
        out.append(ram_leaf(tuple(leaves), w, rescales, thr))
    return _rebuild(taus[0], out)
