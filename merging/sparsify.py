"""Sparsifiers of task vectors, and the shared top-k and norm-preserving rescale pieces every merge method uses.

Each sparsifier states its source and its exact rule here and in docs/merging.md (the merges built on them, TIES
and RAM among them, live one per module in `merging.methods`):

- `topk`        magnitude top-k: keep exactly k = floor(density * n) entries of largest |x|, per tensor or over the
                whole task vector (`scope`); entries tied at the k-th largest |x| are taken in index order (tensor
                names in natural order, then flat index), as mergekit keeps exactly k. `tie_break="keep_all"` keeps
                every entry tied with the k-th largest instead (the DoTS authors' `keep_top_k_abs`: may keep more
                than k on bf16 weights, where equal values are common). Optional norm-preserving `rescale`.
- `dots_sparsify`  DoTS (Yuan et al. 2026, "Decouple before Integration"): per-tensor top-k, then ONE factor for the
                whole task vector so its L2 norm equals the dense vector's (the authors' code). Norm/scope selectable.
- `dare`        DARE (Yu et al. 2023, "Language models are Super Mario"): drop each entry with probability p, multiply
                the survivors by 1/(1-p) (or rescale to the original norm instead).
- `breadcrumbs` Model Breadcrumbs (Davari & Belilovsky 2023): along each row (last axis, as the authors' code) drop
                the `top_remove` fraction of largest |x|, keep the next `density` fraction, zero the rest. No rescale.

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

from merging._paths import PathSelector, is_vector_leaf, make_selector, natural_key
from merging.task_vectors import check_compatible, compute_dtype

__all__ = [
    "Rescale", "TopK", "Dare", "Breadcrumbs", "Sparsifier",
    "topk", "dots_sparsify", "dare", "breadcrumbs", "rescale_to_norm", "sparsify",
    "global_norm", "num_kept", "kth_largest_abs", "Block", "rows_per_chunk",
]
# `ties`, `ram`, `ram_rescales` (and their leaf kernels) are merges: they live in merging.methods.ties / .ram
# (`merging.ties`, `merging.ram`).

Norm = Literal["l2", "l1", "linf"]
Scope = Literal["tensor", "global"]
TieBreak = Literal["index", "keep_all"]
_TIE_BREAKS = ("index", "keep_all")
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


def _chunks(h: np.ndarray, size: int = _CHUNK) -> Iterable[np.ndarray]:
    for start in range(0, h.size, size):
        yield h[start : start + size]


def rows_per_chunk(shape: Sequence[int]) -> int:
    """Rows (entries of axis 0) per host-reduction chunk of a tensor of `shape` (>= 2-D): whole rows, at most 4M
    entries. A row block of a multiple of this many rows splits into the same chunks as the whole tensor, so norms
    summed over blocks equal the whole tensor's bit for bit."""
    row = int(np.prod(shape[1:]))
    return max(1, _CHUNK // row) if row else 1


def _chunk_len(shape: Sequence[int]) -> int:
    if len(shape) >= 2 and int(np.prod(shape[1:])):
        return rows_per_chunk(shape) * int(np.prod(shape[1:]))
    return _CHUNK


def norm_parts(x: Any, norm: Norm) -> list[float]:
    """One tensor's norm partials, one per chunk of whole rows, in float64: sum x^2 (l2), sum |x| (l1), max |x|
    (linf). `finish_norm` of the partials of all tensors (or of all row blocks of a tensor) is exact and
    order-independent (math.fsum)."""
    h = _host(x)
    parts: list[float] = []
    for c in _chunks(h, _chunk_len(np.shape(x))):
        c64 = c.astype(np.float64)
        if norm == "l2":
            parts.append(float(np.dot(c64, c64)))
        elif norm == "l1":
            parts.append(float(np.abs(c64).sum()))
        else:
            parts.append(float(np.abs(c64).max()) if c64.size else 0.0)
    return parts


def norm_partial(x: Any, norm: Norm) -> float:
    """One tensor's contribution to a norm, in float64: sum x^2 (l2), sum |x| (l1), max |x| (linf)."""
    parts = norm_parts(x, norm)
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


class Block(str):
    """Rows [start, stop) of the tensor `tensor` (full `shape`), block `index` of `count`: the key under which the
    streamed merge handles a very large tensor piece by piece. As a string it sorts right after its tensor's name
    and before any other (natural order), so statistics over many tensors visit blocks in flat-index order."""

    tensor: str
    index: int
    count: int
    start: int
    stop: int
    shape: tuple[int, ...]

    def __new__(cls, tensor: str, index: int, count: int, start: int, stop: int, shape: Sequence[int]) -> "Block":
        self = super().__new__(cls, f"{tensor}\x00{index:06d}")
        self.tensor, self.index, self.count, self.start, self.stop = tensor, index, count, start, stop
        self.shape = tuple(int(d) for d in shape)
        return self

    def __reduce__(self) -> Any:
        return (Block, (self.tensor, self.index, self.count, self.start, self.stop, self.shape))


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


def _kth_and_quota(x: Any, k: int) -> tuple[Any, int | None]:
    """(k-th largest |x|, how many entries equal to it belong to the top k, None = all of them); concrete x."""
    sel = _RadixSelect(k, compute_dtype(x.dtype))
    while not sel.done:
        sel.update(x)
        sel.finish_level()
    return sel.value(), sel.tie_quota


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
        self.equal = int(self.hist[0xFFFF - j])  # after the last level: entries equal to the k-th largest
        self.prefix = (self.prefix << 16) | (0xFFFF - j)
        self.level += 1
        self.hist[:] = 0

    @property
    def done(self) -> bool:
        return self.level == self.levels

    @property
    def tie_quota(self) -> int | None:
        """After the last level: how many of the entries equal to the k-th largest are among the top k, or None
        when all of them are (or the value is 0: keeping a zero or not changes nothing)."""
        if self.k == self.equal or self.value() == 0:
            return None
        return self.k

    def value(self) -> Any:
        return np.array(self.prefix, dtype=self.uint).view(self.dtype)[()]


# ---------------------------------------------------------------------------------------------------------------
# Leaf kernels (shared with the streaming merge)
# ---------------------------------------------------------------------------------------------------------------
@jax.jit
def _keep_above(x: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.where(jnp.abs(x) >= t.astype(x.dtype), x, jnp.zeros((), x.dtype))


@jax.jit
def _keep_top_exact(x: jax.Array, t: jax.Array, quota: jax.Array) -> jax.Array:
    """Keep |x| > t, and the first `quota` entries (flat index order) with |x| == t: exactly k entries in all."""
    a = jnp.abs(x)
    t = t.astype(x.dtype)
    eq = (a == t).reshape(-1)
    rank = jnp.cumsum(eq, dtype=jnp.uint32).reshape(x.shape)  # uint32: exact up to 4.29e9 entries per tensor
    keep = (a > t) | ((a == t) & (rank <= quota.astype(jnp.uint32)))
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


@partial(jax.jit, static_argnames=("k",))
def _keep_topk_traced(x: jax.Array, k: int) -> jax.Array:
    """Exactly-k top-k under jit (sort for the threshold; ties by flat index)."""
    t = jnp.sort(jnp.abs(x).reshape(-1))[x.size - k]
    quota = k - jnp.sum(jnp.abs(x) > t, dtype=jnp.int32)
    return _keep_top_exact(x, t, quota)


@jax.jit
def _keep_strictly_above(x: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.where(jnp.abs(x) > t.astype(x.dtype), x, jnp.zeros((), x.dtype))


def _keep_top_first(x: Any, t: Any, quota: int) -> tuple[Any, int]:
    """(x with |x| > t and the first `quota` entries (flat index order) with |x| == t kept, the rest zeroed; how
    many entries of x equal t in magnitude). Concrete x: the tied entries are found on the host in one pass (no
    cumulative sum over the whole tensor, which XLA on CPU runs ~20x slower)."""
    t = np.asarray(t)
    h = _host(x)
    tied: list[np.ndarray] = []
    n_equal = 0
    for start in range(0, h.size, _CHUNK):
        idx = np.flatnonzero(np.abs(h[start : start + _CHUNK].astype(t.dtype, copy=False)) == t)
        if n_equal < quota and idx.size:
            tied.append(idx[: quota - n_equal] + start)
        n_equal += idx.size
    kept = _keep_strictly_above(x, jnp.asarray(t))
    if tied:
        idx = np.concatenate(tied)
        flat = np.array(kept).reshape(-1)
        flat[idx] = h[idx]
        kept = jnp.asarray(flat.reshape(np.shape(x)))
    return kept, n_equal


def _keep_top(x: Any, t: Any, quota: int | None) -> Any:
    if quota is None:
        return _keep_above(x, jnp.asarray(t))
    return _keep_top_first(x, t, quota)[0]


def _keep_top_in_block(x: Any, t: Any, quota: int | None, block: "Block", plan: "_Plan") -> Any:
    """`_keep_top` of one row block of a tensor whose (threshold, tie quota) hold for the whole tensor: the tied
    entries kept are the first `quota` of the tensor in flat order (blocks are visited in order in every pass)."""
    if quota is None:
        return _keep_above(x, jnp.asarray(t))
    seen = 0 if block.index == 0 else plan.block_ties[block.tensor]
    kept, n_equal = _keep_top_first(x, t, max(0, quota - seen))
    plan.block_ties[block.tensor] = seen + n_equal
    return kept


@jax.jit
def _scale_to(x: jax.Array, factor: jax.Array) -> jax.Array:
    c = compute_dtype(x.dtype)
    return (x.astype(c) * factor.astype(c)).astype(x.dtype)


@jax.jit
def _dare_raw(x: jax.Array, key: jax.Array, keep_prob: jax.Array) -> jax.Array:
    keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


@partial(jax.jit, static_argnames=("shape",))
def _dare_mask(key: jax.Array, keep_prob: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bernoulli(key, keep_prob, shape)


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
    tie_quota: dict[str, int] | None = None  # global exact top-k: tensors keeping only some entries equal to threshold
    factor: float | None = None  # global norm-preserving factor
    tensor_thresholds: dict[str, Any] = field(default_factory=dict)  # per-tensor (threshold, tie quota), found once
    block_ties: dict[str, int] = field(default_factory=dict)  # row blocks: tied entries seen in earlier blocks
    tensor_factors: dict[str, float] = field(default_factory=dict)  # row blocks: per-tensor rescale factor
    dare_mask: tuple[str, Any] | None = None  # row blocks: the whole tensor's DARE keep mask (bool), while in use


@dataclass(frozen=True)
class TopK:
    """Keep the k = floor(density * n) largest |x| of each tensor or of the whole vector (`scope`).

    tie_break="index" (default): exactly k entries; among entries equal to the k-th largest |x| the first ones in
    index order are kept (tensors in natural name order for scope="global", then flat index), as mergekit keeps
    exactly k. tie_break="keep_all": every entry with |x| >= the k-th largest (the DoTS authors' keep_top_k_abs).
    """

    density: float
    scope: Scope = "tensor"
    rescale: Rescale | None = None
    tie_break: TieBreak = "index"

    def __post_init__(self) -> None:
        _check_fraction("density", self.density)
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")
        if self.tie_break not in _TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {_TIE_BREAKS}, got {self.tie_break!r}")

    @property
    def needs_global_threshold(self) -> bool:
        """Whether one threshold over the whole vector must be found before any tensor is sparsified (global scope)."""
        return self.scope == "global" and self.density < 1

    def raw(self, x: Any, path: str, plan: _Plan) -> Any:
        """`x` (the tensor at `path`) with all but its top entries zeroed, before any rescale (`plan`: global stats)."""
        if self.density >= 1:
            return x
        if self.scope == "global":
            if plan.keep_none:
                return jnp.zeros_like(x)
            return _keep_top(x, plan.threshold, None if plan.tie_quota is None else plan.tie_quota.get(path))
        n = int(np.prod(path.shape if isinstance(path, Block) else x.shape))
        k = num_kept(self.density, n)
        if n == 0:
            return x
        if k == 0:
            return jnp.zeros_like(x)
        if isinstance(path, Block):  # threshold and tie quota of the whole tensor, found by `prepare`
            return _keep_top_in_block(x, *plan.tensor_thresholds[path.tensor], path, plan)
        if _is_traced(x):
            if self.tie_break == "index":
                return _keep_topk_traced(x, k)
            return _keep_above(x, jnp.asarray(kth_largest_abs(x, k)))
        if path not in plan.tensor_thresholds:  # the statistics pass and the merge pass select the same entries
            t, quota = _kth_and_quota(x, k)
            plan.tensor_thresholds[path] = (t, quota if self.tie_break == "index" else None)
        return _keep_top(x, *plan.tensor_thresholds[path])


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
        """`x` (the tensor at `path`) with entries dropped at the drop rate (mask seeded by path), before rescale."""
        if self.drop_rate == 0:
            return x
        keep_prob = jnp.asarray(1.0 - self.drop_rate, jnp.float32)
        if isinstance(path, Block):  # the whole tensor's mask (1 byte per entry), sliced: the same draws
            if path.index == 0 or plan.dare_mask is None or plan.dare_mask[0] != path.tensor:
                mask = _dare_mask(_path_key(self.seed, path.tensor), keep_prob, path.shape)
                plan.dare_mask = (path.tensor, np.asarray(mask))
            mask = plan.dare_mask[1][path.start : path.stop]
            if path.index == path.count - 1:
                plan.dare_mask = None
            return jnp.where(jnp.asarray(mask), x, jnp.zeros((), x.dtype))
        return _dare_raw(x, _path_key(self.seed, path), keep_prob)


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
        """`x` with its largest entries dropped and all but the next band zeroed (per row or whole); no rescale."""
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
        if isinstance(path, Block):
            return _apply_factor(raw, plan.tensor_factors[path.tensor])
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
            orig_parts[i].extend(norm_parts(tensors[i], rescale.norm))


def _no_progress(it: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
    return it


def blockable(sp: Sparsifier | None) -> bool:
    """Whether `sp` gives the same result on a tensor split into row blocks (`Block`) as on the whole tensor:
    everything but Breadcrumbs over a whole tensor (`axis="tensor"`, one sort of the whole tensor)."""
    return not (isinstance(sp, Breadcrumbs) and sp.axis != "last")


def _block_thresholds(
    sparsifiers: Sequence[Sparsifier | None], names: Sequence[str], get: Callable[[str], Sequence[Any]],
    plans: list[_Plan], progress: ProgressFn,
) -> None:
    """Per-tensor top-k (threshold, tie quota) of each tensor split into `Block`s: a radix select over its blocks,
    equal to `_kth_and_quota` on the whole tensor (the digit histograms add up)."""
    blocked: dict[str, list[Block]] = {}
    for n in names:
        if isinstance(n, Block):
            blocked.setdefault(n.tensor, []).append(n)
    per_tensor = [i for i, sp in enumerate(sparsifiers) if isinstance(sp, TopK) and sp.scope == "tensor"
                  and sp.density < 1]
    if not blocked or not per_tensor:
        return
    for tensor, blocks in blocked.items():
        n = int(np.prod(blocks[0].shape))
        ks = {i: k for i in per_tensor if (k := num_kept(sparsifiers[i].density, n)) > 0}
        selectors: dict[int, _RadixSelect] = {}
        while ks and (not selectors or not all(sel.done for sel in selectors.values())):
            for block in progress(blocks, f"stats pass (top-k of {tensor}, in row blocks)", len(blocks)):
                tensors = get(block)
                for i, k in ks.items():
                    selectors.setdefault(i, _RadixSelect(k, compute_dtype(tensors[i].dtype))).update(tensors[i])
                del tensors
            for sel in selectors.values():
                sel.finish_level()
        for i, sel in selectors.items():
            quota = sel.tie_quota if sparsifiers[i].tie_break == "index" else None
            plans[i].tensor_thresholds[tensor] = (sel.value(), quota)


def _block_factors(
    sparsifiers: Sequence[Sparsifier | None], names: Sequence[str], get: Callable[[str], Sequence[Any]],
    plans: list[_Plan], progress: ProgressFn,
) -> None:
    """Per-tensor rescale factor of each tensor split into `Block`s, from the norm partials of its blocks (the same
    chunks as the whole tensor's, summed exactly): equal to `_local_factor` on the whole tensor."""
    local = {i: r for i, sp in enumerate(sparsifiers) if sp is not None and (r := _norm_rescale(sp))
             and r.scope == "tensor"}
    blocked: dict[str, list[Block]] = {}
    for n in names:
        if isinstance(n, Block):
            blocked.setdefault(n.tensor, []).append(n)
    if not blocked or not local:
        return
    for tensor, blocks in blocked.items():
        dense: dict[int, list[float]] = {i: [] for i in local}
        kept: dict[int, list[float]] = {i: [] for i in local}
        for block in progress(blocks, f"stats pass (norms of {tensor}, in row blocks)", len(blocks)):
            tensors = get(block)
            for i, rescale in local.items():
                dense[i].extend(norm_parts(tensors[i], rescale.norm))
                kept[i].extend(norm_parts(sparsifiers[i].raw(tensors[i], block, plans[i]), rescale.norm))
            del tensors
        for i, rescale in local.items():
            plans[i].tensor_factors[tensor] = _factor(finish_norm(dense[i], rescale.norm),
                                                      finish_norm(kept[i], rescale.norm))


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
    (merged into the first pass when no global threshold is needed). `names` may hold `Block`s (row blocks of a
    large tensor, consecutive and in order): their tensor's per-tensor top-k threshold is found first, over its
    blocks (one pass per digit over that tensor only).
    """
    plans = [_Plan() for _ in sparsifiers]
    _block_thresholds(sparsifiers, names, get, plans, progress)
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
    ties_to_break = {
        i: sel.tie_quota for i, sel in selectors.items()
        if sparsifiers[i].tie_break == "index" and sel.tie_quota is not None
    }
    if ties_to_break:  # exactly k: hand the tied entries' quota to tensors in natural name order, then flat index
        n_passes += 1
        remaining = dict(ties_to_break)
        quotas: dict[int, dict[str, int]] = {i: {} for i in ties_to_break}
        ordered = sorted(names, key=natural_key)
        for name in progress(ordered, f"stats pass {n_passes} (top-k ties at the threshold)", len(ordered)):
            tensors = get(name)
            for i in ties_to_break:
                t = np.asarray(plans[i].threshold)
                h = _host(tensors[i])
                equal = sum(int(np.count_nonzero(np.abs(c.astype(t.dtype, copy=False)) == t)) for c in _chunks(h))
                if equal and remaining[i] < equal:  # this tensor keeps only some of its tied entries
                    quotas[i][name] = remaining[i]
                remaining[i] -= min(equal, remaining[i])
            del tensors
        for i, q in quotas.items():
            plans[i].tie_quota = q

    if global_rescale:
        n_passes += 1
        kept_parts: dict[int, list[float]] = {i: [] for i in global_rescale}
        for name in progress(names, f"stats pass {n_passes} (global norms)", len(names)):
            tensors = get(name)  # (one tensor per vector; released before the next name is read)
            for i, rescale in global_rescale.items():
                if not orig_done:
                    orig_parts[i].extend(norm_parts(tensors[i], rescale.norm))
                kept_parts[i].extend(norm_parts(sparsifiers[i].raw(tensors[i], name, plans[i]), rescale.norm))
            del tensors
        for i, rescale in global_rescale.items():
            plans[i].factor = _factor(finish_norm(orig_parts[i], rescale.norm), finish_norm(kept_parts[i], rescale.norm))
    _block_factors(sparsifiers, names, get, plans, progress)
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
    tie_break: TieBreak = "index",
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """Keep the top `density` fraction of entries by magnitude (per tensor or over the whole vector).

    Exactly floor(density * n) entries, ties at the threshold taken in index order (`tie_break="keep_all"`: every
    entry tied with the k-th largest, the DoTS authors' rule)."""
    return sparsify(tau, TopK(density, scope, rescale, tie_break), filter=filter, exclude=exclude)


def dots_sparsify(
    tau: Any,
    density: float = 0.3,
    *,
    norm: Norm = "l2",
    scope: Scope = "global",
    topk_scope: Scope = "tensor",
    tie_break: TieBreak = "index",
    rescale: bool = True,
    filter: PathSelector = None,
    exclude: PathSelector = None,
) -> Any:
    """DoTS selective sparsification: top-k per tensor, then rescale so the vector's `norm` is unchanged
    (one global factor by default, as the DoTS code does; `scope="tensor"` for one factor per tensor;
    `rescale=False` for the authors' shipped configs, which keep the sparse vector as is). Exactly k entries by
    default; `tie_break="keep_all"` keeps every entry tied with the k-th largest (the authors' keep_top_k_abs)."""
    sparsifier = TopK(density, topk_scope, Rescale(norm, scope) if rescale else None, tie_break)
    return sparsify(tau, sparsifier, filter=filter, exclude=exclude)


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
