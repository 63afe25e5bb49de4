"""Sparsification of task vectors and the interference-aware merges built on it.

Every method states its source and its exact rule here and in docs/merging.md:

- `topk`        magnitude top-k: keep the entries whose |x| is >= the k-th largest |x|, k = floor(density * n),
                per tensor or over the whole task vector (`scope`). Optional norm-preserving `rescale`.
- `dots_sparsify`  DoTS (Yuan et al. 2026, "Decouple before Integration"): per-tensor top-k, then ONE factor for the
                whole task vector so its L2 norm equals the dense vector's (the authors' code). Norm/scope selectable.
- `dare`        DARE (Yu et al. 2023, "Language models are Super Mario"): drop each entry with probability p, multiply
                the survivors by 1/(1-p) (or rescale to the original norm instead).
- `breadcrumbs` Model Breadcrumbs (Davari & Belilovsky 2023): along each row (last axis, as the authors' code) drop
                the `top_remove` fraction of largest |x|, keep the next `density` fraction, zero the rest. No rescale.
- `ties`        TIES-Merging (Yadav et al. 2023): trim each vector to its top-k, elect the sign of sum_i tau_i per entry,
                average only the entries that agree with it (disjoint mean). Returns the merged vector.
- `ram`         RAM / RAM+ (Yuan et al. 2026, "Behavior Knowledge Merge in Reinforced Agentic Models"): entries changed
                (|tau| > threshold) by one vector only are kept (RAM+: times 1 + (r-1) min(1, shared/unique)),
                entries changed by several are averaged over those that changed them.

Scope "global" statistics (top-k thresholds, norms, RAM overlap counts) are exact and computed on the host, tensor by
tensor (float64 sums, `math.fsum`; radix selection with 16-bit histograms for the global k-th largest |x|), so the
streaming merge reproduces them bit for bit and memory stays one tensor at a time. Scope "tensor" functions are
jit-able; scope "global" ones need concrete arrays.

Imports nothing from jax_cat.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from typing import Any, Literal, Union

import jax
import jax.numpy as jnp
import numpy as np

from merging._paths import PathSelector, is_vector_leaf, make_selector
from merging.task_vectors import check_compatible, compute_dtype

__all__ = [
    "Rescale", "TopK", "Dare", "Breadcrumbs", "Sparsifier",
    "topk", "dots_sparsify", "dare", "breadcrumbs", "rescale_to_norm", "sparsify", "ties", "ram",
    "global_norm", "num_kept", "ram_rescales",
]

Norm = Literal["l2", "l1", "linf"]
Scope = Literal["tensor", "global"]
_NORMS = ("l2", "l1", "linf")
_SCOPES = ("tensor", "global")
_CHUNK = 1 << 22  # host reductions walk tensors in chunks of 4M entries to bound temporaries


@dataclass(frozen=True)
class Rescale:
    """Norm-preserving rescale: scale kept entries so the chosen norm equals the dense vector's.

    scope="tensor": one factor per tensor; scope="global": one factor for the whole task vector (DoTS).
    """

    norm: Norm = "l2"
    scope: Scope = "global"

    def __post_init__(self) -> None:
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")


def _check_fraction(name: str, value: float, *, allow_zero: bool = False) -> None:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value <= 1):
        raise ValueError(f"{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value}")


def num_kept(fraction: float, n: int) -> int:
    """floor(fraction * n), computed on the decimal the user wrote (0.29 * 100 = 29, not 28)."""
    return min(n, math.floor(Fraction(repr(float(fraction))) * n))


# ---------------------------------------------------------------------------------------------------------------
# Host-side exact statistics
# ---------------------------------------------------------------------------------------------------------------
def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _host(x: Any) -> np.ndarray:
    if _is_traced(x):
        raise TypeError(
            "scope='global' statistics are exact host-side reductions and need concrete arrays: call this outside "
            "jax.jit, or use scope='tensor'"
        )
    return np.asarray(x).reshape(-1)


def _chunks(h: np.ndarray) -> Iterable[np.ndarray]:
    for start in range(0, h.size, _CHUNK):
        yield h[start : start + _CHUNK]


def norm_partial(x: Any, norm: Norm) -> float:
    """One tensor's contribution to a norm, in float64: sum x^2 (l2), sum |x| (l1), max |x| (linf)."""
    h = _host(x)
    parts: list[float] = []
    for c in _chunks(h):
        c64 = c.astype(np.float64)
        if norm == "l2":
            parts.append(float(np.dot(c64, c64)))
        elif norm == "l1":
            parts.append(float(np.abs(c64).sum()))
        else:
            parts.append(float(np.abs(c64).max()) if c64.size else 0.0)
    if norm == "linf":
        return max(parts, default=0.0)
    return math.fsum(parts)


