"""Streamed merge (python -m merging.merge) vs what users do by hand (three torch state dicts in memory).

Generates a random Qwen2-shaped bf16 checkpoint set (base + sft + rl, a few hundred MB each) in a temp dir, then
times, in separate subprocesses and `--repeats` times each:
  ours:  merging.stream.merge_checkpoints (tensor by tensor, JAX), checking every input tensor for NaN/Inf
  ours_nocheck: the same with allow_nonfinite=True (so ours / ours_nocheck is the cost of the NaN/Inf check)
  torch: safetensors.torch.load_file x3, merge every tensor in float32 with torch, save_file
for task arithmetic and DoTS (per-tensor top 30 %, exactly k entries with ties by index, one global L2 factor per
task vector), coefficients 0.5/0.5.
Reports medians of merge time (imports excluded; process wall time too) and of peak RSS (VmHWM), as ratios
ours/torch, and checks both produce the same tensors.

    python benchmarks/merge.py                      # ~310 MB per checkpoint, 3 repeats
    python benchmarks/merge.py --layers 4 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def qwen2_config(layers: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32000, "hidden_size": 1024,
        "intermediate_size": 2816, "num_hidden_layers": layers, "num_attention_heads": 16, "num_key_value_heads": 4,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "hidden_act": "silu",
    }


def qwen2_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    return shapes


def generate(root: Path, layers: int) -> None:
    """base ~ N(0, 0.02); sft = base + N(0, 1e-3) dense; rl = base + N(0, 3e-4) on 5 % of the entries (bf16)."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    cfg = qwen2_config(layers)
    shapes = qwen2_shapes(cfg)
    rng = np.random.default_rng(0)
    base = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in shapes.items()}
    for name, scale, frac in (("base", 0.0, 0.0), ("sft", 1e-3, 1.0), ("rl", 3e-4, 0.05)):
        out = {}
        for n, b in base.items():
            x = b if scale == 0 else b + rng.standard_normal(b.shape, dtype=np.float32) * scale * (
                rng.random(b.shape, dtype=np.float32) < frac)
            out[n] = x.astype(ml_dtypes.bfloat16)
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file(out, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        (root / name / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        del out


def peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would include the forking parent's peak)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------- workers
def worker_ours(root: Path, method: str, out: Path, allow_nonfinite: bool = False) -> dict:
    t0 = time.perf_counter()
    from merging.methods import method_settings
    from merging.stream import merge_checkpoints

    t1 = time.perf_counter()
    spec = method_settings(method, coefficients=(0.5, 0.5), density=0.3 if method == "dots" else None)
    merge_checkpoints(root / "base", [root / "sft", root / "rl"], spec, out, progress=False,
                      allow_nonfinite=allow_nonfinite)
    return {"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}


def worker_torch(root: Path, method: str, out: Path) -> dict:
    """What a user writes by hand: three state dicts in memory, merge each tensor in float32, save."""
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import load_file, save_file

    t1 = time.perf_counter()
    base = load_file(str(root / "base" / "model.safetensors"))
    models = [load_file(str(root / m / "model.safetensors")) for m in ("sft", "rl")]
    coeffs = (0.5, 0.5)
    merged = {}
    if method == "task_arithmetic":
        for n, b in base.items():
            b32 = b.float()
            acc = b32.clone()
            for c, m in zip(coeffs, models):
                acc += c * (m[n].float() - b32)
            merged[n] = acc.to(b.dtype)
    else:  # dots: per-tensor top 30 % (exactly k, ties by flat index), then one global L2 factor per task vector
        factors, kept = [], []
        for m in models:
            dense2 = sparse2 = 0.0
            kept_m = {}
            for n, b in base.items():
                tau = m[n].float() - b.float()
                k = int(0.3 * tau.numel())
                a = tau.abs()
                thr = torch.kthvalue(a.reshape(-1), tau.numel() - k + 1).values
                eq = a == thr
                quota = k - int((a > thr).sum())
                keep = (a > thr) | (eq & (torch.cumsum(eq.reshape(-1), 0).reshape(a.shape) <= quota))
                s = torch.where(keep, tau, torch.zeros((), dtype=tau.dtype))
                dense2 += float(torch.sum(tau.double() ** 2))
                sparse2 += float(torch.sum(s.double() ** 2))
                kept_m[n] = s
            factors.append((dense2 / sparse2) ** 0.5)
            kept.append(kept_m)
        for n, b in base.items():
            acc = b.float()
            for c, f, kept_m in zip(coeffs, factors, kept):
                acc = acc + c * (kept_m[n] * f)
            merged[n] = acc.to(b.dtype)
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(root / "base" / "config.json", out / "config.json")
    return {"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}


def compare_outputs(a: Path, b: Path) -> dict:
    import ml_dtypes
    import numpy as np
    from safetensors import safe_open

    from merging.stream import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    assert ca.names == cb.names
    n = same = 0
    worst = 0.0
    for name in ca.names:
        x, y = ca.get(name), cb.get(name)
        n += x.size
        same += int(np.sum(x.view(np.uint16) == y.view(np.uint16)))
        worst = max(worst, float(np.max(np.abs(x.astype(np.float32) - y.astype(np.float32)))))
    return {"identical_fraction": same / n, "max_abs_diff": worst}


# ------------------------------------------------------------------------------------------------------ main
def run_worker(kind: str, root: Path, method: str, out: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--method", method, "--root", str(root), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-4000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8, help="decoder layers (8: ~155M params, ~310 MB bf16 per model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["task_arithmetic", "dots"])
    p.add_argument("--root", help="keep the generated checkpoints here (default: a temp dir, removed after)")
    p.add_argument("--worker", choices=("ours", "ours_nocheck", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.worker == "torch":
            result = worker_torch(Path(args.root), args.method, Path(args.out))
        else:
            result = worker_ours(Path(args.root), args.method, Path(args.out), args.worker == "ours_nocheck")
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="merge-bench-"))
    try:
        if not (root / "rl" / "model.safetensors").exists():
            t = time.perf_counter()
            generate(root, args.layers)
            print(f"generated checkpoints in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        size_mb = (root / "base" / "model.safetensors").stat().st_size / 1e6
        from merging.stream import Checkpoint

        ck = Checkpoint(root / "base")
        largest = max(ck.info.values(), key=lambda i: i.nbytes)
        report = {"checkpoint_mb": round(size_mb, 1), "largest_tensor_mb": round(largest.nbytes / 1e6, 1),
                  "params_m": round(sum(x.nbytes for x in ck.info.values()) / 2 / 1e6, 1), "methods": {}}
        for method in args.methods:
            runs: dict[str, list[dict]] = {"ours": [], "ours_nocheck": [], "torch": []}
            for r in range(args.repeats):
                for kind in runs:  # interleaved, so load changes hit all three
                    out = root / f"out-{kind}-{method}-{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    runs[kind].append(run_worker(kind, root, method, out))
            check = compare_outputs(root / f"out-ours-{method}-0", root / f"out-torch-{method}-0")
            med = {k: {m: statistics.median(x[m] for x in v) for m in ("merge_s", "process_s", "peak_rss_mib")}
                   for k, v in runs.items()}
            report["methods"][method] = {
                "median": med,
                "ratio_merge_time_ours_over_torch": med["ours"]["merge_s"] / med["torch"]["merge_s"],
                "ratio_process_time_ours_over_torch": med["ours"]["process_s"] / med["torch"]["process_s"],
                "ratio_peak_rss_ours_over_torch": med["ours"]["peak_rss_mib"] / med["torch"]["peak_rss_mib"],
                "nan_check_cost_ratio_ours_over_nocheck": med["ours"]["merge_s"] / med["ours_nocheck"]["merge_s"],
                "outputs": check,
                "runs": runs,
            }
            for r in range(args.repeats):
                for kind in runs:
                    shutil.rmtree(root / f"out-{kind}-{method}-{r}", ignore_errors=True)
        print(json.dumps(report, indent=1))
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
