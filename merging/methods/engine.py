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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from merging._checks import check_finite, check_float64
from merging._paths import is_vector_leaf, make_selector
from merging.lora_adapter import LoRAAdapter, adapted_leaves, dense_leaf
from merging.methods.base import MergeMethod
from merging.sparsify import Block, ProgressFn, _no_progress, apply_sparsifier, blockable, prepare, rows_per_chunk
from merging.task_vectors import check_compatible, compute_dtype, tv_leaf

__all__ = ["merge", "merge_tensors", "RoundingCount", "row_blocks"]


def tau_dtype(base_dtype: Any, finetuned_dtypes: Sequence[Any]) -> Any:
    """The dtype task vectors are taken in: float32, or the widest input float type (float64 under x64)."""
    out = compute_dtype(base_dtype)
    for d in finetuned_dtypes:
        out = jnp.promote_types(out, compute_dtype(d))
    return jnp.dtype(out)


class RoundingCount:
    """How many entries a merge changed (float32 result != base) and how many of those the output dtype rounds
    back to the base's value (the update is lost): the check behind the precision warning."""

    def __init__(self) -> None:
        self.changed = 0
        self.lost = 0

    def add(self, merged: Any, base: Any, out: Any) -> None:
        """Count one leaf's changed and rounded-away entries (merged in float32, base, output in the base's dtype)."""
        changed, lost = _rounding_counts(merged, base, out)
        self.changed += int(np.asarray(changed).sum(dtype=np.int64))
        self.lost += int(np.asarray(lost).sum(dtype=np.int64))

    @property
    def fraction(self) -> float:
        """lost / changed (0 when nothing changed)."""
        return self.lost / self.changed if self.changed else 0.0