def finish_norm(partials: Iterable[float], norm: Norm) -> float:
    """Combine per-tensor partials into the norm (order-independent: math.fsum / max)."""
    partials = list(partials)
    if norm == "linf":
        return max(partials, default=0.0)
    total = math.fsum(partials)
    return math.sqrt(total) if norm == "l2" else total


def _factor(original: float, kept: float) -> float:
    return original / kept if original > 0 and kept > 0 else 1.0


def kth_largest_abs(x: Any, k: int) -> Any:
    """The k-th largest |x| (1 <= k <= x.size), exact: radix select on the host for concrete arrays, sort under jit."""
    n = int(np.prod(x.shape))
    if _is_traced(x):
        return jnp.sort(jnp.abs(x).reshape(-1))[n - k]
    # Radix select, not np.partition: introselect degrades badly on many equal values (a sparse RL task vector
    # is mostly zeros: 9 s instead of 0.4 s for 33M entries).
    sel = _RadixSelect(k, compute_dtype(x.dtype))
    while not sel.done:
        sel.update(x)
        sel.finish_level()
    return sel.value()


class _RadixSelect:
    """Exact k-th largest |x| over many tensors: 16-bit digits of the float's bit pattern, one pass per digit.

    For non-negative IEEE floats the unsigned bit pattern orders like the value, so each pass histograms the next
    16 bits of the entries whose higher bits match the prefix chosen so far (65,536 counters of memory).
    """

    def __init__(self, k: int, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.uint = {4: np.uint32, 8: np.uint64}[self.dtype.itemsize]
        self.nbits = self.dtype.itemsize * 8
        self.levels = self.nbits // 16
        self.k = k
        self.level = 0
        self.prefix = 0
        self.hist = np.zeros(1 << 16, np.int64)

    def update(self, x: Any) -> None:
        h = _host(x)
        if np.dtype(compute_dtype(h.dtype)) != self.dtype:
            raise TypeError(f"global top-k over mixed dtypes ({h.dtype} vs {self.dtype}) is not supported")
        shift = self.nbits - 16 * (self.level + 1)
        for c in _chunks(h):
            u = np.abs(c.astype(self.dtype, copy=False)).view(self.uint)  # bf16/f16: exact in float32
            if self.level:
                u = u[(u >> self.uint(shift + 16)) == self.uint(self.prefix)]
            self.hist += np.bincount(((u >> self.uint(shift)) & self.uint(0xFFFF)).astype(np.intp), minlength=1 << 16)

    def finish_level(self) -> None:
        cum = np.cumsum(self.hist[::-1])
        j = int(np.searchsorted(cum, self.k))
        if j >= cum.size:
            raise RuntimeError("radix select ran out of entries (k larger than the number of entries)")
        self.k -= int(cum[j - 1]) if j else 0
        self.prefix = (self.prefix << 16) | (0xFFFF - j)
        self.level += 1
        self.hist[:] = 0

    @property
    def done(self) -> bool:
        return self.level == self.levels

    def value(self) -> Any:
        return np.array(self.prefix, dtype=self.uint).view(self.dtype)[()]


# ---------------------------------------------------------------------------------------------------------------
# Leaf kernels (shared with the streaming merge)
# ---------------------------------------------------------------------------------------------------------------
@jax.jit
def _keep_above(x: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.where(jnp.abs(x) >= t.astype(x.dtype), x, jnp.zeros((), x.dtype))


@jax.jit
def _scale_to(x: jax.Array, factor: jax.Array) -> jax.Array:
    c = compute_dtype(x.dtype)
    return (x.astype(c) * factor.astype(c)).astype(x.dtype)


@jax.jit
def _dare_raw(x: jax.Array, key: jax.Array, keep_prob: jax.Array) -> jax.Array:
    keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


@partial(jax.jit, static_argnames=("n_remove", "n_keep", "per_row"))
def _band_raw(x: jax.Array, n_remove: int, n_keep: int, per_row: bool) -> jax.Array:
    rows = x.reshape(-1, x.shape[-1]) if per_row else x.reshape(1, -1)
    order = jnp.argsort(-jnp.abs(rows), axis=-1, stable=True)  # descending |x|, ties by position
    ranks = jnp.argsort(order, axis=-1, stable=True)
    keep = (ranks >= n_remove) & (ranks < n_remove + n_keep)
    return jnp.where(keep, rows, jnp.zeros((), x.dtype)).reshape(x.shape)


def _jnp_norm(x: jax.Array, norm: Norm) -> jax.Array:
    a = jnp.abs(x.astype(compute_dtype(x.dtype)))
    if norm == "l2":
        return jnp.sqrt(jnp.sum(a * a))
    if norm == "l1":
        return jnp.sum(a)
    return jnp.max(a, initial=0.0)


def _local_factor(x: Any, raw: Any, norm: Norm) -> Any:
    """Per-tensor norm-preserving factor (float64 host stats when concrete, jnp under jit)."""
    if _is_traced(x) or _is_traced(raw):
        orig, kept = _jnp_norm(x, norm), _jnp_norm(raw, norm)
        return jnp.where((orig > 0) & (kept > 0), orig / jnp.where(kept > 0, kept, 1), 1.0)
    return _factor(finish_norm([norm_partial(x, norm)], norm), finish_norm([norm_partial(raw, norm)], norm))


def _apply_factor(raw: Any, factor: Any) -> Any:
    if not _is_traced(factor) and float(factor) == 1.0:
        return raw
    return _scale_to(raw, jnp.asarray(factor, compute_dtype(raw.dtype)))


def _path_key(seed: int, path: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode("utf-8")))


# ---------------------------------------------------------------------------------------------------------------
# Sparsifiers: one frozen config each; a _Plan holds the global statistics computed for one task vector.
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    threshold: Any = None  # global top-k threshold; None = not global
    keep_none: bool = False  # global top-k with k == 0
    factor: float | None = None  # global norm-preserving factor
    tensor_thresholds: dict[str, Any] = field(default_factory=dict)  # per-tensor top-k thresholds, found once


@dataclass(frozen=True)
class TopK:
    """Keep |x| >= k-th largest |x|, k = floor(density * n) over each tensor or the whole vector (`scope`)."""

    density: float
    scope: Scope = "tensor"
    rescale: Rescale | None = None

    def __post_init__(self) -> None:
        _check_fraction("density", self.density)
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")

    @property
    def needs_global_threshold(self) -> bool:
        return self.scope == "global" and self.density < 1

    def raw(self, x: Any, path: str, plan: _Plan) -> Any:
        if self.density >= 1:
            return x
        if self.scope == "global":
            if plan.keep_none:
                return jnp.zeros_like(x)
            return _keep_above(x, jnp.asarray(plan.threshold))
        n = int(np.prod(x.shape))
        k = num_kept(self.density, n)
        if n == 0:
            return x
        if k == 0:
            return jnp.zeros_like(x)
        if _is_traced(x):
            return _keep_above(x, jnp.asarray(kth_largest_abs(x, k)))
        if path not in plan.tensor_thresholds:  # the statistics pass and the merge pass select the same entries
            plan.tensor_thresholds[path] = kth_largest_abs(x, k)
        return _keep_above(x, jnp.asarray(plan.tensor_thresholds[path]))


@dataclass(frozen=True)
class Dare:
    """Drop each entry with probability `drop_rate` (seeded per tensor by crc32 of its path); rescale the survivors
    by 1/(1-p) ("inverse", DARE) or to the original norm (a `Rescale`), or not at all (None)."""

    drop_rate: float
    seed: int = 0
    rescale: Union[Literal["inverse"], Rescale, None] = "inverse"

    def __post_init__(self) -> None:
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if not (self.rescale is None or self.rescale == "inverse" or isinstance(self.rescale, Rescale)):
            raise ValueError(f"rescale must be 'inverse', a Rescale or None, got {self.rescale!r}")

    needs_global_threshold = False

    def raw(self, x: Any, path: str, plan: _Plan) -> Any:
        if self.drop_rate == 0:
            return x
        return _dare_raw(x, _path_key(self.seed, path), jnp.asarray(1.0 - self.drop_rate, jnp.float32))


@dataclass(frozen=True)
class Breadcrumbs:
    """Model Breadcrumbs: per row of the last axis (axis="last", the authors' code) or per tensor, drop the
    floor(top_remove*m) largest |x|, keep the next floor(density*m), zero the rest. 0-d leaves pass through."""

    density: float
    top_remove: float = 0.01
    axis: Literal["last", "tensor"] = "last"
    rescale: Rescale | None = None

    def __post_init__(self) -> None:
        _check_fraction("density", self.density)
        _check_fraction("top_remove", self.top_remove, allow_zero=True)
        if self.axis not in ("last", "tensor"):
            raise ValueError(f"axis must be 'last' or 'tensor', got {self.axis!r}")

    needs_global_threshold = False

    def raw(self, x: Any, path: str, plan: _Plan) -> Any:
        if x.ndim == 0 or x.size == 0:
            return x
        m = x.shape[-1] if self.axis == "last" else x.size
        return _band_raw(
            x, n_remove=num_kept(self.top_remove, m), n_keep=num_kept(self.density, m), per_row=self.axis == "last"
        )


Sparsifier = Union[TopK, Dare, Breadcrumbs]


def _norm_rescale(sp: Sparsifier) -> Rescale | None:
    return sp.rescale if isinstance(sp.rescale, Rescale) else None


def apply_sparsifier(sp: Sparsifier, x: Any, path: str, plan: _Plan) -> Any:
    """Sparsify one leaf (`x`: one tensor of a task vector) with its vector's precomputed `plan`."""
    raw = sp.raw(x, path, plan)
    if isinstance(sp, Dare) and sp.rescale == "inverse" and sp.drop_rate > 0:
        return _apply_factor(raw, 1.0 / (1.0 - sp.drop_rate))
    rescale = _norm_rescale(sp)
    if rescale is None:
        return raw
    if rescale.scope == "tensor":
        return _apply_factor(raw, _local_factor(x, raw, rescale.norm))
    return _apply_factor(raw, plan.factor)


ProgressFn = Callable[[Iterable[Any], str, int], Iterable[Any]]


def _threshold_pass_step(
    tensors: Sequence[Any],
    ks: Mapping[int, int],
    selectors: dict[int, "_RadixSelect"],
    orig_parts: dict[int, list[float]] | None,
    global_rescale: Mapping[int, Rescale],
) -> None:
    """One tensor of a radix-select pass (and, on the first pass, of the dense norms)."""
    for i, k in ks.items():
        if i not in selectors:
            selectors[i] = _RadixSelect(k, compute_dtype(tensors[i].dtype))
        selectors[i].update(tensors[i])
    if orig_parts is not None:
        for i, rescale in global_rescale.items():
            orig_parts[i].append(norm_partial(tensors[i], rescale.norm))


def _no_progress(it: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
    return it


def prepare(
    sparsifiers: Sequence[Sparsifier | None],
    names: Sequence[str],
    sizes: Mapping[str, int],
    get: Callable[[str], Sequence[Any]],
    progress: ProgressFn = _no_progress,
) -> list[_Plan]:
    """Compute the global statistics of several task vectors in as few passes over the tensors as possible.

    `get(name)` returns the tensor `name` of every vector (same order as `sparsifiers`). Passes: one per 16-bit
    digit when a global top-k threshold is needed (2 for float32), plus one for a global norm-preserving factor
    (merged into the first pass when no global threshold is needed).
    """
    plans = [_Plan() for _ in sparsifiers]
    total = sum(sizes[n] for n in names)
    ks: dict[int, int] = {}
    for i, sp in enumerate(sparsifiers):
        if sp is not None and sp.needs_global_threshold:
            k = num_kept(sp.density, total)
            if k == 0:
                plans[i].keep_none = True
            else:
                ks[i] = k
    global_rescale = {
        i: r for i, sp in enumerate(sparsifiers) if sp is not None and (r := _norm_rescale(sp)) and r.scope == "global"
    }
    orig_parts: dict[int, list[float]] = {i: [] for i in global_rescale}
    orig_done = False

    selectors: dict[int, _RadixSelect] = {}
    n_passes = 0
    while ks and (not selectors or not all(s.done for s in selectors.values())):
        n_passes += 1
        for name in progress(names, f"stats pass {n_passes} (global top-k threshold)", len(names)):
            _threshold_pass_step(get(name), ks, selectors, None if orig_done else orig_parts, global_rescale)
        orig_done = True
        for sel in selectors.values():
            sel.finish_level()
    for i, sel in selectors.items():
        plans[i].threshold = sel.value()

    if global_rescale:
        n_passes += 1
        kept_parts: dict[int, list[float]] = {i: [] for i in global_rescale}
        for name in progress(names, f"stats pass {n_passes} (global norms)", len(names)):
            tensors = get(name)  # (one tensor per vector; released before the next name is read)
            for i, rescale in global_rescale.items():
                if not orig_done:
                    orig_parts[i].append(norm_partial(tensors[i], rescale.norm))
                kept_parts[i].append(norm_partial(sparsifiers[i].raw(tensors[i], name, plans[i]), rescale.norm))
            del tensors
        for i, rescale in global_rescale.items():
            plans[i].factor = _factor(finish_norm(orig_parts[i], rescale.norm), finish_norm(kept_parts[i], rescale.norm))
    return plans


# ---------------------------------------------------------------------------------------------------------------
# Pytree API
# ---------------------------------------------------------------------------------------------------------------
def _selected_leaves(trees: Sequence[Any], names: Sequence[str], filter: PathSelector, exclude: PathSelector):
    selected = make_selector(filter, exclude)
    rows = check_compatible(list(trees), list(names), check_dtype=False)
    chosen = {path: leaves for path, leaves in rows if is_vector_leaf(leaves[0]) and selected(path)}
    return rows, chosen


def _rebuild(like: Any, leaves: list[Any]) -> Any:
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def sparsify(tau: Any, sparsifier: Sparsifier, *, filter: PathSelector = None, exclude: PathSelector = None) -> Any:
    """Apply one `TopK` / `Dare` / `Breadcrumbs` config to a task vector; unselected leaves pass through."""
    rows, chosen = _selected_leaves([tau], ["tau"], filter, exclude)
    names = list(chosen)
    (plan,) = prepare([sparsifier], names, {n: int(np.prod(chosen[n][0].shape)) for n in names}, lambda n: chosen[n])
    return _rebuild(tau, [apply_sparsifier(sparsifier, leaves[0], p, plan) if p in chosen else leaves[0]
                          for p, leaves in rows])


def topk(
    tau: Any,
    density: float,
    *,
    scope: Scope = "tensor",
    rescale: Rescale | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """Keep the top `density` fraction of entries by magnitude (per tensor or over the whole vector)."""
    return sparsify(tau, TopK(density, scope, rescale), filter=filter, exclude=exclude)


def dots_sparsify(
    tau: Any,
    density: float = 0.3,
    *,
    norm: Norm = "l2",
    scope: Scope = "global",
    topk_scope: Scope = "tensor",
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """DoTS selective sparsification: top-k per tensor, then rescale so the vector's `norm` is unchanged
    (one global factor by default, as the DoTS code does; `scope="tensor"` for one factor per tensor)."""
    return sparsify(tau, TopK(density, topk_scope, Rescale(norm, scope)), filter=filter, exclude=exclude)


def dare(
    tau: Any,
    drop_rate: float,
    *,
    seed: int = 0,
    rescale: Union[Literal["inverse"], Rescale, None] = "inverse",
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """DARE: random drop with probability `drop_rate`, survivors times 1/(1-p) (unbiased) or norm-rescaled."""
    return sparsify(tau, Dare(drop_rate, seed, rescale), filter=filter, exclude=exclude)


def breadcrumbs(
    tau: Any,
    density: float,
    top_remove: float = 0.01,
    *,
    axis: Literal["last", "tensor"] = "last",
    rescale: Rescale | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """Model Breadcrumbs magnitude band: drop the largest `top_remove` and the smallest, keep `density` in between."""
    return sparsify(tau, Breadcrumbs(density, top_remove, axis, rescale), filter=filter, exclude=exclude)


def global_norm(tree: Any, norm: Norm = "l2", *, filter: PathSelector = None, exclude: PathSelector = None) -> float:
    """Norm of a whole pytree seen as one flat vector (float64 host reduction)."""
    _, chosen = _selected_leaves([tree], ["tree"], filter, exclude)
    return finish_norm((norm_partial(v[0], norm) for v in chosen.values()), norm)


def rescale_to_norm(
    sparse: Any,
    reference: Any,
    *,
    norm: Norm = "l2",
    scope: Scope = "global",
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """Scale `sparse` so its norm equals `reference`'s: one factor per tensor or one for the whole tree."""
    Rescale(norm, scope)
    rows, chosen = _selected_leaves([sparse, reference], ["sparse", "reference"], filter, exclude)
    if scope == "global":
        factor = _factor(
            finish_norm((norm_partial(v[1], norm) for v in chosen.values()), norm),
            finish_norm((norm_partial(v[0], norm) for v in chosen.values()), norm),
        )
    out = []
    for path, (s, r) in rows:
        if path not in chosen:
            out.append(s)
        else:
            out.append(_apply_factor(s, factor if scope == "global" else _local_factor(r, s, norm)))
    return _rebuild(sparse, out)


# --- TIES ------------------------------------------------------------------------------------------------------
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


def ties(
    taus: Sequence[Any],
    density: float = 0.2,
    *,
    scope: Scope = "tensor",
    weights: Sequence[float] | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """TIES-Merging's merged task vector: trim (top-k), elect sign, disjoint mean. Apply as combine(base, [m], [lam]).

    `scope="tensor"` trims each tensor (mergekit); `scope="global"` trims over the whole vector (the authors' code).
    `weights` multiply each trimmed vector before the election (default 1). Unselected leaves are zero.
    """
    taus = list(taus)
    if not taus:
        raise ValueError("ties needs at least one task vector")
    w = jnp.asarray(list(weights) if weights is not None else [1.0] * len(taus), jnp.float32)
    if w.shape != (len(taus),):
        raise ValueError(f"got {len(taus)} task vectors but {w.shape[0]} weights")
    rows, chosen = _selected_leaves(taus, [f"taus[{i}]" for i in range(len(taus))], filter, exclude)
    names = list(chosen)
    trims = [TopK(density, scope)] * len(taus)
    plans = prepare(trims, names, {n: int(np.prod(chosen[n][0].shape)) for n in names}, lambda n: chosen[n])
    out = []
    for path, leaves in rows:
        if path not in chosen:
            out.append(jnp.zeros_like(leaves[0]) if is_vector_leaf(leaves[0]) else leaves[0])
            continue
        trimmed = tuple(apply_sparsifier(sp, x, path, plan) for sp, x, plan in zip(trims, leaves, plans))
        out.append(ties_leaf(trimmed, w))
    return _rebuild(taus[0], out)


# --- RAM / RAM+ --------------------------------------------------------------------------------------------------
@jax.jit
def ram_counts_leaf(taus: tuple[jax.Array, ...], threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per vector: (#entries it changed (|tau| > threshold), #of those also changed by another vector)."""
    masks = [jnp.abs(t) > threshold.astype(t.dtype) for t in taus]
    count = sum(m.astype(jnp.int32) for m in masks)
    changed = jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in masks])
    shared = jnp.stack([jnp.sum(m & (count >= 2), dtype=jnp.int32) for m in masks])
    return changed, shared


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


def ram(
    taus: Sequence[Any],
    *,
    threshold: float = 1e-5,
    rescale_factor: float = 1.0,
    scope: Scope = "global",
    weights: Sequence[float] | None = None,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """RAM (rescale_factor=1) / RAM+ (rescale_factor r > 1, authors use 1.2) merged task vector; apply with combine.

    Overlap counts for the RAM+ factor are taken over the whole vector (scope="global", the authors' code) or per
    tensor. `weights` multiply each vector after the masks are computed (default 1).
    """
    taus = list(taus)
    if not taus:
        raise ValueError("ram needs at least one task vector")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    w = jnp.asarray(list(weights) if weights is not None else [1.0] * len(taus), jnp.float32)
    if w.shape != (len(taus),):
        raise ValueError(f"got {len(taus)} task vectors but {w.shape[0]} weights")
    thr = jnp.asarray(threshold, jnp.float32)
    rows, chosen = _selected_leaves(taus, [f"taus[{i}]" for i in range(len(taus))], filter, exclude)
    if scope == "global":
        changed = [0] * len(taus)
        shared = [0] * len(taus)
        for leaves in chosen.values():
            ch, sh = ram_counts_leaf(tuple(leaves), thr)
            changed = [a + int(b) for a, b in zip(changed, np.asarray(ch))]
            shared = [a + int(b) for a, b in zip(shared, np.asarray(sh))]
        global_rescales = jnp.asarray(ram_rescales(changed, shared, rescale_factor), jnp.float32)
    out = []
    for path, leaves in rows:
        if path not in chosen:
            out.append(jnp.zeros_like(leaves[0]) if is_vector_leaf(leaves[0]) else leaves[0])
            continue
        if scope == "global":
            rescales = global_rescales
        else:
            ch, sh = ram_counts_leaf(tuple(leaves), thr)
            rescales = ram_rescales(ch, sh, rescale_factor, xp=jnp)
        out.append(ram_leaf(tuple(leaves), w, rescales, thr))
    return _rebuild(taus[0], out)
