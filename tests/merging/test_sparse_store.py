"""Compact sparse task vectors and block-built candidates (merging/sparse_store.py) equal the dense path bit for
bit: the reference is `Candidates` over `topk(task_vector(...))` trees, the way the DoTS search built candidates
before (whole float32 trees). Row blocks are forced small so every leaf is split, ties and -0.0 included."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import load_hf
from merging.objectives import Candidates
from merging.sparse_store import CompactCandidates, SparseVector, _compact
from merging.sparsify import Rescale, TopK, topk
from merging.task_vectors import task_vector


def _bytes(tree):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


@pytest.fixture
def small_chunks(monkeypatch):
    """Host reductions in chunks of 64 entries, so the streaming merge's row blocks (a multiple of a chunk's rows)
    split the family's leaves at block_bytes=512, as 32 MiB blocks split the 0.5B shape's embedding."""
    import merging.sparsify as sp

    monkeypatch.setattr(sp, "_CHUNK", 64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scope,rescale", [("tensor", None), ("global", None), ("tensor", Rescale("l2", "global"))])
def test_compact_candidates_equal_the_dense_trees(family_f32, small_chunks, dtype, scope, rescale):
    base = load_hf(family_f32["base"], dtype=dtype)
    base_state = nnx.state(base)
    fts = [nnx.state(load_hf(family_f32[n], dtype=dtype)) for n in ("sft", "rl")]
    dense = [topk(task_vector(ft, base_state, dtype=jnp.float32), 0.3, scope=scope, rescale=rescale) for ft in fts]
    compact = [SparseVector.from_models(ft, base_state, TopK(0.3, scope, rescale), block_bytes=512) for ft in fts]
    assert any(len(leaf[1]) > 1 for leaf in compact[0].leaves.values() if leaf)  # leaves really split in blocks
    want, got = Candidates(base, dense), CompactCandidates(base, compact)
    for coeffs in ([0.5, 2.0], [1.25, -0.75], [0.0, 0.0]):
        assert _bytes(got.state(coeffs)) == _bytes(want.state(coeffs)), coeffs
    assert _bytes(got.single(1)) == _bytes(nnx.state(want.single(1)))
    # (1/8 + 4 x 0.3) bytes an entry, against 4 for a dense float32 vector
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(base_state))
    assert compact[0].nbytes < 0.36 * 4 * n


def test_compact_block_keeps_negative_zero_and_ties():
    x = np.array([[0.0, -0.0, 1.5], [2.0, 0.0, -1.5]], np.float32)
    blk = _compact(x, 0, 2)
    back = blk.dense((2, 3))
    assert back.tobytes() == x.tobytes()
    assert blk.values.tolist() == [-0.0, 1.5, 2.0, -1.5]
