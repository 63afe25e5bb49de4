"""GRPO rollouts with a LoRA policy: adapters applied in every decode step vs merged once per rollout batch
(`lora.rollout`, docs/lora.md), with the trainer's own code: `rollout_policy` then `collect_rollouts` (sampler,
rewards, assembly), as `run_grpo` runs them for `python -m jax_cat.train` with `[lora]`.

Shapes: Qwen2.5-0.5B and -1.5B (real hidden / MLP / heads / vocabulary, tied embeddings) cut to --layers layers
(the CPU cannot hold the full models' decode in a benchmark's time), LoRA r=16 alpha=32 on all seven projections, B
drawn non-zero, float32 (the trainer's default compute dtype). One XLA thread, no EOS (every row decodes
--new-tokens tokens). After one warm-up call per mode, --rounds rounds each time both modes in turn (the order
alternating), so load drifting on the shared machine hits both; each call's process CPU time and wall time are
kept. Also timed alone: the merge (`rollout_policy(..., "merged")` until its kernels are ready).

Per shape and depth it prints the medians and the ratio adapters / merged (CPU time); from two depths it fits
t = a + b * layers per mode and extrapolates the full depth (24 / 28 layers) — an extrapolation, labelled so.
--results appends one JSON row per (shape, layers) with the settings, the figures and the machine context
(`benchmarks/report.machine_context`: CPU, versions, commit).

    taskset -c 0 .venv/bin/python benchmarks/lora_rollout.py --layers 2,4 --new-tokens 32 \
        --results docs/results_data/lora_rollout.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jax_cat.models import CausalLM  # noqa: E402
from jax_cat.models.config import ModelConfig  # noqa: E402
from jax_cat.sharding import make_mesh  # noqa: E402
from jax_cat.training import load_config, steps  # noqa: E402
from jax_cat.training.rollout import collect_rollouts  # noqa: E402
from jax_cat.training.rollout_policy import rollout_policy  # noqa: E402

SHAPES = {  # config.json fields of the Qwen2.5 models (num_hidden_layers is --layers)
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, full_layers=24),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, full_layers=28),
}
MODES = ("adapters", "merged")


class _Tokenizer:
    """collect_rollouts decodes each row for the verifier; random weights write nothing worth decoding."""

    def decode(self, ids, skip_special_tokens=True):
        return ""


def _model(shape: str, layers: int, cfg):
    fields = {k: v for k, v in SHAPES[shape].items() if k != "full_layers"}
    config = ModelConfig.from_hf(dict(fields, num_hidden_layers=layers, max_position_embeddings=4096))
    model = nnx.jit(lambda: CausalLM(config, rngs=nnx.Rngs(0), lora=cfg.lora_config()))()
    rng = np.random.default_rng(1)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if v.get_value().shape[-1] != cfg.lora.rank:  # B [r, *out]: non-zero, as after training
            v.set_value(jnp.asarray(0.01 * rng.standard_normal(v.shape), jnp.float32))
    return model


def measure(shape: str, layers: int, args) -> dict:
    cfg = load_config(None, {"train.method": "grpo", "lora.rank": args.rank, "lora.alpha": args.alpha,
                             "rollout.group_size": args.group_size, "rollout.max_new_tokens": args.new_tokens,
                             "data.batch_size": args.prompts})
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    graphdef, params = steps.split_model(_model(shape, layers, cfg))
    rng = np.random.default_rng(0)
    prompts = {"input_ids": rng.integers(10, 1000, size=(args.prompts, args.prompt_len)).astype(np.int32),
               "attention_mask": np.ones((args.prompts, args.prompt_len), np.int32), "answer": ["0"] * args.prompts}

    def rollout(mode: str) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        policy = rollout_policy(graphdef, params, mode)
        batch, _ = collect_rollouts(policy, _Tokenizer(), prompts, key=jax.random.key(0), cfg=cfg.rollout, mesh=mesh,
                                    eos_token_ids=(), pad_token_id=0,
                                    reward_fn=lambda texts, golds: [0.0] * len(texts))
        jax.block_until_ready(batch.input_ids)
        del policy
        return time.process_time() - c0, time.perf_counter() - w0

    def merge_only() -> float:
        c0 = time.process_time()
        policy = rollout_policy(graphdef, params, "merged")
        jax.block_until_ready(jax.tree.leaves(nnx.state(policy)))
        return time.process_time() - c0

    for mode in MODES:  # compile
        rollout(mode)
    merge_only()
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    merges = []
    for r in range(args.rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            c, w = rollout(mode)
            cpu[mode].append(c)
            wall[mode].append(w)
        merges.append(merge_only())
    med = {m: statistics.median(cpu[m]) for m in MODES}
    return dict(shape=shape, layers=layers, cpu_s=med, wall_s={m: statistics.median(wall[m]) for m in MODES},
                cpu_all=cpu, merge_cpu_s=statistics.median(merges),
                ratio_cpu=statistics.median([a / b for a, b in zip(cpu["adapters"], cpu["merged"])]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--layers", default="2,4", help="comma-separated depths (two or more: the full depth is fitted)")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--results", default=None, help="append one JSON row per (shape, depth) to this file")
    args = p.parse_args(argv)
    from report import machine_context

    context = dict(machine_context(), affinity=sorted(os.sched_getaffinity(0)), xla_flags=os.environ["XLA_FLAGS"],
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load=os.getloadavg()[0])
    settings = {k: getattr(args, k) for k in ("prompts", "group_size", "prompt_len", "new_tokens", "rank", "alpha",
                                              "rounds")}
    depths = [int(x) for x in args.layers.split(",")]
    for shape in args.shapes.split(","):
        per_depth = []
        for layers in depths:
            row = measure(shape, layers, args)
            per_depth.append(row)
            _append(args.results, row, settings, context)
            print(f"{shape} {layers} layers: adapters {row['cpu_s']['adapters']:.2f} CPU-s, merged "
                  f"{row['cpu_s']['merged']:.2f} CPU-s (merge alone {row['merge_cpu_s']:.3f}), adapters/merged "
                  f"{row['ratio_cpu']:.3f}", flush=True)
        if len(per_depth) >= 2:
            lo, hi = per_depth[0], per_depth[-1]
            full = SHAPES[shape]["full_layers"]
            fit = {}
            for m in MODES:
                b = (hi["cpu_s"][m] - lo["cpu_s"][m]) / (hi["layers"] - lo["layers"])
                fit[m] = lo["cpu_s"][m] + b * (full - lo["layers"])
            print(f"{shape} extrapolated to {full} layers (linear in depth): adapters {fit['adapters']:.2f}, merged "
                  f"{fit['merged']:.2f} CPU-s, adapters/merged {fit['adapters'] / fit['merged']:.3f}", flush=True)
            _append(args.results, dict(shape=shape, extrapolated_from=[r["layers"] for r in per_depth],
                                       layers=full, cpu_s=fit, ratio_cpu=fit["adapters"] / fit["merged"]),
                    settings, context)
    return 0


def _append(results: str | None, row: dict, settings: dict, context: dict) -> None:
    """One JSON line per measurement, written at once (a long run on a loaded machine keeps what it measured)."""
    if not results:
        return
    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(dict(figure="LoRA rollout: adapters vs merged, trainer's collect_rollouts",
                                settings=settings, **row, context=context), sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
