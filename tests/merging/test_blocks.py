"""Large tensors merged in row blocks (issue 20): every method gives the whole-tensor result exactly (ties at the
top-k threshold spanning blocks, global statistics, DARE masks, per-tensor rescales), in memory and streamed."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import merging.sparsify as sp
from merging.methods import REGISTRY
from merging.methods.engine import merge, row_blocks
from merging.stream import merge_checkpoints

ROWS, COLS = 96, 40
CHUNK = 8 * COLS  # host chunks of 8 rows: blocks of a multiple of 8 rows
BLOCK_BYTES = 16 * COLS * 4  # 16 rows per block: 6 blocks

CASES = {
    "task_arithmetic": {},
    "dots": {},
    "dots global top-k": dict(topk_scope="global"),
    "dots keep_all": dict(tie_break="keep_all"),
    "dots per-tensor rescale": dict(rescale_scope="tensor"),
    "dots linf per-tensor rescale": dict(norm="linf", rescale_scope="tensor"),
    "dare": dict(density=0.5),
    "dare norm per-tensor": dict(density=0.5, rescale="norm", rescale_scope="tensor"),
    "breadcrumbs": dict(density=0.5, top_remove=0.1),
    "breadcrumbs whole tensor": dict(axis="tensor"),
    "ties": {},
    "ties global": dict(topk_scope="global"),
    "ram": dict(threshold=0.02),
    "ram_plus per-tensor counts": dict(threshold=0.02, count_scope="tensor"),
}


def _method(case: str):
    name = case.split()[0]
    return REGISTRY[name](**CASES[case])


def _trees():
    # task-vector entries on a grid of 1/64: many entries tie in magnitude, also at each top-k threshold
    rng = np.random.default_rng(0)
    base = {"embed": rng.standard_normal((ROWS, COLS)).astype(np.float32),
            "norm": rng.standard_normal(COLS).astype(np.float32)}
    fts = [{k: (v + np.round(rng.standard_normal(v.shape) * 3) / 64).astype(np.float32) for k, v in base.items()}
           for _ in range(2)]
    return base, fts


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(sp, "_CHUNK", CHUNK)


def test_the_fixture_splits_the_tensor_and_its_ties_span_blocks():
    base, fts = _trees()
    blocks = row_blocks("embed", (ROWS, COLS), BLOCK_BYTES)
    assert [(b.start, b.stop) for b in blocks] == [(i, i + 16) for i in range(0, ROWS, 16)]
    assert row_blocks("norm", (COLS,), BLOCK_BYTES) is None  # 1-D: never split
    tau = np.abs(fts[0]["embed"] - base["embed"]).reshape(-1)
    k = sp.num_kept(0.3, tau.size)
    t = np.sort(tau)[-k]
    tied_rows = np.flatnonzero(np.abs(fts[0]["embed"] - base["embed"]) == t) // COLS
    assert len({r // 16 for r in tied_rows}) >= 3 and (tau > t).sum() < k < (tau >= t).sum()


@pytest.mark.parametrize("case", list(CASES))
def test_blocked_merge_equals_the_whole_tensor_merge_in_memory(case):
    base, fts = _trees()
    spec = _method(case)
    whole = merge(base, fts, spec)
    blocked = merge(base, fts, spec, block_bytes=BLOCK_BYTES)
    for name in whole:
        np.testing.assert_array_equal(np.asarray(blocked[name]), np.asarray(whole[name]), err_msg=f"{case}: {name}")
    assert np.any(np.asarray(whole["embed"]) != base["embed"])


@pytest.mark.parametrize("case", ["dots", "dots per-tensor rescale", "dare", "ties", "ram"])
def test_streamed_blocked_merge_equals_unblocked(tmp_path, case):
    base, fts = _trees()
    for name, tree in [("base", base), ("a", fts[0]), ("b", fts[1])]:
        (tmp_path / name).mkdir()
        save_file(tree, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
    spec = _method(case)
    outs = {}
    for label, size in (("whole", None), ("blocks", BLOCK_BYTES)):
        outs[label] = merge_checkpoints(tmp_path / "base", [tmp_path / "a", tmp_path / "b"], spec,
                                        tmp_path / label, block_size=size, progress=False)
    with safe_open(str(outs["whole"] / "model.safetensors"), "numpy") as w, \
            safe_open(str(outs["blocks"] / "model.safetensors"), "numpy") as b:
        for name in w.keys():
            np.testing.assert_array_equal(b.get_tensor(name), w.get_tensor(name), err_msg=name)
    np.testing.assert_array_equal(np.asarray(merge(base, fts, spec)["embed"]),
                                  safe_open(str(outs["blocks"] / "model.safetensors"), "numpy").get_tensor("embed"))


def test_exact_k_keep_without_a_cumulative_sum():
    # the host tie selection keeps |x| > t and the first `quota` entries equal to t in flat order
    x = jnp.asarray([[0.5, -1.0, 1.0], [1.0, -2.0, 0.25]], jnp.float32)
    kept, n_equal = sp._keep_top_first(x, np.float32(1.0), 2)
    assert n_equal == 3
    np.testing.assert_array_equal(np.asarray(kept), [[0.0, -1.0, 1.0], [0.0, -2.0, 0.0]])
    kept, _ = sp._keep_top_first(x, np.float32(1.0), 0)
    np.testing.assert_array_equal(np.asarray(kept), [[0.0, 0.0, 0.0], [0.0, -2.0, 0.0]])
