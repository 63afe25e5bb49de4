"""Where a greedy decode step's time goes, on both sides: XLA's per-op trace (jax.profiler) vs torch.profiler.

Same checkpoint, prompts and pinning as benchmarks/sampling.py (one thread a side on --cpus). Ours: one traced
`sample_tokens` call; every op of the `while` body is put in a bucket from its HLO metadata (which einsum of the
model it came from), and the per-step wall time of each bucket is printed with its share. Torch: one traced
`generate` call; aten ops by self CPU time, bucketed the same way (linear by weight shape), and the rest of the wall
time (Python, `generate`'s bookkeeping) as "outside ops". Per-op times are wall times, so on a loaded machine
compare the shares, not the milliseconds.

    .venv/bin/python benchmarks/profile_decode.py --batch 8
    .venv/bin/python benchmarks/profile_decode.py --batch 64 --new-tokens 32
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import SHAPES, build_checkpoint, prompts  # noqa: E402

# HLO op_name metadata (the einsum spec or jax primitive of the model code) -> bucket
JAX_BUCKETS = [
    ("vocab projection (lm_head)", r"d,dv->|d,vd->"),
    ("q/k/v projections", r"btd,dhk->bthk"),
    ("o projection", r"bthk,hkd->btd"),
    ("attention over the cache", r"bkqd,bksd|bkqs,bksd|softmax|/select_n|reduce_max"),
    ("MLP (gate/up/down)", r"dot_general|logistic|silu"),
    ("sampling (argmax, log-softmax)", r"argmax|log_softmax|logsumexp|take_along_axis|/reduce"),
    ("KV cache write", r"dynamic_update_slice"),
    ("norms, rope, residual, other", r""),
]


def _bucket(op_name: str, buckets) -> str:
    for name, pattern in buckets:
        if re.search(pattern, op_name):
            return name
    return buckets[-1][0]


def profile_jax(ckpt: Path, args) -> None:
    import jax
    import numpy as np
    from flax import nnx
    from jax._src.lib import _profile_data

    from jax_cat.models import load_hf
    from jax_cat.sampling import engine, sample_tokens

    model = load_hf(ckpt)
    ids = prompts(model.config.vocab_size, args.batch, args.prompt_len)
    mask = np.ones_like(ids, bool)
    run = lambda: jax.block_until_ready(sample_tokens(  # noqa: E731
        model, ids, mask, max_new_tokens=args.new_tokens, temperature=0.0, eos_token_ids=(), key=jax.random.key(0)))
    run()
    run()
    # the HLO of the call, to name each traced op
    captured = {}
    orig = engine._sample_core

    def spy(*a, **k):
        captured["hlo"] = orig.lower(*a, **k).compile().as_text()
        return orig(*a, **k)

    engine._sample_core = spy
    run()
    engine._sample_core = orig
    meta = {}
    for line in captured["hlo"].splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            meta[m.group(1)] = op.group(1) if op else ""
    for _ in range(3):  # the trace now and then comes back without the per-op events: trace again
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp):
                run()
            data = _profile_data.ProfileData.from_file(glob.glob(tmp + "/**/*.xplane.pb", recursive=True)[0])
        total, count, whole = collections.Counter(), collections.Counter(), 0
        for plane in data.planes:
            for line in plane.lines:
                for e in line.events:
                    if e.name.startswith("while"):
                        whole += e.duration_ns
                    elif line.name.startswith("tf_XLA") and not e.name.startswith(("ThunkExecutor", "PjRt", "Execute")):
                        total[e.name] += e.duration_ns
                        count[e.name] += 1
        if total:
            break
        if os.environ.get("PROFILE_DEBUG"):
            print("    no per-op events; lines:", {(p.name, ln.name) for p in data.planes for ln in p.lines})
    steps = args.new_tokens
    if os.environ.get("PROFILE_DEBUG"):
        print("    event counts:", collections.Counter(count.values()).most_common(8))
    per_bucket = collections.Counter()
    for name, ns in total.items():
        if count[name] >= steps:  # ran once per decode step: part of the while body
            per_bucket[_bucket(meta.get(name, name), JAX_BUCKETS)] += ns / steps
            if os.environ.get("PROFILE_DEBUG"):
                print(f"    {ns / steps / 1e6:7.3f} ms {name:30s} {meta.get(name, '?')[-90:]}")
    step = whole / steps
    print(f"jax-cat decode step (B={args.batch}): {step / 1e6:.2f} ms wall per step (loop total / steps)")
    for name, ns in per_bucket.most_common():
        print(f"  {name:34s} {ns / 1e6:7.2f} ms  {ns / step:6.1%}")
    rest = step - sum(per_bucket.values())
    print(f"  {'between ops (loop, dispatch)':34s} {rest / 1e6:7.2f} ms  {rest / step:6.1%}")


TORCH_BUCKETS = [
    ("vocab projection (lm_head)", r"linear\[.*16384|lm_head"),
    ("q/k/v + o projections", r"linear\[\S*, 512\]|linear\[\S*, 128\]"),
    ("MLP (gate/up/down)", r"linear\[|silu|mul"),
    ("attention over the cache", r"scaled_dot_product|softmax|bmm|matmul"),
    ("KV cache write (cat)", r"\bcat\b"),
    ("sampling (argmax, logits processors)", r"argmax|max|log_softmax|where|isin|lt|ge|any|all"),
    ("norms, rope, residual, other ops", r""),
]


def profile_torch(ckpt: Path, args) -> None:
    import time

    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompts(model.config.vocab_size, args.batch, args.prompt_len)).long()
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, pad_token_id=0, eos_token_id=2)

    run()
    t0 = time.perf_counter()
    run()
    plain = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    per_bucket = collections.Counter()
    for ev in prof.key_averages(group_by_input_shape=True):
        if not ev.key.startswith("aten::") or ev.key in ("aten::linear", "aten::matmul"):
            continue  # composite ops: their children (addmm/mm/bmm) carry the time
        key = ev.key[6:]
        if key in ("addmm", "mm"):
            shapes = ev.input_shapes
            weight = shapes[2] if key == "addmm" else shapes[1]
            key = f"linear[{', '.join(map(str, weight))}]"
        per_bucket[_bucket(key, TORCH_BUCKETS)] += ev.self_cpu_time_total * 1e3  # us -> ns
    steps = args.new_tokens
    step = plain * 1e9 / steps
    print(f"transformers generate (B={args.batch}): {step / 1e6:.2f} ms wall per new token position (call / steps, "
          f"prefill included)")
    for name, ns in per_bucket.most_common():
        print(f"  {name:34s} {ns / steps / 1e6:7.2f} ms  {ns / steps / step:6.1%}")
    rest = step - sum(per_bucket.values()) / steps
    print(f"  {'outside ops (Python, generate)':34s} {rest / 1e6:7.2f} ms  {rest / step:6.1%}  (profiler overhead "
          f"included)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-40m", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--cpus", default="0")
    p.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return (profile_jax if args.side == "jax" else profile_torch)(args.checkpoint, args)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.shape, Path(tmp) / args.shape)
        for side in ("jax", "torch"):
            cmd = ["taskset", "-c", args.cpus, sys.executable, __file__, "--side", side, "--checkpoint", str(ckpt),
                   "--shape", args.shape, "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
                   "--new-tokens", str(args.new_tokens)]
            subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
