"""Sparse task vectors kept compactly on the host, and merged candidates built from them block by block (DoTS).

The DoTS search scores many candidates base + c_sft * S(tau_sft) + c_rl * S(tau_rl). Held as whole float32 trees
(two dense task vectors, their sparse copies, the merged tree in float32 inside one jit), that took more than
10 GiB at the Qwen2.5-0.5B shape. Here:

- `SparseVector.from_models(finetuned, base, sparsifier)`: tau = finetuned - base is computed one leaf at a time
  (`tv_leaf`, float32), never as a tree; the entries kept and the norm-preserving factor come from the same
  `prepare` / `apply_sparsifier` that `merging.sparsify.sparsify` runs on a whole tree, so the values are those of
  `topk(task_vector(...), ...)`. Each leaf is stored in row blocks as a bit mask of the kept entries and their
  float32 values: (1/8 + 4 x density) bytes an entry instead of 4.
- `CompactCandidates(base_model, vectors)`: `model(coeffs)` builds each leaf block by block with `combine_leaf`
  (the kernel `merging.combine` and the streaming merge use), so a candidate equals `Candidates`' bit for bit.

Peak memory while searching: the base, one candidate, the compact vectors and one block (`block_bytes` of float32
per vector), not the model several times in float32.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merging._paths import is_vector_leaf
from merging.methods.engine import row_blocks
from merging.stream import _malloc_trim
from merging.sparsify import Block, Sparsifier, apply_sparsifier, prepare
from merging.task_vectors import check_compatible, combine_leaf, tv_leaf

__all__ = ["CompactCandidates", "SparseVector", "DEFAULT_BLOCK_BYTES"]

_MALLOC_TRIM = _malloc_trim()
DEFAULT_BLOCK_BYTES = 32 * 2**20  # float32 bytes of one row block of a leaf (as the streaming merge's blocks)


@dataclass(frozen=True)
class _Block:
    """One row block of a sparse leaf: which entries are kept (packed bits, C order) and their values."""

    start: int
    stop: int
    mask: np.ndarray  # uint8, np.packbits of the kept entries
    values: np.ndarray  # float32, the kept entries in C order

    def dense(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        out = np.zeros(n, np.float32)
        out[np.unpackbits(self.mask, count=n).astype(bool)] = self.values
        return out.reshape(shape)


def _trim() -> None:
    """Hand freed block buffers back to the OS (glibc keeps them in its heaps otherwise: merging.stream's reason)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _compact(x: np.ndarray, start: int, stop: int, offset: int = 0) -> _Block:
    """The rows x[start:stop] of a sparse float32 array, recorded as the leaf's rows offset + start .. offset + stop;
    zeros are not stored (-0.0 is, to stay bit-exact)."""
    x = np.ascontiguousarray(x[start:stop] if x.ndim else x.reshape(1), np.float32).reshape(-1)
    kept = (x != 0) | np.signbit(x)
    return _Block(offset + start, offset + stop, np.packbits(kept), x[kept])


class SparseVector:
    """A sparsified task vector: per leaf path, its shape and row blocks (`_Block`); None for leaves that are not
    part of the vector (integer leaves, keys), which a candidate takes from the base as they are."""

    def __init__(self, leaves: dict[str, tuple[tuple[int, ...], list[_Block]] | None]):
        self.leaves = leaves

    @classmethod
    def from_models(cls, finetuned: Any, base: Any, sparsifier: Sparsifier, *,
                    block_bytes: int = DEFAULT_BLOCK_BYTES) -> "SparseVector":
        """S(finetuned - base) from two parameter states of the same structure (e.g. `nnx.state` of two models):
        the values `merging.sparsify.sparsify(task_vector(finetuned, base, dtype=float32), sparsifier)` gives, with
        one row block's float32 task vector in memory at a time (leaves larger than `block_bytes` of float32 go in
        the streaming merge's row blocks, `merging.methods.engine.row_blocks`; the statistics passes recompute a
        block when they need it)."""
        rows = check_compatible([finetuned, base], ["finetuned", "base"], check_dtype=False)
        chosen = {path: (ft, b) for path, (ft, b) in rows if is_vector_leaf(b)}
        units = {path: row_blocks(path, chosen[path][1].shape, block_bytes) or [path] for path in chosen}

        def tau(unit: str) -> jax.Array:
            if isinstance(unit, Block):
                ft, b = chosen[unit.tensor]
                ft, b = ft[unit.start:unit.stop], b[unit.start:unit.stop]
            else:
                ft, b = chosen[unit]
            return tv_leaf(ft, b, out_dtype=jnp.dtype(jnp.float32))

        names = [u for us in units.values() for u in us]
        sizes = {u: int(np.prod((u.stop - u.start, *u.shape[1:]) if isinstance(u, Block) else chosen[u][1].shape,
                                dtype=np.int64)) for u in names}
        (plan,) = prepare([sparsifier], names, sizes, lambda u: [tau(u)])
        leaves: dict[str, tuple[tuple[int, ...], list[_Block]] | None] = {}
        for path, _ in rows:
            if path not in chosen:
                leaves[path] = None
                continue
            shape = tuple(chosen[path][1].shape)
            blocks = []
            for u in units[path]:
                sparse = np.asarray(apply_sparsifier(sparsifier, tau(u), u, plan), np.float32)
                a, b = (u.start, u.stop) if isinstance(u, Block) else (0, shape[0] if shape else 1)
                blocks.append(_compact(sparse, 0, b - a, offset=a))
                del sparse
            leaves[path] = (shape, blocks)
            _trim()
        return cls(leaves)

    @property
    def nbytes(self) -> int:
        """Host bytes held (masks + values)."""
        return sum(b.mask.nbytes + b.values.nbytes for leaf in self.leaves.values() if leaf for b in leaf[1])

    def dense_block(self, path: str, block: int) -> np.ndarray:
        """The float32 row block `block` of leaf `path`, zeros included."""
        shape, blocks = self.leaves[path]
        blk = blocks[block]
        return blk.dense((blk.stop - blk.start, *shape[1:]) if shape else (1,))


class CompactCandidates:
    """Merged models base + sum_i c_i * sparse_i from `SparseVector`s, built leaf by leaf and block by block.

    The interface of `merging.objectives.Candidates` (`state`, `model`, `single`): the same leaf kernel in float32,
    cast to the base's dtypes, each leaf placed with the base leaf's sharding; the base is never modified."""

    def __init__(self, base_model: Any, sparse: Sequence[SparseVector]):
        self.graphdef, self.base_state = nnx.split(base_model)
        self.sparse = tuple(sparse)

    def state(self, coeffs: Sequence[float] | jax.Array, sparse: Sequence[SparseVector] | None = None) -> Any:
        """The merged parameter state for `coeffs` (one per vector); `sparse` replaces the stored vectors."""
        vectors = self.sparse if sparse is None else tuple(sparse)
        k = jnp.asarray(coeffs, jnp.float32)
        if k.shape != (len(vectors),):
            raise ValueError(f"need {len(vectors)} coefficients, got shape {k.shape}")
        treedef = jax.tree_util.tree_structure(self.base_state)
        leaves = []
        for path, (base,) in check_compatible([self.base_state], ["base"]):
            entries = [v.leaves.get(path) for v in vectors]
            if not is_vector_leaf(base) or not vectors or any(e is None for e in entries):
                leaves.append(base)
                continue
            shape = tuple(base.shape)
            if any(e[0] != shape for e in entries):
                raise ValueError(f"leaf '{path}': sparse vector shape {[e[0] for e in entries]} != base {shape}")
            out = np.empty(shape, base.dtype)
            view = out.reshape(1) if not shape else out
            for j, blk in enumerate(entries[0][1]):
                b = base[blk.start:blk.stop] if shape else base.reshape(1)
                taus = tuple(jnp.asarray(v.dense_block(path, j)) for v in vectors)
                view[blk.start:blk.stop] = np.asarray(combine_leaf(b, taus, k))
            leaves.append(jax.device_put(out, base.sharding) if hasattr(base, "sharding") else jnp.asarray(out))
            del out, view
            _trim()
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def model(self, coeffs: Sequence[float] | jax.Array, sparse: Sequence[SparseVector] | None = None) -> Any:
        """The merged model for `coeffs` (a new module; the base model is unchanged)."""
        return nnx.merge(self.graphdef, self.state(coeffs, sparse))

    def single(self, i: int, coeff: float = 1.0) -> Any:
        """base + coeff * sparse_i alone (the others at 0): what the query selection scores."""
        c = [0.0] * len(self.sparse)
        c[i] = coeff
        return self.model(c)
