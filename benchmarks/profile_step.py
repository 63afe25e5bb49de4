"""Where a train step's time goes, on both sides: per-part costs (attention, MLP, norm, loss, optimizer) and the top
ops of XLA's and torch's profilers, against the float32 matmul peak of this CPU measured in the same process.

Each part is timed forward + backward on its own, jitted (JAX) or eager (torch, the transformers modules themselves),
at the shape of the full step (39.3M Qwen2 shape, B=8, T=256), with one layer's weights; per-layer parts are then
multiplied by the depth. GFLOP/s per part is its analytic matmul FLOPs (x3 for forward + backward) over its time,
and "% of peak" divides by the matmul peak. Both sides are pinned to the same CPUs with the same thread count.

    .venv/bin/python benchmarks/profile_step.py                    # 2 threads on CPUs 0,1
    .venv/bin/python benchmarks/profile_step.py --threads 1        # one core
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_forward import SIZES, batch, build_checkpoint  # noqa: E402


def _median_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def part_flops(c: dict, b: int, t: int) -> dict[str, float]:
    """Forward matmul FLOPs of each part (the backward costs about twice as much)."""
    n = b * t
    d, f, h, kv, hd, v = (c[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                         "num_key_value_heads", "head_dim", "vocab_size"))
    attn = 2 * n * d * (h + 2 * kv) * hd + 2 * n * h * hd * d + 2 * 2 * b * h * t * t * hd
    return {"attention": attn, "mlp": 2 * n * d * f * 3, "norm": 0.0, "loss": 2 * n * d * v, "optimizer": 0.0}


def run_jax(ckpt: Path, b: int, t: int, trace_dir: str) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jax_cat.models import load_hf
    from jax_cat.models.rope import rope_cos_sin

    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    peak = 2 * 2048**3 / _median_time(lambda: jax.block_until_ready(mm(a)))
    model = load_hf(ckpt)
    c = model.config
    ids = jnp.asarray(batch(c.vocab_size, b, t))
    x = jax.random.normal(jax.random.key(0), (b, t, c.hidden_size), jnp.float32)
    cos, sin = rope_cos_sin(c, jnp.broadcast_to(jnp.arange(t), (b, t)))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    layer = model.layers[0]

    def fwd_bwd(module, fn):
        graphdef, params = nnx.split(module, nnx.Param)
        g = jax.jit(jax.grad(lambda p, x: jnp.sum(fn(nnx.merge(graphdef, p), x)), argnums=(0, 1)))
        return lambda: jax.block_until_ready(g(params, x))

    parts = {
        "attention": fwd_bwd(layer.self_attn, lambda m, x: m(x, cos, sin, mask)[0]),
        "mlp": fwd_bwd(layer.mlp, lambda m, x: m(x)),
        "norm": fwd_bwd(layer.input_layernorm, lambda m, x: m(x)),
    }
    graphdef, params = nnx.split(model, nnx.Param)
    hidden = x

    def loss(p, h):
        logits = nnx.merge(graphdef, p).logits_from_hidden(h)[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    loss_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    parts["loss"] = lambda: jax.block_until_ready(loss_grad(params, hidden))
    tx = optax.adamw(1e-5, weight_decay=0.0)
    opt_state = tx.init(params)
    update = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
    parts["optimizer"] = lambda: jax.block_until_ready(update(params, opt_state, params))
    times = {name: _median_time(fn) for name, fn in parts.items()}

    def full_loss(p, ids):
        logits = nnx.merge(graphdef, p)(ids)[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

    def step(p, s, ids):
        g = jax.grad(full_loss)(p, ids)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step)
    times["full step"] = _median_time(lambda: jax.block_until_ready(step(params, opt_state, ids)))
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(2):
            jax.block_until_ready(step(params, opt_state, ids))
    return dict(peak=peak, times=times, layers=c.num_hidden_layers, top=_xla_top_ops(trace_dir, steps=2))


def _xla_top_ops(trace_dir: str, steps: int, n: int = 12) -> list[tuple[str, float]]:
    """(op name, ms per step) of the most expensive XLA:CPU ops in a perfetto trace (thunks of the executable)."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True) or glob.glob(
        os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        return []
    with gzip.open(files[0], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            name = e.get("name", "")
            if name.startswith(("jit_", "PjRt", "Thunk", "$", "ThunkExecutor", "TfrtCpu", "XlaModule")):
                continue
            totals[name] += e["dur"] / 1e3 / steps
    return totals.most_common(n)


def run_torch(ckpt: Path, b: int, t: int, threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    a = torch.ones(2048, 2048)
    peak = 2 * 2048**3 / _median_time(lambda: a @ a)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).train()
    c = model.config
    ids = torch.from_numpy(batch(c.vocab_size, b, t).astype("int64"))
    x = torch.randn(b, t, c.hidden_size, requires_grad=True)
    pos = torch.arange(t)[None].expand(b, t)
    cos_sin = model.model.rotary_emb(x, pos)
    causal = torch.full((t, t), float("-inf")).triu(1)[None, None].expand(b, 1, t, t)
    layer = model.model.layers[0]

    def fwd_bwd(fn):
        def run():
            model.zero_grad(set_to_none=True)
            x.grad = None
            fn(x).sum().backward()
        return run

    parts = {
        "attention": fwd_bwd(lambda x: layer.self_attn(x, position_embeddings=cos_sin, attention_mask=causal)[0]),
        "mlp": fwd_bwd(lambda x: layer.mlp(x)),
        "norm": fwd_bwd(lambda x: layer.input_layernorm(x)),
        "loss": fwd_bwd(lambda x: torch.nn.functional.cross_entropy(
            model.lm_head(x)[:, :-1].reshape(-1, c.vocab_size), ids[:, 1:].reshape(-1))),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    parts["optimizer"] = lambda: opt.step()
    times = {name: _median_time(fn) for name, fn in parts.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    times["full step"] = _median_time(step, repeats=3, warmup=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
        step()
    top = [(e.key, e.self_cpu_time_total / 1e3 / 2) for e in
           sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]
    return dict(peak=peak, times=times, layers=c.num_hidden_layers, top=top, attn=c._attn_implementation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="40m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpus", default=None)
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "jax":
            with tempfile.TemporaryDirectory() as trace_dir:
                out = run_jax(args.ckpt, args.batch, args.seq, trace_dir)
        else:
            out = run_torch(args.ckpt, args.batch, args.seq, args.threads)
        print(json.dumps(out))
        return
    cpus = args.cpus or ",".join(str(i) for i in range(args.threads))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if args.threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["OMP_NUM_THREADS"] = str(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.size, Path(tmp) / "bench")
        for side in ("torch", "jax"):
            cmd = ["taskset", "-c", cpus, sys.executable, __file__, "--worker", side, "--ckpt", str(ckpt),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{side} worker failed:\n{proc.stderr[-4000:]}")
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    flops = part_flops(SIZES[args.size], args.batch, args.seq)
    layers = results["jax"]["layers"]
    print(f"model {args.size}, batch {args.batch} x {args.seq}, {args.threads} thread(s) on CPUs {cpus}; "
          f"matmul peak: jax {results['jax']['peak'] / 1e9:.0f}, torch {results['torch']['peak'] / 1e9:.0f} GFLOP/s")
    print(f"| part (fwd+bwd) | x | jax ms | jax GFLOP/s (% peak) | torch ms | torch GFLOP/s (% peak) | jax/torch time |")
    print("|---|---|---|---|---|---|---|")
    for name in ("attention", "mlp", "norm", "loss", "optimizer", "full step"):
        mult = layers if name in ("attention", "mlp") else 2 * layers if name == "norm" else 1
        row = [name, str(mult)]
        for side in ("jax", "torch"):
            ms = results[side]["times"][name] * 1e3 * mult
            fl = 3 * flops.get(name, 0.0) * mult
            rate = f"{fl / (ms / 1e3) / 1e9:.0f} ({fl / (ms / 1e3) / results[side]['peak']:.0%})" if fl else "-"
            row += [f"{ms:.0f}", rate]
        row.append(f"{results['jax']['times'][name] / results['torch']['times'][name]:.2f}")
        print("| " + " | ".join(row) + " |")
    for side in ("jax", "torch"):
        print(f"top ops ({side}, ms per step): " + "; ".join(f"{k} {v:.0f}" for k, v in results[side]["top"]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