@jax.jit
def _rounding_counts(merged: jax.Array, base: jax.Array, out: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row of the last axis (int32: a row never nears 2^31 entries): entries with merged != base, and those of
    them whose output value equals the base's in the output dtype."""
    changed = merged != base.astype(merged.dtype)
    lost = changed & (out == base.astype(out.dtype))
    rows = lambda m: m.reshape(-1, m.shape[-1]) if m.ndim >= 2 else m.reshape(1, -1)  # noqa: E731
    return jnp.sum(rows(changed), axis=-1, dtype=jnp.int32), jnp.sum(rows(lost), axis=-1, dtype=jnp.int32)


def row_blocks(name: str, shape: Sequence[int], block_bytes: int | None) -> list[Block] | None:
    """Row blocks of a tensor whose float32 copy exceeds `block_bytes` (None: not split; needs >= 2 dims). Blocks
    hold a multiple of `rows_per_chunk(shape)` rows, so norm partials match the whole tensor's exactly."""
    shape = tuple(int(d) for d in shape)
    if block_bytes is None or len(shape) < 2 or int(np.prod(shape)) * 4 <= block_bytes:
        return None
    unit = rows_per_chunk(shape)
    row_bytes = int(np.prod(shape[1:])) * 4
    rows = max(unit, (block_bytes // (row_bytes * unit)) * unit)
    if rows >= shape[0]:
        return None
    starts = list(range(0, shape[0], rows))
    return [Block(name, i, len(starts), a, min(a + rows, shape[0]), shape) for i, a in enumerate(starts)]


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
    out_dtype: Any = None,
    rounding: RoundingCount | None = None,
    block_bytes: int | None = None,
    get_base_rows: Callable[[str, int, int], Any] | None = None,
    get_finetuned_rows: Callable[[int, str, int, int], Any] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield (name, merged tensor) in `names` order; runs the statistics passes `spec` needs first.

    Tensors that are not selected by spec.filter/exclude, or not floating point, are yielded as the base's.
    Every float tensor read is checked for NaN/Inf once (`NonFiniteError` naming it and `labels[j]`, default
    "base", "models[i]") unless `allow_nonfinite`.

    Merged values are computed in float32 (float64 for float64 inputs under x64) and cast once to `out_dtype`
    (None: the base tensor's dtype; float tensors only), rounding to nearest even; `rounding` counts the changed
    entries that the cast puts back on the base's value. With `block_bytes` (and the row getters
    `get_base_rows(name, start, stop)` / `get_finetuned_rows(i, name, start, stop)`), a float tensor whose float32
    copy is larger is read, merged and yielded as consecutive row blocks under the same name, when the method
    allows it (`MergeMethod.blockable`), with a result equal bit for bit to the whole tensor's.
    """
    if not isinstance(spec, MergeMethod):
        raise TypeError(f"spec must be a merge method's settings (e.g. DotsMerge(...)), got {spec!r}")
    labels = list(labels) if labels is not None else ["base"] + [f"models[{i}]" for i in range(n_models)]
    select = make_selector(spec.filter, spec.exclude)
    vector_names = [n for n in names if is_float(n) and select(n)]
    sparsifiers = [spec.sparsifier(i) for i in range(n_models)]
    can_block = (get_base_rows is not None and get_finetuned_rows is not None and spec.blockable
                 and all(blockable(sp) for sp in sparsifiers))
    blocks = {n: b for n in vector_names if can_block and (b := row_blocks(n, shapes[n], block_bytes)) is not None}
    units: list[str] = [u for n in vector_names for u in blocks.get(n, [n])]
    sizes = {u: (u.stop - u.start) * int(np.prod(u.shape[1:])) if isinstance(u, Block) else int(np.prod(shapes[u]))
             for u in units}
    k = jnp.asarray(spec.resolved_coefficients(n_models), jnp.float32)
    checked: set[str] = set()

    def read(unit: str) -> tuple[Any, list[Any]]:
        check = not allow_nonfinite and unit not in checked
        name = unit.tensor if isinstance(unit, Block) else unit

        def load(raw: Any, label: str) -> Any:  # one input at a time, so the raw copy is freed before the next read
            if check:  # as read: numpy from disk, checked with no copy
                check_finite(name, [raw], [label])
            return jnp.asarray(raw)

        if isinstance(unit, Block):
            base = load(get_base_rows(name, unit.start, unit.stop), labels[0])
            fts = [load(get_finetuned_rows(i, name, unit.start, unit.stop), labels[i + 1]) for i in range(n_models)]
        else:
            base = load(get_base(name), labels[0])
            fts = [load(get_finetuned(i, name), labels[i + 1]) for i in range(n_models)]
        checked.add(unit)
        return base, fts

    def taus_of(base: Any, fts: Sequence[Any]) -> list[Any]:
        dtype = tau_dtype(base.dtype, [f.dtype for f in fts])
        return [tv_leaf(ft, base, out_dtype=dtype) for ft in fts]

    def taus(unit: str) -> list[Any]:
        return taus_of(*read(unit))

    sparsify = any(s is not None for s in sparsifiers)
    plans = prepare(sparsifiers, units, sizes, taus, progress) if sparsify else [None] * n_models
    stats = spec.statistics(units, taus, n_models, progress)

    def merge_one(unit: str) -> Any:  # a function, so its temporaries are freed before the next tensor is read
        base, fts = read(unit)
        ts = taus_of(base, fts)
        del fts  # (each input is freed as soon as it is not needed: peak memory is a few copies of one tensor)
        if sparsify:
            ts = [apply_sparsifier(sp, t, unit, plan) if sp is not None else t
                  for sp, t, plan in zip(sparsifiers, ts, plans)]
        wide = compute_dtype(base.dtype)
        merged = spec.merge_leaf(base if base.dtype == wide else base.astype(wide), tuple(ts), stats, k)
        del ts  # merged is in the compute dtype: rounded once, here, to the output dtype
        target = jnp.dtype(base.dtype if out_dtype is None else out_dtype)
        out = merged if merged.dtype == target else merged.astype(target)
        if rounding is not None:
            rounding.add(merged, base, out)
        return out

    def passthrough(name: str) -> Any:
        base = get_base(name)
        if not allow_nonfinite and is_float(name):
            check_finite(name, [base], labels[:1])
        if out_dtype is not None and is_float(name) and np.dtype(base.dtype) != np.dtype(out_dtype):
            base = base.astype(out_dtype)  # numpy from disk stays numpy, a jax leaf stays jax
        return base

    vector_set = set(vector_names)
    for name in progress(names, "merging", len(names)):
        if name in blocks:
            for block in blocks[name]:
                yield name, merge_one(block)
        else:
            yield name, merge_one(name) if name in vector_set else passthrough(name)


def merge(
    base: Any, finetuned: Sequence[Any], spec: MergeMethod, *, allow_nonfinite: bool = False, dtype: Any = None,
    block_bytes: int | None = None,
) -> Any:
    """In-memory merge of pytrees (same structure and shapes) with `spec`; returns a pytree like `base`.

    A fine-tuned model may be an in-memory LoRA adapter (`merging.lora_adapter.LoRAAdapter`; `base` then a dict
    keyed by HF tensor names): it merges as base + B @ A * scale, each adapted tensor densified when reached.

    Equal bit for bit to `merging.stream.merge_checkpoints` on the same tensors, and to composing the public
    functions by hand, e.g. for dots:
    combine(base, [dots_sparsify(task_vector(ft, base, dtype=jnp.float32), ...) for ft in finetuned], coeffs).
    Float inputs may differ in dtype (computed in float32 or wider, written in the base's dtype, or in `dtype`);
    float64 leaves need JAX's x64 mode (else ValueError up front); NaN/Inf anywhere is a `NonFiniteError` unless
    `allow_nonfinite`. `block_bytes`: merge leaves larger than that in row blocks (the streamed merge's path; the
    result is the same).
    """
    finetuned = [adapted_leaves(ft, base) if isinstance(ft, LoRAAdapter) else ft for ft in finetuned]
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
    merged: dict[str, list[Any]] = {}
    for name, tensor in merge_tensors(
        names,
        {p: tuple(getattr(ls[0], "shape", ())) for p, ls in rows},
        lambda name: leaves[name][0],
        lambda i, name: dense_leaf(leaves[name][i + 1]),  # an adapter's leaf: base + tau computed here
        len(finetuned),
        spec,
        is_float=lambda name: is_vector_leaf(leaves[name][0]),
        allow_nonfinite=allow_nonfinite,
        labels=labels,
        out_dtype=dtype,
        block_bytes=block_bytes,
        get_base_rows=lambda name, a, b: leaves[name][0][a:b],
        get_finetuned_rows=lambda i, name, a, b: leaves[name][i + 1][a:b],
    ):
        merged.setdefault(name, []).append(tensor)
    out = [ts[0] if len(ts) == 1 else jnp.concatenate(ts) for ts in (merged[p] for p in names)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(base), out)
