"""Accelerator efficiency: bf16 train-step MFU on a Qwen2.5-0.5B shape and batch-1 decode as a share of HBM bandwidth.

  MFU   = model FLOPs per token x tokens/s / the device's peak dense bf16 FLOP/s, with model FLOPs per token =
          6 x (parameters used in matmuls: all but an untied input embedding) + attention (12 x layers x T/2 x
          heads x head_dim: QK^T and AV, forward + backward, causal). The step is the library's real SFT step
          (`jax_cat.training.steps.make_sft_step`: forward, loss, backward, AdamW on float32 master weights, bf16
          compute, donation), on random weights of the shape (no checkpoint needed).
  HBM % = bytes a decode step must read (every weight used: all parameters, less an untied input embedding, of
          which one row is read; plus the K and V cache of the tokens decoded so far, at the mean context length of
          the timed steps) / the step's time / the device's HBM bandwidth. The step time is the slope between two
          greedy `jax_cat.sampling.sample_tokens` calls of different lengths (so the prefill and the call overhead
          cancel), batch 1, bf16 weights and cache.

Peak FLOP/s and bandwidth come from `DEVICES` by `jax.devices()[0].device_kind` (vendor datasheet figures, dense
bf16, no sparsity); --peak-tflops / --hbm-gbps override them (and are required for a device not in the table). On
the CPU backend nothing is measured (the figures are for accelerators): the script says so, unless --allow-cpu
(with both overrides) runs the same code, e.g. on --model tiny as a smoke test.

    .venv/bin/python benchmarks/accelerator.py --json acc.json                  # on a GPU/TPU machine
    .venv/bin/python benchmarks/accelerator.py --model tiny --allow-cpu --peak-tflops 0.2 --hbm-gbps 20
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# (substring of device_kind, lower case; the first match wins) -> (name, peak dense bf16 FLOP/s, HBM bytes/s)
DEVICES: list[tuple[str, str, float, float]] = [
    ("h200", "NVIDIA H200 (SXM)", 989e12, 4.8e12),
    ("gh200", "NVIDIA GH200", 989e12, 4.0e12),
    ("h100 pcie", "NVIDIA H100 PCIe", 756e12, 2.0e12),
    ("h100 nvl", "NVIDIA H100 NVL", 835e12, 3.9e12),
    ("h100", "NVIDIA H100 SXM", 989e12, 3.35e12),
    ("a100-sxm4-40gb", "NVIDIA A100 40GB SXM", 312e12, 1.555e12),
    ("a100-pcie-40gb", "NVIDIA A100 40GB PCIe", 312e12, 1.555e12),
    ("a100 80gb pcie", "NVIDIA A100 80GB PCIe", 312e12, 1.935e12),
    ("a100", "NVIDIA A100 80GB SXM", 312e12, 2.039e12),
    ("tpu v4", "TPU v4", 275e12, 1.2e12),
    ("tpu v5 lite", "TPU v5e", 197e12, 0.819e12),
    ("tpu v5e", "TPU v5e", 197e12, 0.819e12),
    ("tpu v5p", "TPU v5p", 459e12, 2.765e12),
    ("tpu v5", "TPU v5p", 459e12, 2.765e12),
    ("tpu v6 lite", "TPU v6e", 918e12, 1.64e12),
    ("tpu v6e", "TPU v6e", 918e12, 1.64e12),
]
MFU_GOAL, HBM_GOAL = 0.45, 0.70
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)


def device_peaks(kind: str, peak_tflops: float | None = None, hbm_gbps: float | None = None) -> dict | None:
    """{name, peak_flops, hbm_bytes_s, source} for a `device_kind` (overrides win); None when neither is known."""
    kind_l = kind.lower()
    row = next((r for r in DEVICES if r[0] in kind_l), None)
    name, flops, bw = (row[1], row[2], row[3]) if row else (kind, None, None)
    if peak_tflops:
        flops = peak_tflops * 1e12
    if hbm_gbps:
        bw = hbm_gbps * 1e9
    if flops is None or bw is None:
        return None
    source = "table" if row and not (peak_tflops or hbm_gbps) else ("flags" if not row else "table+flags")
    return dict(name=name, peak_flops=flops, hbm_bytes_s=bw, source=source)


def matmul_params(config, n_params: int) -> int:
    """Parameters that take part in matmuls: all of them, less the input embedding when it is not tied to the head
    (its forward is a row lookup)."""
    return n_params - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)


def train_flops_per_token(config, n_params: int, seq: int) -> float:
    """6 x matmul parameters + causal attention (QK^T and AV, forward and backward: 12 x L x T/2 x H x head_dim)."""
    attn = 12 * config.num_hidden_layers * (seq / 2) * config.num_attention_heads * config.head_dim
    return 6 * matmul_params(config, n_params) + attn


def decode_bytes_per_step(config, n_params: int, context: float, param_bytes: int = 2, cache_bytes: int = 2,
                          batch: int = 1) -> float:
    """Bytes one decode step must read: the weights it uses (once, whatever the batch) + each row's K and V cache."""
    weights = matmul_params(config, n_params) * param_bytes
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * cache_bytes * context * batch
    return weights + kv


