"""Merge inputs made safe (issues 11 and 14): exact top-k density on tie-heavy bf16 weights, NaN/Inf refused per
method and path, float64 and mixed dtypes, RAM counts past int32, and interrupted or concurrent merges."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from merging import NonFiniteError, analysis, methods, sparsify as sp, stream
from merging.methods import REGISTRY, method_settings
from merging.methods import ram as ram_mod
from tests.merging.conftest import assert_bitwise_equal, load_state

REPO = Path(__file__).resolve().parents[2]
NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 1, 2, 10, 11)]  # natural order != sorted order


def _tie_heavy(seed: int, shape=(32, 48), dtype=ml_dtypes.bfloat16) -> np.ndarray:
    """Values from a small set: most |x| tie with many others (as bf16 task vectors do)."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-3, -2, -1, 1, 2, 3], size=shape) * 0.015625).astype(dtype)


def _write(root: Path, tensors: dict[str, np.ndarray], files: int = 1) -> Path:
    root.mkdir(parents=True)
    names = list(tensors)
    for j in range(files):
        part = {n: tensors[n] for n in names[j::files]}
        save_file(part, str(root / (f"part-{j}.safetensors" if files > 1 else "model.safetensors")),
                  metadata={"format": "pt"})
    (root / "config.json").write_text("{}\n")
    return root


def _family(root: Path, dtype=ml_dtypes.bfloat16, n_models: int = 2) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal((32, 48)).astype(dtype) for n in NAMES}
    fts = []
    for i in range(n_models):
        ft = {n: (base[n].astype(np.float32) + _tie_heavy(10 * i + j).astype(np.float32)).astype(dtype)
              for j, n in enumerate(NAMES)}
        fts.append(_write(root / f"ft{i}", ft))
    return _write(root / "base", base), fts


# --- exact k on tie-heavy bf16 (issue 14 item 4) ---------------------------------------------------------------
def test_topk_density_is_exact_on_tie_heavy_bf16():
    x = jnp.asarray(_tie_heavy(1, (64, 64)))
    k = sp.num_kept(0.3, x.size)  # 1228 of 4096; 3 distinct |x|: the top one holds ~1/3
    exact = sp.topk({"x": x}, 0.3)["x"]
    assert int(jnp.count_nonzero(exact)) == k
    a = np.abs(np.asarray(x, np.float32)).reshape(-1)
    t = np.sort(a)[::-1][k - 1]
    keep_all = sp.topk({"x": x}, 0.3, tie_break="keep_all")["x"]  # the old rule: every tie of the k-th largest
    assert int(jnp.count_nonzero(keep_all)) == int((a >= t).sum()) > k + 100
    # the kept entries are the largest: everything above the threshold, then tied ones by flat index
    kept = np.asarray(exact, np.float32).reshape(-1) != 0
    assert kept[a > t].all()
    tied = np.flatnonzero(a == t)
    assert kept[tied].tolist() == [True] * (k - int((a > t).sum())) + [False] * (tied.size - k + int((a > t).sum()))
    # global scope and DoTS / TIES use the same rule
    tree = {"a": x, "b": jnp.asarray(_tie_heavy(2, (64, 64)))}
    for scope in ("tensor", "global"):
        out = sp.dots_sparsify(tree, 0.3, topk_scope=scope)
        expected = 2 * k if scope == "tensor" else sp.num_kept(0.3, 2 * x.size)  # 2 x 1228 or 2457
        assert sum(int(jnp.count_nonzero(v)) for v in out.values()) == expected, scope
    assert int(jnp.count_nonzero(sp.dots_sparsify({"x": x}, 0.3, tie_break="keep_all")["x"])) > k


def test_exact_topk_stream_equals_memory_on_ties_global_scope(tmp_path):
    """The global tie quota goes to tensors in natural name order (layers.2 before layers.10) on both paths."""
    base, fts = _family(tmp_path)
    for settings in (method_settings("dots", topk_scope="global", coefficients=(0.5, 1.0)),
                     method_settings("ties", topk_scope="global"), method_settings("dots")):
        out = stream.merge_checkpoints(base, fts, settings, tmp_path / f"out-{settings.name}-{settings.topk_scope}",
                                       progress=False)
        mem = methods.merge(load_state(base), [load_state(f) for f in fts], settings)
        assert_bitwise_equal(load_state(out), mem, settings.name)


# --- NaN / Inf (issue 14 item 2) -------------------------------------------------------------------------------
def _bad_trees(kind: str):
    rng = np.random.default_rng(3)
    base = {n: jnp.asarray(rng.standard_normal((8, 8)), jnp.float32) for n in NAMES[:2]}
    fts = [{n: v + 0.01 * (i + 1) for n, v in base.items()} for i in range(2)]
    bad = fts[1][NAMES[1]].at[2, 3].set(jnp.nan if kind == "nan" else jnp.inf)
    fts[1] = {**fts[1], NAMES[1]: bad}
    return base, fts


