"""Forward+backward throughput and peak memory: our jitted NNX decoder vs transformers (torch), same checkpoint.

Each side runs in its own subprocess (so peak RSS is honest) on the same random Qwen2-shaped checkpoint and the
same token batch; a step is loss = mean next-token cross-entropy, then gradients w.r.t. every parameter (torch:
train mode, `loss.backward()`; ours: `jax.value_and_grad` under `jax.jit`). Reported: median tokens/s over
`--repeats` timed steps after `--warmup` steps, the ratio ours / torch, JAX compile time, and peak RSS of each
process.

    .venv/bin/python benchmarks/model_forward.py                 # ~40M params, B=8, T=256
    .venv/bin/python benchmarks/model_forward.py --size small    # ~3M params, quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # Qwen2-shaped (GQA, qkv bias, SwiGLU, untied head): 39.3M params
    "40m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, head_dim=64, vocab_size=16384),
    "small": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, vocab_size=4096),
}


def build_checkpoint(size: str, out: Path) -> Path:
    """A random Qwen2-shaped HF checkpoint of the given size (written by our save_hf)."""
    from jax_cat.models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(out, seed=0, tie_word_embeddings=False, max_position_embeddings=4096, **SIZES[size])


def batch(vocab_size: int, b: int, t: int):
    import numpy as np

    return np.random.default_rng(0).integers(4, vocab_size, size=(b, t)).astype(np.int32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_jax(ckpt: Path, b: int, t: int, warmup: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jax_cat.models import load_hf

    model = load_hf(ckpt)
    ids = jnp.asarray(batch(model.config.vocab_size, b, t))
    graphdef, params = nnx.split(model, nnx.Param)
    loaded_rss = peak_rss_mib()

    def loss_fn(params, ids):
        logits = nnx.merge(graphdef, params)(ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    start = time.perf_counter()
    loss, grads = step(params, ids)
    jax.block_until_ready(grads)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(step(params, ids))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, ids))
        times.append(time.perf_counter() - start)
    return dict(side="jax", loss=float(loss), times=times, compile_s=compile_s, params=model.num_params,
                peak_rss_mib=peak_rss_mib(), loaded_rss_mib=loaded_rss, device=str(jax.devices()[0].platform))


def run_torch(ckpt: Path, b: int, t: int, warmup: int, repeats: int) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).train()
    ids = torch.from_numpy(batch(model.config.vocab_size, b, t).astype("int64"))
    loaded_rss = peak_rss_mib()

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    loss = step()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return dict(side="torch", loss=float(loss), times=times, params=sum(p.numel() for p in model.parameters()),
                peak_rss_mib=peak_rss_mib(), loaded_rss_mib=loaded_rss, threads=torch.get_num_threads(),
                attn=model.config._attn_implementation)


def worker(side: str, ckpt: Path, b: int, t: int, warmup: int, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user would run it
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, __file__, "--worker", side, "--ckpt", str(ckpt), "--batch", str(b), "--seq", str(t),
           "--warmup", str(warmup), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="40m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate torch/jax worker pairs this many times; the ratio is the median over rounds "
                             "(robust to load drifting on a shared machine)")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run = run_jax if args.worker == "jax" else run_torch
        print(json.dumps(run(args.ckpt, args.batch, args.seq, args.warmup, args.repeats)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.size, Path(tmp) / f"bench-{args.size}")
        rounds = [
            {side: worker(side, ckpt, args.batch, args.seq, args.warmup, args.repeats) for side in ("torch", "jax")}
            for _ in range(args.rounds)
        ]
    tokens = args.batch * args.seq
    n_params = rounds[0]["jax"]["params"]
    print(f"model {args.size}: {n_params / 1e6:.1f}M params, batch {args.batch} x {args.seq} tokens, "
          f"median of {args.repeats} steps (after {args.warmup} warm-up), {args.rounds} round(s)")
    ratios = []
    for i, results in enumerate(rounds):
        rows = {}
        for side, r in results.items():
            median = statistics.median(r["times"])
            rows[side] = dict(tok_s=tokens / median, median_s=median, **{k: r[k] for k in
                                                                        ("peak_rss_mib", "loaded_rss_mib", "loss")})
            gflops = 6 * n_params * tokens / median / 1e9
            print(f"  round {i} {side:5s}: {rows[side]['tok_s']:7.0f} tok/s ({median * 1e3:7.0f} ms/step, "
                  f"~{gflops:5.1f} GFLOP/s by 6ND)  peak RSS {r['peak_rss_mib']:6.0f} MiB "
                  f"(after load {r['loaded_rss_mib']:6.0f})  loss {r['loss']:.4f}")
        ratios.append(rows["jax"]["tok_s"] / rows["torch"]["tok_s"])
        if abs(rows["jax"]["loss"] - rows["torch"]["loss"]) > 1e-3:
            raise SystemExit(f"loss mismatch: jax {rows['jax']['loss']} vs torch {rows['torch']['loss']}")
    last = rounds[-1]
    print(f"  jax compile: {last['jax']['compile_s']:.1f}s; torch threads: {last['torch']['threads']}, "
          f"attention: {last['torch']['attn']}")
    print(f"  ratio ours/torch tokens/s: {statistics.median(ratios):.2f}x (per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)});  peak RSS ratio: "
          f"{last['jax']['peak_rss_mib'] / last['torch']['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