def model_config(name: str):
    from jax_cat.models import ModelConfig

    if name == "tiny":
        fields = dict(TINY)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from plan_memory import MODELS

        fields = dict(MODELS[name])
    return ModelConfig(**fields, model_type="qwen2", attention_bias=True, rms_norm_eps=1e-6, rope_theta=1e6,
                       max_position_embeddings=32768)


def _median_wall(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_config(*, batch: int, seq: int, steps: int, scan: bool, remat: str):
    """The recipe of the timed step: SFT (pass@1 = plain CE) on [batch, seq], bf16 compute on float32 masters,
    AdamW (constant 1e-5, clip 1.0), one device; everything else the trainer's defaults (chunked log-probs...)."""
    from jax_cat.training import load_config

    return load_config(None, {
        "train.method": "sft", "train.steps": steps + 2, "strategy": "pass@1", "data.batch_size": batch,
        "data.max_prompt_len": seq // 2, "data.max_target_len": seq - seq // 2, "model.compute_dtype": "bfloat16",
        "model.param_dtype": "float32", "model.scan_layers": scan, "model.remat": remat if remat != "none" else False,
        "optimizer.learning_rate": 1e-5, "optimizer.warmup_steps": 0, "optimizer.schedule": "constant",
        "optimizer.weight_decay": 0.0, "optimizer.clip_norm": 1.0, "mesh.data": 1})


def measure_mfu(config, peaks: dict, *, batch: int, seq: int, steps: int, scan: bool, remat: str,
                attention: str) -> dict:
    """Tokens/s and MFU of the trainer's own bf16 SFT step (float32 masters) on random weights of `config`: the
    `Step` of `steps.steps_for_config(step_config(...), model, mesh)`, what `run_sft` runs for that recipe."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jax_cat.models import CausalLM
    from jax_cat.sharding import make_mesh
    from jax_cat.training import steps as st

    cfg = step_config(batch=batch, seq=seq, steps=steps, scan=scan, remat=remat)
    model = nnx.jit(lambda: CausalLM(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                     scan_layers=scan, remat=cfg.model.remat, attention_impl=attention))()
    n_params = model.num_params
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    built = st.steps_for_config(cfg, model, mesh)
    step = built.step
    state = st.init_state(model, built.tx, built.shardings)
    del model
    ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, seq)).astype(np.int32)
    data = jax.device_put(dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids)),
                          step.batch_sharding)
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    box = {"s": state}

    def run():
        box["s"], metrics = compiled(box["s"], data)
        jax.block_until_ready(metrics["loss"])
        return metrics

    metrics = run()  # warm-up (first-touch allocations)
    run()
    step_s = _median_wall(run, steps)
    tokens_s = batch * seq / step_s
    flops_tok = train_flops_per_token(config, n_params, seq)
    return dict(batch=batch, seq=seq, params=n_params, matmul_params=matmul_params(config, n_params), scan=scan,
                remat=remat, attention=attention, compile_s=compile_s, step_s=step_s, tokens_s=tokens_s,
                flops_per_token=flops_tok, achieved_flops=flops_tok * tokens_s,
                mfu=flops_tok * tokens_s / peaks["peak_flops"], loss=float(metrics["loss"]), goal=MFU_GOAL)


def measure_decode(config, peaks: dict, *, prompt: int, new_short: int, new_long: int, repeats: int,
                   scan: bool) -> dict:
    """Batch-1 greedy decode step time (slope of two call lengths) and its share of HBM bandwidth, bf16."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jax_cat.models import CausalLM
    from jax_cat.sampling import sample_tokens

    model = nnx.jit(lambda: CausalLM(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, scan_layers=scan))()
    n_params = model.num_params
    ids = np.random.default_rng(0).integers(3, config.vocab_size, size=(1, prompt)).astype(np.int32)
    mask = np.ones_like(ids)

    def call(n):
        out = sample_tokens(model, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_ids=(),
                            key=jax.random.key(0))
        jax.block_until_ready(out.tokens)

    times = {}
    for n in (new_short, new_long):
        call(n)  # compile + warm-up
        times[n] = _median_wall(lambda: call(n), repeats)
    step_s = (times[new_long] - times[new_short]) / (new_long - new_short)
    context = prompt + (new_short + new_long) / 2  # mean cached length over the steps the slope measures
    nbytes = decode_bytes_per_step(config, n_params, context)
    return dict(batch=1, prompt=prompt, new_tokens=[new_short, new_long], call_s=[times[new_short], times[new_long]],
                step_s=step_s, tokens_s=1 / step_s, params=n_params, context=context, bytes_per_step=nbytes,
                achieved_bytes_s=nbytes / step_s, hbm_fraction=nbytes / step_s / peaks["hbm_bytes_s"], goal=HBM_GOAL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="0.5b", help="a benchmarks/plan_memory.py MODELS shape, or 'tiny'")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
    p.add_argument("--remat", default="none", help="none | full | dots | dots_no_batch")
    p.add_argument("--no-scan", action="store_true", help="per-layer loop instead of scan over stacked layers")
    p.add_argument("--attention", default="dot_product_attention", help="xla | dot_product_attention")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", default="64,320", help="the two decode lengths whose time difference is timed")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak dense bf16 TFLOP/s")
    p.add_argument("--hbm-gbps", type=float, default=None, help="override the device's HBM bandwidth, GB/s")
    p.add_argument("--allow-cpu", action="store_true", help="measure on the CPU backend too (needs both overrides)")
    p.add_argument("--only", choices=["mfu", "decode"], default=None)
    p.add_argument("--json", type=Path, default=None, help="write the result here (JSON object)")
    args = p.parse_args(argv)

    import jax

    backend = jax.default_backend()
    kind = jax.devices()[0].device_kind
    out: dict = dict(benchmark="accelerator", backend=backend, device_kind=kind, model=args.model,
                     date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    peaks = device_peaks(kind, args.peak_tflops, args.hbm_gbps)
    if backend == "cpu" and not args.allow_cpu:
        out["not_measured"] = "no accelerator (CPU only)"
    elif peaks is None:
        out["not_measured"] = (f"peak FLOP/s and HBM bandwidth of device kind {kind!r} unknown: pass --peak-tflops "
                               "and --hbm-gbps")
    else:
        out["peaks"] = peaks
        config = model_config(args.model)
        new_short, new_long = (int(x) for x in args.new.split(","))
        if args.only in (None, "mfu"):
            print(f"[accelerator] train step {args.model} B={args.batch} T={args.seq} on {kind}", file=sys.stderr)
            out["mfu"] = measure_mfu(config, peaks, batch=args.batch, seq=args.seq, steps=args.steps,
                                     scan=not args.no_scan, remat=args.remat, attention=args.attention)
        if args.only in (None, "decode"):
            print(f"[accelerator] decode {args.model} batch 1, prompt {args.prompt}", file=sys.stderr)
            out["decode"] = measure_decode(config, peaks, prompt=args.prompt, new_short=new_short,
                                           new_long=new_long, repeats=args.repeats, scan=not args.no_scan)
    if "not_measured" in out:
        print(f"accelerator figures: not measured: {out['not_measured']}")
    else:
        if "mfu" in out:
            m = out["mfu"]
            print(f"bf16 train step {args.model} B={m['batch']} T={m['seq']}: {m['tokens_s']:,.0f} tok/s, "
                  f"{m['achieved_flops'] / 1e12:.1f} TFLOP/s of {peaks['peak_flops'] / 1e12:.0f}: MFU "
                  f"{m['mfu']:.1%} (goal >= {MFU_GOAL:.0%}); compile {m['compile_s']:.1f}s")
        if "decode" in out:
            d = out["decode"]
            print(f"batch-1 decode {args.model}: {d['step_s'] * 1e3:.2f} ms a step, {d['bytes_per_step'] / 1e9:.2f} "
                  f"GB a step, {d['achieved_bytes_s'] / 1e9:.0f} GB/s of {peaks['hbm_bytes_s'] / 1e9:.0f}: "
                  f"{d['hbm_fraction']:.1%} of HBM bandwidth (goal >= {HBM_GOAL:.0%})")
    if args.json:
        from jax_cat.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
