"""Peak memory and time of the streamed merge on a checkpoint whose largest tensor dominates (issue 20).

Builds base + 2 float32 fine-tunes with a 151,936 x 896 tied embedding (Qwen2.5-0.5B's, 544 MB in float32), two
4864 x 896 MLP weights and a few norms (0.58 GB a checkpoint), then runs `python -m merging.merge` in a subprocess
per method and block size under `/usr/bin/time -v`, and prints wall time and peak RSS. `--block-size 100GB` merges
every tensor whole (the behaviour before row blocks); a merge of the checkpoint without the embedding gives the
interpreter + JAX floor.

    python benchmarks/merge_blocks.py --root /tmp/merge-blocks                      # task_arithmetic and dots
    python benchmarks/merge_blocks.py --root /tmp/merge-blocks --methods ties dare --block-sizes 32MiB
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, FFN = 151936, 896, 4864


def build(root: Path, *, embed: bool = True) -> dict[str, Path]:
    """base, ft1, ft2 under root (fine-tunes: base + N(0, (2e-5)^2) on every entry, float32)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = {"model.norm.weight": np.ones(HIDDEN, np.float32)}
    if embed:
        base["model.embed_tokens.weight"] = rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32) * 0.02
    for i in range(2):
        base[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((FFN, HIDDEN), dtype=np.float32) * 0.02
        base[f"model.layers.{i}.input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    paths = {}
    for name, scale in (("base", 0.0), ("ft1", 2e-5), ("ft2", 2e-5)):
        d = root / name
        paths[name] = d
        if (d / "model.safetensors").exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * np.float32(scale) if scale else v
                   for k, v in base.items()}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "tie_word_embeddings": True}))
    return paths


def run(paths: dict[str, Path], method: str, block_size: str, out: Path) -> dict[str, float]:
    """One merge under /usr/bin/time -v: {"wall_s", "peak_rss_gb"}."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "merging.merge", "--base", str(paths["base"]), "--models",
           str(paths["ft1"]), str(paths["ft2"]), "--method", method, "--no-progress", "--block-size", block_size,
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return {"wall_s": round(seconds, 1), "peak_rss_gb": round(int(rss.group(1)) * 1024 / 1e9, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="folder for the checkpoints (1.8 GB) and outputs")
    p.add_argument("--methods", nargs="+", default=["task_arithmetic", "dots"])
    p.add_argument("--block-sizes", nargs="+", default=["32MiB", "100GB"])
    args = p.parse_args()
    paths = build(args.root)
    floor = run(build(args.root / "no-embed", embed=False), "task_arithmetic", "32MiB", args.root / "out-floor")
    print(json.dumps({"method": "task_arithmetic", "checkpoint": "without the embedding", **floor}))
    for method in args.methods:
        for size in args.block_sizes:
            print(json.dumps({"method": method, "block_size": size, **run(paths, method, size, args.root / "out")}))


if __name__ == "__main__":
    main()
