"""Where the library's SFT step spends time beyond the hand-written step (benchmarks/train_step.py's `plain`): the
step rebuilt piece by piece, each piece timed in the same single-threaded process, rounds interleaved.

  hand            the hand-written step: hidden states, drop the last position, vocabulary projection, optax CE,
                  value_and_grad, optax AdamW (what train_step.py's `plain` times)
  slice_after     the library's loss as it was: full logits `model(ids, mask)`, then [:, :-1] on the [B, T, V] logits,
                  `losses.cat_sft_loss(PassAtN(1))` (= mean CE), plain AdamW
  slice_before    the same with the last position dropped before the vocabulary projection (steps.sft_loss now)
  +where_guard    slice_before + the non-finite guard as it was (`jnp.where(ok, new, old)` over params and moments)
  +cond_guard     slice_before + the guard as `lax.cond` (steps.apply_update now)
  trainer         the library's step itself (`jax_cat.training.steps.make_sft_step`, via train_step.trainer_step)

Times are process CPU seconds (one thread: the work done, robust to other jobs on a shared machine), median over
--repeats calls in each of --rounds interleaved rounds, as a ratio to `hand`.

    .venv/bin/python benchmarks/trainer_overhead.py                  # 39.3M Qwen2 shape, B=8, T=256, CPU 0
    .venv/bin/python benchmarks/trainer_overhead.py --size small --rounds 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="40m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to pin to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import train_step as ts
    from jax_cat import losses
    from jax_cat.models import load_hf
    from model_forward import batch, build_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = load_hf(build_checkpoint(args.size, Path(tmp) / "ckpt"))
    ids = jnp.asarray(batch(model.config.vocab_size, args.batch, args.seq))
    grpo = tuple(jnp.asarray(x) for x in ts.grpo_inputs(args.batch, args.seq, args.seq // 4))
    tx = optax.adamw(1e-5, weight_decay=0.0)
    graphdef, params = nnx.split(model, nnx.Param)

    def cat_ce(p, ids, slice_first: bool):
        m = nnx.merge(graphdef, p)
        mask = jnp.ones_like(ids)
        if slice_first:
            logits = m.logits_from_hidden(m.hidden_states(ids, mask)[:, :-1])
        else:
            logits = m(ids, mask)[:, :-1]
        return losses.cat_sft_loss(logits, ids[:, 1:], mask[:, 1:], losses.PassAtN(1), reduction="token_mean")[0]

    def update(p, o, g, loss, guard):
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(g))
        if guard == "cond":
            def apply(_):
                u, o2 = tx.update(g, o, p)
                return optax.apply_updates(p, u), o2
            return jax.lax.cond(ok, apply, lambda _: (p, o), None)
        u, o2 = tx.update(g, o, p)
        p2 = optax.apply_updates(p, u)
        if guard == "where":
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
            return keep(p2, p), keep(o2, o)
        return p2, o2

    def build(loss_fn, guard=None):
        def step(p, o, ids):
            loss, g = jax.value_and_grad(loss_fn)(p, ids)
            return (*update(p, o, g, loss, guard), loss)

        box = {"p": jax.tree.map(jnp.copy, params)}
        box["o"] = tx.init(box["p"])
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(box["p"], box["o"], ids).compile()

        def run():
            box["p"], box["o"], loss = compiled(box["p"], box["o"], ids)
            jax.block_until_ready(loss)
        return run

    runs = {
        "hand": build(ts.handwritten_loss(graphdef, "sft", grpo)),
        "slice_after": build(lambda p, i: cat_ce(p, i, False)),
        "slice_before": build(lambda p, i: cat_ce(p, i, True)),
        "+where_guard": build(lambda p, i: cat_ce(p, i, True), "where"),
        "+cond_guard": build(lambda p, i: cat_ce(p, i, True), "cond"),
    }
    step, state, data = ts.trainer_step(model, "sft", ids, grpo)
    compiled, box = step.lower(state, data).compile(), {"s": state}

    def trainer():
        box["s"], metrics = compiled(box["s"], data)
        jax.block_until_ready(metrics["loss"])

    runs["trainer"] = trainer
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            fn()  # warm-up
            cpu = []
            for _ in range(args.repeats):
                start = time.process_time()
                fn()
                cpu.append(time.process_time() - start)
            times[name].append(statistics.median(cpu))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SFT step, {args.size} shape, B={args.batch}, T={args.seq}, 1 thread on CPU {args.cpu}; "
          f"median CPU ms of {args.repeats} calls x {args.rounds} interleaved rounds")
    for name, t in med.items():
        print(f"{name:14s} {t * 1e3:7.0f} ms  {t / med['hand']:.3f}x hand  (rounds: "
              f"{', '.join(f'{x * 1e3:.0f}' for x in times[name])})")


if __name__ == "__main__":
    main()