@pytest.mark.parametrize("method", list(REGISTRY))
def test_nonfinite_refused_by_every_method_in_memory_and_streamed(method, tmp_path):
    base, fts = _bad_trees("nan" if method != "ties" else "inf")
    settings = method_settings(method)
    with pytest.raises(NonFiniteError, match=rf"tensor '{NAMES[1]}' of finetuned\[1\] holds 1 (NaN|Inf)"):
        methods.merge(base, fts, settings)
    b = _write(tmp_path / "base", {k: np.asarray(v) for k, v in base.items()})
    ms = [_write(tmp_path / f"m{i}", {k: np.asarray(v) for k, v in ft.items()}) for i, ft in enumerate(fts)]
    with pytest.raises(NonFiniteError, match=rf"tensor '{NAMES[1]}' of models\[1\] \(.*m1\) holds 1"):
        stream.merge_checkpoints(b, ms, settings, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "m0", "m1"]  # no output, no temporary, no lock
    stream.merge_checkpoints(b, ms, settings, tmp_path / "out", progress=False, allow_nonfinite=True)  # opt-out


def test_nonfinite_base_passthrough_and_analysis_refused(tmp_path):
    base, fts = _bad_trees("nan")
    base = {**base, NAMES[0]: base[NAMES[0]].at[0, 0].set(-jnp.inf)}
    with pytest.raises(NonFiniteError, match=rf"'{NAMES[0]}' of base holds 1 Inf"):  # even when not merged
        methods.merge(base, fts, method_settings("task_arithmetic", exclude="layers.0"))
    merged = methods.merge(base, fts, method_settings("task_arithmetic"), allow_nonfinite=True)
    assert bool(jnp.isnan(merged[NAMES[1]][2, 3]))
    taus = [{k: ft[k] - base[k] for k in base} for ft in fts]
    with pytest.raises(NonFiniteError, match="holds"):
        analysis.compare(taus[0], taus[1])
    paths = [_write(tmp_path / n, {k: np.asarray(v) for k, v in t.items()}) for n, t in
             (("b", base), ("s", fts[0]), ("r", fts[1]))]
    with pytest.raises(NonFiniteError, match=rf"tensor '{NAMES[0]}' of the base"):
        stream.analyze_checkpoints(*paths, progress=False)


