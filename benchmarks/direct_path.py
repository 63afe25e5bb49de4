"""The model called directly, the way a user writes a training loop around it: `nnx.jit` + `nnx.Optimizer`, the
same with `nnx.cached_partial`, and `nnx.split` once + `jax.jit` on a pure function of (params, opt_state), each
timed against the torch + transformers loop of benchmarks/train_step.py (same checkpoint, batch and full-logit
cross-entropy, AdamW lr 1e-5 without decay) on one pinned core with one thread a side.

What it separates: the per-call cost of each way of calling (Python-side graph traversal of `nnx.jit`: flattening the
module and optimizer graph into arrays and back on every call), from the compiled step's own work. `--size small
--batch 1 --seq 16` makes the step nearly free, so the per-call figures are that overhead; at the 39.3M shape it is
noise against seconds of compute. Times are process CPU seconds (one thread: the work done, robust to load) and
wall; the ratio to torch is tokens per CPU-second. Losses of the first step agree across paths (checked).

    .venv/bin/python benchmarks/direct_path.py                                   # 39.3M, B=8, T=256, CPU 0
    .venv/bin/python benchmarks/direct_path.py --size small --batch 1 --seq 16 --repeats 200 --no-torch
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

PATHS = ("nnx_jit", "cached_partial", "split_jit")


def build_paths(model, lr: float):
    """{name: (call(ids) -> loss, tokens-independent setup)} for each way of calling the model."""
    import jax
    import optax
    from flax import nnx

    def ce(logits, ids):
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    tx = optax.adamw(lr, weight_decay=0.0)
    out = {}

    def fresh():  # a copy with its own buffers: every path donates its state
        graphdef, state = nnx.split(model)
        return nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), state))

    # 1. what the Flax NNX guides show: nnx.jit over the module and the optimizer, updated in place
    @nnx.jit(donate_argnums=(0, 1))
    def nnx_step(model, opt, ids):
        loss, grads = nnx.value_and_grad(lambda m: ce(m(ids), ids))(model)
        opt.update(model, grads)
        return loss

    m1 = fresh()
    o1 = nnx.Optimizer(m1, tx, wrt=nnx.Param)
    out["nnx_jit"] = lambda ids: nnx_step(m1, o1, ids)

    # 2. the same function, its graph traversal cached (flax's nnx.cached_partial)
    m2 = fresh()
    o2 = nnx.Optimizer(m2, tx, wrt=nnx.Param)
    cached = nnx.cached_partial(nnx_step, m2, o2)
    out["cached_partial"] = lambda ids: cached(ids)

    # 3. split once, jax.jit a pure function of arrays, merge back only when the model is needed as a module
    graphdef, params = nnx.split(fresh(), nnx.Param)
    state = {"params": params, "opt": tx.init(params)}

    @jax.jit
    def pure_step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(lambda p: ce(nnx.merge(graphdef, p)(ids), ids))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    pure_step = jax.jit(pure_step.__wrapped__, donate_argnums=(0, 1))

    def split_call(ids):
        state["params"], state["opt"], loss = pure_step(state["params"], state["opt"], ids)
        return loss

    out["split_jit"] = split_call
    return out


def run_jax(ckpt: Path, b: int, t: int, warmup: int, repeats: int, paths: list[str]) -> dict:
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from model_forward import batch

    from jax_cat.models import load_hf

    model = load_hf(ckpt)
    ids = jnp.asarray(batch(model.config.vocab_size, b, t))
    calls = build_paths(model, 1e-5)
    res = {}
    for name in paths:
        call = calls[name]
        start = time.perf_counter()
        loss = float(jax.block_until_ready(call(ids)))  # compile + first step
        first_s = time.perf_counter() - start
        for _ in range(warmup):
            jax.block_until_ready(call(ids))
        cpu, wall = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            jax.block_until_ready(call(ids))
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        res[name] = dict(loss=loss, first_s=first_s, cpu_s=statistics.median(cpu), wall_s=statistics.median(wall))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="40m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="torch and JAX workers interleaved this many times")
    p.add_argument("--cpus", default="0")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    paths = args.paths.split(",")
    if args.worker:
        print(json.dumps(run_jax(args.ckpt, args.batch, args.seq, args.warmup, args.repeats, paths)))
        return
    import subprocess

    import train_step as ts
    from model_forward import build_checkpoint

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", ""))
    tokens = args.batch * args.seq
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.size, Path(tmp) / "ckpt")
        targs = SimpleNamespace(threads=1, cpus=args.cpus, batch=args.batch, seq=args.seq, warmup=args.warmup,
                                repeats=args.repeats, compile_cache=None)
        for _ in range(args.rounds):
            torch_res = None if args.no_torch else ts.worker("torch", targs, ckpt, "sft")
            cmd = ["taskset", "-c", args.cpus, sys.executable, __file__, "--worker", "--ckpt", str(ckpt), "--batch",
                   str(args.batch), "--seq", str(args.seq), "--warmup", str(args.warmup), "--repeats",
                   str(args.repeats), "--paths", args.paths]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"jax worker failed:\n{proc.stderr[-3000:]}")
            jax_res = json.loads(proc.stdout.strip().splitlines()[-1])
            rounds.append(dict(torch=torch_res, jax=jax_res))
    print(f"{args.size}, B={args.batch}, T={args.seq}, one thread a side pinned to CPUs {args.cpus}, "
          f"{args.rounds} round(s), median of {args.repeats} calls")
    for name in paths:
        cpu = [r["jax"][name]["cpu_s"] for r in rounds]
        line = (f"{name:15s} {statistics.median(cpu) * 1e3:9.2f} CPU-ms a step, wall "
                f"{statistics.median([r['jax'][name]['wall_s'] for r in rounds]) * 1e3:9.2f} ms, "
                f"first call {rounds[-1]['jax'][name]['first_s']:.1f} s, loss {rounds[-1]['jax'][name]['loss']:.5f}")
        if not args.no_torch:
            ratios = [statistics.median(r["torch"]["cpu_times"]) / r["jax"][name]["cpu_s"] for r in rounds]
            line += (f"; vs torch {statistics.median(ratios):.2f}x tokens per CPU-s (rounds "
                     f"{', '.join(f'{x:.2f}' for x in ratios)})")
        print(line)
    if not args.no_torch:
        t = [statistics.median(r["torch"]["cpu_times"]) for r in rounds]
        print(f"torch           {statistics.median(t) * 1e3:9.2f} CPU-ms a step ({tokens / statistics.median(t):.0f} "
              f"tok per CPU-s), loss {rounds[-1]['torch']['loss']:.5f}")
    if args.json:
        args.json.write_text(json.dumps(dict(size=args.size, batch=args.batch, seq=args.seq, rounds=rounds)) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
