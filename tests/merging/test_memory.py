"""Peak memory of the streamed merge, measured in subprocesses (/proc/self/status VmHWM; Linux).

Bound: a DoTS merge (global top-k threshold and global L2 rescale: three statistics passes + the write pass) of
3 checkpoints x 32 tensors x 4 MiB (384 MiB of weights) peaks at most 24 x 4 MiB above the same merge of a
2-tensor checkpoint with the same shapes (the baseline: interpreter, JAX, and the kernels compiled for those
shapes). Loading the three models would alone add 384 MiB.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc (Linux)")

DIM = 1024  # one tensor = DIM * DIM float32 = 4 MiB
TENSOR_MIB = DIM * DIM * 4 / 2**20

SCRIPT = r"""
import json, sys
from pathlib import Path
from merging.methods import method_settings
from merging.stream import merge_checkpoints
root = Path(sys.argv[1])
spec = method_settings("dots", coefficients=(0.5, 0.5), density=0.3, topk_scope="global", rescale_scope="global")
merge_checkpoints(root / "base", [root / "sft", root / "rl"], spec, root / "out", max_shard_size="32MiB", progress=False)
# VmHWM: peak RSS of this process image. (ru_maxrss is not used: Linux carries the forking parent's peak RSS
# across exec into the child's ru_maxrss, so a child of a big pytest process would report the parent's peak.)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_mib": int(hwm.split()[1]) / 1024}))
"""


def _make(root: Path, n_tensors: int) -> Path:
    rng = np.random.default_rng(0)
    base = None
    for name, scale in (("base", 1.0), ("sft", 0.02), ("rl", 0.005)):
        (root / name).mkdir(parents=True)
        tensors = {}
        for i in range(n_tensors):
            x = rng.standard_normal((DIM, DIM), dtype=np.float32) * scale
            tensors[f"model.layers.{i}.mlp.up_proj.weight"] = x if base is None else base[f"model.layers.{i}.mlp.up_proj.weight"] + x
        save_file(tensors, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        (root / name / "config.json").write_text("{}\n")
        base = base or tensors
        del tensors
    return root


def _peak_mib(root: Path) -> float:
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["maxrss_mib"]


def test_streamed_merge_peak_rss_is_bounded_by_tensors_not_model(tmp_path):
    small = _peak_mib(_make(tmp_path / "small", 2))
    big_root = _make(tmp_path / "big", 32)
    big = _peak_mib(big_root)
    weights_mib = sum(f.stat().st_size for f in big_root.glob("*/model.safetensors")) / 2**20
    assert weights_mib > 380
    assert big <= small + 24 * TENSOR_MIB, (big, small)
    assert len(list((big_root / "out").glob("model-*.safetensors"))) == 4  # 8 tensors per 32 MiB shard


BLOCK_SCRIPT = r"""
import json, sys
from pathlib import Path
from merging.methods import method_settings
from merging.stream import merge_checkpoints
root, block = Path(sys.argv[1]), None if sys.argv[2] == "none" else sys.argv[2]
spec = method_settings("dots", coefficients=(0.5, 0.5), density=0.3)
merge_checkpoints(root / "base", [root / "sft", root / "rl"], spec, root / f"out-{sys.argv[2]}", progress=False,
                  block_size=block)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_mib": int(hwm.split()[1]) / 1024}))
"""


def test_a_large_tensor_merged_in_row_blocks_does_not_set_the_peak(tmp_path):
    # One 4096 x 4096 float32 tensor (64 MiB) per checkpoint, as a tied embedding dominates a small model. Whole,
    # a DoTS merge holds several float32 copies of it (inputs, task vectors, sparsified, merged); in row blocks
    # (4 MiB asked: 16 MiB, the smallest, whole host chunks of 4M entries) only a few copies of a block. Both
    # outputs are equal (tests/merging/test_blocks.py checks every method).
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4096, 4096), dtype=np.float32)
    for name, scale in (("base", 0.0), ("sft", 0.02), ("rl", 0.005)):
        (tmp_path / name).mkdir()
        x = base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(scale) if scale else base
        save_file({"model.embed_tokens.weight": x}, str(tmp_path / name / "model.safetensors"),
                  metadata={"format": "pt"})
        del x
    repo = Path(__file__).resolve().parents[2]
    peaks = {}
    for block in ("none", "4MiB"):
        done = subprocess.run([sys.executable, "-c", BLOCK_SCRIPT, str(tmp_path), block], cwd=repo,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[block] = json.loads(done.stdout.strip().splitlines()[-1])["maxrss_mib"]
    assert peaks["4MiB"] + 2 * 64 <= peaks["none"], peaks  # measured: 412 vs 641 MiB