def test_load_hf_refuses_nan_naming_the_tensor(family_f32, tmp_path):
    import shutil

    from safetensors.numpy import load_file

    from jax_cat.models import load_hf
    from jax_cat.models.hf import CheckpointError

    bad = tmp_path / "bad"
    shutil.copytree(family_f32["base"], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' .* holds NaN or Inf.*allow_nonfinite=True"):
        load_hf(bad)
    model = load_hf(bad, allow_nonfinite=True)
    assert model is not None


# --- float64 and mixed dtypes (issue 11 item 5) -----------------------------------------------------------------
def test_float64_refused_up_front_without_x64_and_merged_in_f64_with_it(tmp_path):
    rng = np.random.default_rng(5)
    base = {n: rng.standard_normal((4, 4)) for n in NAMES[:2]}  # numpy float64
    ft = {n: v + rng.standard_normal(v.shape) * 1e-9 for n, v in base.items()}  # below float32 resolution
    b, f = _write(tmp_path / "b", base), _write(tmp_path / "f", ft)
    spec = method_settings("task_arithmetic", coefficients=(0.5,))
    for run in (lambda: methods.merge(base, [ft], spec),
                lambda: stream.merge_checkpoints(b, [f], spec, tmp_path / "out", progress=False)):
        with pytest.raises(ValueError, match="is float64, but JAX runs in 32-bit mode.*jax_enable_x64"):
            run()
    assert not (tmp_path / "out").exists()
    with jax.enable_x64(True):
        mem = methods.merge(base, [ft], spec)
        out = load_state(stream.merge_checkpoints(b, [f], spec, tmp_path / "out", progress=False))
    for n in base:
        expected = base[n] + 0.5 * (ft[n] - base[n])
        assert out[n].dtype == np.float64 and mem[n].dtype == jnp.float64
        np.testing.assert_array_equal(out[n], expected)
        np.testing.assert_array_equal(np.asarray(mem[n]), expected)


def test_mixed_dtypes_computed_in_f32_written_in_base_dtype(tmp_path):
    rng = np.random.default_rng(6)
    base = {n: rng.standard_normal((8, 8)).astype(ml_dtypes.bfloat16) for n in NAMES[:2]}
    rl = {n: (v.astype(np.float32) + rng.standard_normal(v.shape).astype(np.float32) * 1e-3) for n, v in base.items()}
    spec = method_settings("task_arithmetic", coefficients=(2.0,))
    mem = methods.merge(base, [rl], spec)
    out = load_state(stream.merge_checkpoints(_write(tmp_path / "b", base), [_write(tmp_path / "r", rl)], spec,
                                              tmp_path / "o", progress=False))
    assert_bitwise_equal(out, mem, "mixed")
    for n in base:
        b32 = base[n].astype(np.float32)
        expected = (b32 + np.float32(2.0) * (rl[n] - b32)).astype(ml_dtypes.bfloat16)  # the authors' f32 cast
        assert out[n].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(out[n], expected)


# --- RAM counts past int32 (issue 11 item 5) ---------------------------------------------------------------------
def test_ram_counts_are_exact_past_int32(monkeypatch):
    # the kernel counts per row (a (65536, 65536) tensor has 2^32 entries, each row 2^16 at most) ...
    big = jax.ShapeDtypeStruct((1 << 16, 1 << 16), jnp.float32)
    ch, sh = jax.eval_shape(ram_mod.ram_counts_leaf, (big, big), jax.ShapeDtypeStruct((), jnp.float32))
    assert ch.shape == (2, 1 << 16) and sh.shape == (2, 1 << 16)
    # ... and the rows are summed exactly on the host, past 2^31
    rows = np.full((2, 3), 1 << 30, np.int32)
    monkeypatch.setattr(ram_mod, "ram_counts_leaf", lambda taus, thr: (rows, rows // 2))
    changed, shared = ram_mod.ram_counts([None, None], None)
    assert changed == [3 << 30, 3 << 30] and shared == [3 << 29, 3 << 29]
    assert all(type(c) is int for c in changed)


# --- interrupted and concurrent merges (issue 14 item 3) ----------------------------------------------------------
SLOW_MERGE = r"""
import sys, time
from pathlib import Path
from merging import stream
from merging.methods import method_settings
root, signal_file, go_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
original = stream.ShardedWriter.write
def write(self, name, array):
    original(self, name, array)
    if not signal_file.exists():
        signal_file.write_text("writing")
        while not go_file.exists():
            time.sleep(0.05)
stream.ShardedWriter.write = write
stream.merge_checkpoints(root / "base", [root / "ft0", root / "ft1"], method_settings("dots"), root / "out",
                         progress=False, max_shard_size="4KB")
print("done")
"""


def _start_slow_merge(root: Path) -> tuple[subprocess.Popen, Path, Path]:
    sig, go = root / "writing.flag", root / "go.flag"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, str(root), str(sig), str(go)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not sig.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, sig, go


def test_sigkilled_merge_leaves_no_trap_and_is_cleaned(tmp_path):
    base, fts = _family(tmp_path)
    proc, _, _ = _start_slow_merge(tmp_path)
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("out.tmp-")]
    assert len(stale) == 1 and stale[0].name.startswith(f"out.tmp-{proc.pid}-")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = stream.merge_checkpoints(base, fts, method_settings("dots"), tmp_path / "out", progress=False)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert left == ["out"]  # the killed run's temporary and lock are gone
    assert_bitwise_equal(load_state(out), methods.merge(load_state(base), [load_state(f) for f in fts],
                                                        method_settings("dots")))


def test_concurrent_writers_one_complete_output_or_a_clear_error(tmp_path):
    base, fts = _family(tmp_path)
    proc, _, go = _start_slow_merge(tmp_path)
    with pytest.raises(stream.OutputBusyError, match=rf"another process \(pid {proc.pid}\) is writing .*out"):
        stream.merge_checkpoints(base, fts, method_settings("task_arithmetic"), tmp_path / "out", progress=False,
                                 overwrite=True)
    go.write_text("go")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    expected = methods.merge(load_state(base), [load_state(f) for f in fts], method_settings("dots"))
    assert_bitwise_equal(load_state(tmp_path / "out"), expected)  # the first writer's output, complete
    assert len(json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]


# --- the same checkpoints as jax_cat.models.load_hf -------------------------------------------------------------
def test_reads_several_unindexed_safetensors_files_and_writes_5gib_shards(tmp_path):
    import inspect

    rng = np.random.default_rng(8)
    tensors = {n: rng.standard_normal((4, 4)).astype(np.float32) for n in NAMES}
    ckpt = stream.Checkpoint(_write(tmp_path / "multi", tensors, files=3))
    assert ckpt.names == NAMES and len({i.file for i in ckpt.info.values()}) == 3
    assert inspect.signature(stream.merge_checkpoints).parameters["max_shard_size"].default == 5 * 2**30
