"""Train-step throughput: SFT and GRPO steps (forward, loss, backward, AdamW) of our jitted NNX decoder vs a PyTorch +
transformers loop doing the same work on the same checkpoint and batch, as a ratio measured in one run.

Both sides run in their own subprocess pinned to the same CPUs (`taskset`) with the same thread count (torch:
`set_num_threads`; XLA: its Eigen pool, single-threaded when --threads 1). Rounds interleave the sides (torch, then
each JAX variant) so load drifting on a shared machine hits both; the reported ratio is the median of per-round
ratios, by wall time and by process CPU time (with one thread a side, CPU time is the work done and barely moves
with other jobs on a shared machine; with 2+ threads it also counts spinning). Each worker also measures the float32 matmul peak of its own library on the same CPUs (a 2048^3 matmul), so
the estimated MFU (model FLOPs 6*N*tokens plus attention per CPU-second, over that peak, also timed in CPU
seconds) is against the roofline of this CPU.

  SFT:  loss = mean next-token cross-entropy over the batch.
  GRPO: loss = -mean over completion tokens of min(r*A, clip(r, 0.8, 1.2)*A), r = exp(logp - old_logp), per-row
        advantages A (the clipped policy-gradient surrogate; old log-probs and advantages are inputs, as in a step).
        A = the group-normalised binary rewards of `grpo_rewards` (groups of 4 rows).

Every JAX variant times the trainer's own step: `jax_cat.training.steps.steps_for_config(cfg, model, mesh).step`,
the `Step` `python -m jax_cat.train` runs, built from a Config (`trainer_config`: strategy pass@1, i.e. plain CE /
GRPO; AdamW at a constant 1e-5 without clipping or weight decay, as torch's) on the model the CLI's loader gives
(`jax_cat.training.runtime.load_model`): CAT loss, its metrics, the non-finite update guard, the GRPO advantages
computed in the step from the rewards, chunked log-probs and the mesh context. Variants change only recipe keys:
trainer (the defaults), trainer_scan (model.scan_layers), trainer_full_logits (model.logprob_chunk = none: the
whole [B, T, vocab] logits), trainer_bf16 (model.compute_dtype = bfloat16; slow on CPUs without bf16 matmul
units). The first-step losses agree with torch's (checked here) and with a hand-written reference loss
(tests/training/test_bench_trainer_step.py). --json PATH writes every figure (the format `main` builds).

    .venv/bin/python benchmarks/train_step.py                          # 39.3M Qwen2 shape, B=8, T=256, 2 threads
    .venv/bin/python benchmarks/train_step.py --threads 1 --cpus 0     # both sides pinned to one core
    .venv/bin/python benchmarks/train_step.py --variants trainer,trainer_full_logits --rounds 3
    .venv/bin/python benchmarks/train_step.py --variants trainer --json /tmp/train.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_forward import SIZES, batch, build_checkpoint  # noqa: E402

VARIANTS = {  # recipe keys (`--set` spellings) of each JAX variant, each timed against the same torch loop
    "trainer": {},
    "trainer_scan": {"model.scan_layers": True},
    "trainer_full_logits": {"model.logprob_chunk": None},
    "trainer_bf16": {"model.compute_dtype": "bfloat16"},
}
CLIP = 0.2
GOAL = 1.2  # issue 12: the train step at >= 1.2x PyTorch's tokens/s
GROUP = 4  # GRPO rows per prompt: advantages are the group-normalised binary rewards (GRPO's, = CAT with PassAtN(1))


def grpo_rewards(b: int):
    """Binary rewards [B] with mixed outcomes in every group of GROUP rows, and their group ids (fixed)."""
    import numpy as np

    rewards = np.tile(np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0], np.float32), -(-b // 8))[:b]
    return rewards, (np.arange(b) // GROUP).astype(np.int32)


def grpo_inputs(b: int, t: int, prompt_len: int):
    """Loss mask over completion tokens, per-row advantages and old log-probs (fixed, reproducible).

    Advantages: GRPO's (r - group mean) / (group std (ddof 1) + 1e-4) of `grpo_rewards`, computed here in numpy so
    the torch loop and the hand-written step get the numbers the library's step derives from the rewards."""
    import numpy as np

    rng = np.random.default_rng(1)
    mask = np.zeros((b, t - 1), np.float32)
    mask[:, prompt_len - 1:] = 1.0
    rewards, groups = grpo_rewards(b)
    adv = np.zeros(b, np.float64)
    for g in np.unique(groups):
        r = rewards[groups == g].astype(np.float64)
        adv[groups == g] = (r - r.mean()) / ((r.std(ddof=1) if r.size > 1 else 0.0) + 1e-4)
    old = (-rng.uniform(5.0, 12.0, size=(b, t - 1))).astype(np.float32)
    return mask, adv.astype(np.float32), old


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CPU_TIMES: list[float] = []  # process CPU seconds of each timed call (robust to other jobs on a shared machine)


def _time(fn, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls after `warmup` calls; their CPU seconds go to CPU_TIMES."""
    for _ in range(warmup):
        fn()
    times = []
    CPU_TIMES.clear()
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        CPU_TIMES.append(time.process_time() - cpu)
    return times


def trainer_config(kind: str, b: int, t: int, prompt_len: int, options: dict | None = None, *, lr: float = 1e-5):
    """The Config whose step the benchmark times: `kind` ("sft" / "grpo") on a [b, t] batch (GRPO: groups of GROUP
    rows, the completion after `prompt_len` tokens), strategy pass@1, AdamW at a constant `lr` without clipping or
    weight decay (as torch's), the token surrogate clipped at 1 +- CLIP, token_mean; `options`: recipe keys."""
    from jax_cat.training import load_config

    keys = {"strategy": "pass@1", "optimizer.learning_rate": lr, "optimizer.warmup_steps": 0,
            "optimizer.schedule": "constant", "optimizer.weight_decay": 0.0, "optimizer.clip_norm": 0.0,
            "mesh.data": 1, "train.steps": 1, "model.path": "unused"}
    if kind == "sft":
        keys.update({"train.method": "sft", "data.batch_size": b, "data.max_prompt_len": t // 2,
                     "data.max_target_len": t - t // 2})
    else:
        keys.update({"train.method": "grpo", "data.batch_size": b // GROUP, "rollout.group_size": GROUP,
                     "data.max_prompt_len": prompt_len, "rollout.max_new_tokens": t - prompt_len,
                     "loss.clip_eps_low": CLIP, "loss.clip_eps_high": CLIP, "loss.surrogate": "token",
                     "loss.reduction": "token_mean"})
    keys.update(options or {})
    return load_config(None, keys)


def trainer_step(model, kind: str, ids, grpo, *, options: dict | None = None, lr: float = 1e-5):
    """The trainer's step for `kind` on one device -> (step, state, batch): `steps.steps_for_config` of
    `trainer_config` (what `run_sft` / `run_grpo` build), its initial state and the batch placed for it."""
    import jax
    import numpy as np

    from jax_cat.sharding import make_mesh
    from jax_cat.training import steps

    ids = np.asarray(ids)
    b, t = ids.shape
    mask, _, old = (np.asarray(x) for x in grpo)
    prompt_len = int(t - mask[0].sum())  # the mask covers the completion's targets, ids[:, prompt_len:]
    cfg = trainer_config(kind, b, t, prompt_len, options, lr=lr)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    built = steps.steps_for_config(cfg, model, mesh)
    if kind == "sft":
        batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids))
    else:
        rewards, groups = grpo_rewards(b)
        batch = dict(input_ids=ids, attention_mask=np.ones_like(ids),
                     completion_mask=np.ones((b, t - prompt_len), np.int32), rewards=rewards, group_ids=groups,
                     answer_ids=np.zeros(b, np.int32), old_logprobs=old[:, prompt_len - 1:])
    batch = jax.device_put(batch, built.step.batch_sharding)
    return built.step, steps.init_state(model, built.tx, built.shardings), batch


def run_jax(ckpt: Path, kind: str, b: int, t: int, warmup: int, repeats: int, options: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from jax_cat.sharding import make_mesh
    from jax_cat.training.runtime import load_model

    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    _time(lambda: jax.block_until_ready(mm(a)), 1, 5)
    peak = 2 * 2048**3 / statistics.median(CPU_TIMES)

    grpo = grpo_inputs(b, t, t // 4)
    # the model as the CLI loads it (dtypes, scan) for this variant's recipe keys
    cfg = trainer_config(kind, b, t, t // 4, options).replace(**{"model.path": str(ckpt)})
    model, _ = load_model(cfg, make_mesh(data=1, devices=jax.devices()[:1]))
    ids = batch(model.config.vocab_size, b, t)
    step, state0, data = trainer_step(model, kind, ids, grpo, options=options)
    n_params = model.num_params
    del model
    state = {"s": state0}
    del state0
    start = time.perf_counter()
    compiled = step.lower(state["s"], data).compile()
    compile_s = time.perf_counter() - start

    def call():
        state["s"], metrics = compiled(state["s"], data)
        return metrics["loss"]

    first_loss = None

    def run():
        nonlocal first_loss
        loss = jax.block_until_ready(call())
        first_loss = float(loss) if first_loss is None else first_loss

    times = _time(run, warmup, repeats)
    return dict(side="jax", loss=first_loss, times=times, cpu_times=list(CPU_TIMES), compile_s=compile_s, params=n_params,
                peak_flops=peak, peak_rss_mib=peak_rss_mib())


def run_torch(ckpt: Path, kind: str, b: int, t: int, warmup: int, repeats: int, threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    a = torch.ones(2048, 2048)
    _time(lambda: a @ a, 1, 5)
    peak = 2 * 2048**3 / statistics.median(CPU_TIMES)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).train()
    ids = torch.from_numpy(batch(model.config.vocab_size, b, t).astype("int64"))
    mask, adv, old = (torch.from_numpy(x) for x in grpo_inputs(b, t, t // 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    first_loss = None

    def run():
        nonlocal first_loss
        opt.zero_grad(set_to_none=True)
        if kind == "sft":
            loss = model(input_ids=ids, labels=ids).loss
        else:
            logits = model(input_ids=ids).logits[:, :-1].float()
            logp = torch.gather(torch.log_softmax(logits, -1), -1, ids[:, 1:, None])[..., 0]
            ratio = torch.exp(logp - old)
            surrogate = torch.minimum(ratio * adv[:, None], torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * adv[:, None])
            loss = -(surrogate * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        first_loss = float(loss) if first_loss is None else first_loss

    times = _time(run, warmup, repeats)
    return dict(side="torch", loss=first_loss, times=times, cpu_times=list(CPU_TIMES), params=sum(p.numel() for p in model.parameters()),
                peak_flops=peak, peak_rss_mib=peak_rss_mib(), threads=torch.get_num_threads())


def worker(side: str, args, ckpt: Path, kind: str, variant: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if args.threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.compile_cache:  # later rounds reuse the first round's executables (compile time is reported, not timed)
        env["JAX_COMPILATION_CACHE_DIR"] = str(args.compile_cache)
    cmd = ["taskset", "-c", args.cpus, sys.executable, __file__, "--worker", side, "--ckpt", str(ckpt),
           "--kind", kind, "--variant", variant, "--batch", str(args.batch), "--seq", str(args.seq),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{side} {kind} {variant} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_flops_per_token(config: dict, n_params: int, t: int) -> float:
    """Training FLOPs per token: 6 * N (dense) plus attention scores and values, 12 * layers * T/2 * heads*head_dim."""
    attn = 12 * config["num_hidden_layers"] * (t / 2) * config["num_attention_heads"] * config["head_dim"]
    return 6 * n_params + attn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="40m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--kinds", default="sft,grpo")
    parser.add_argument("--variants", default="trainer,trainer_scan")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpus", default=None, help="taskset CPU list for both sides (default 0..threads-1)")
    parser.add_argument("--compile-cache", type=Path, default=None, help="JAX persistent compilation cache dir")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (a JSON object; see main)")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "jax":
            out = run_jax(args.ckpt, args.kind, args.batch, args.seq, args.warmup, args.repeats,
                          dict(VARIANTS[args.variant]))
        else:
            out = run_torch(args.ckpt, args.kind, args.batch, args.seq, args.warmup, args.repeats, args.threads)
        print(json.dumps(out))
        return
    args.cpus = args.cpus or ",".join(str(i) for i in range(args.threads))
    kinds, variants = args.kinds.split(","), args.variants.split(",")
    tokens = args.batch * args.seq
    report = dict(benchmark="train_step", size=args.size, batch=args.batch, seq=args.seq, threads=args.threads,
                  cpus=args.cpus, rounds=args.rounds, repeats=args.repeats, warmup=args.warmup, goal_ratio=GOAL,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_avg=os.getloadavg()[0], kinds={})
    print(f"model {args.size}, batch {args.batch} x {args.seq}, {args.threads} thread(s) pinned to CPUs {args.cpus}, "
          f"{args.rounds} interleaved round(s), median of {args.repeats} steps after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.size, Path(tmp) / f"bench-{args.size}")
        for kind in kinds:
            ratios: dict[str, list[float]] = {v: [] for v in variants}
            cpu_ratios: dict[str, list[float]] = {v: [] for v in variants}
            last: dict[str, dict] = {}
            for r in range(args.rounds):
                torch_res = worker("torch", args, ckpt, kind)
                torch_tok = tokens / statistics.median(torch_res["times"])
                last["torch"] = dict(torch_res, tok_s=torch_tok)
                for v in variants:
                    res = worker("jax", args, ckpt, kind, v)
                    tok = tokens / statistics.median(res["times"])
                    if abs(res["loss"] - torch_res["loss"]) > 2e-3 * max(1.0, abs(torch_res["loss"])):
                        raise SystemExit(f"{kind}/{v}: loss mismatch jax {res['loss']} vs torch {torch_res['loss']}")
                    ratios[v].append(tok / torch_tok)
                    cpu_ratios[v].append(statistics.median(torch_res["cpu_times"]) / statistics.median(res["cpu_times"]))
                    last[v] = dict(res, tok_s=tok)
            flops_tok = model_flops_per_token(SIZES[args.size], last[variants[0]]["params"], args.seq)
            t = last["torch"]
            for r in last.values():
                r["cpu_tok_s"] = tokens / statistics.median(r["cpu_times"])
            # each library's own 1-thread matmul speed on these CPUs: the machine's fingerprint (XLA:CPU compiles for
            # the host's ISA, MKL picks its own path; docs/benchmarks.md, "Why the ratio moves between machines")
            matmul_gflops = dict(torch=t["peak_flops"] / 1e9,
                                 jax=max(last[v]["peak_flops"] for v in variants) / 1e9)
            roof = max(r["peak_flops"] for r in last.values())  # this CPU's matmul roofline: the faster library's
            for r in last.values():
                r["peak_flops"] = roof
            print(f"[{kind}] torch: {t['tok_s']:7.0f} tok/s wall, {t['cpu_tok_s']:7.0f} tok per CPU-s, MFU ~"
                  f"{flops_tok * t['cpu_tok_s'] / t['peak_flops']:.0%} "
                  f"(of the faster library's matmul peak, {roof / 1e9:.0f} GFLOP/s per core), peak RSS {t['peak_rss_mib']:.0f} MiB, "
                  f"loss {t['loss']:.4f}")
            for v in variants:
                j = last[v]
                print(f"[{kind}] jax/{v:12s}: {j['tok_s']:7.0f} tok/s wall, {j['cpu_tok_s']:7.0f} tok per CPU-s, MFU ~"
                      f"{flops_tok * j['cpu_tok_s'] / j['peak_flops']:.0%}"
                      f" (matmul peak {j['peak_flops'] / 1e9:.0f} GFLOP/s), peak RSS {j['peak_rss_mib']:.0f} MiB, "
                      f"compile {j['compile_s']:.1f}s; ratio jax/torch tokens/s median {statistics.median(ratios[v]):.2f}x"
                      f" wall (rounds: {', '.join(f'{x:.2f}' for x in ratios[v])}), "
                      f"{statistics.median(cpu_ratios[v]):.2f}x per CPU-s (rounds: "
                      f"{', '.join(f'{x:.2f}' for x in cpu_ratios[v])}); goal >= {GOAL}x", flush=True)
            # --json: per kind, torch's and each variant's figures; ratios are medians of per-round jax/torch ratios
            side = lambda r: {k: r[k] for k in ("tok_s", "cpu_tok_s", "loss", "peak_rss_mib", "compile_s")
                              if k in r} | {"mfu": flops_tok * r["cpu_tok_s"] / r["peak_flops"]}
            report["kinds"][kind] = dict(torch=side(t), matmul_peak_flops=roof, matmul_gflops=matmul_gflops, variants={
                v: side(last[v]) | dict(ratio_wall=statistics.median(ratios[v]), ratio_cpu=statistics.median(
                    cpu_ratios[v]), rounds_wall=ratios[v], rounds_cpu=cpu_ratios[v]) for v in variants})
            if args.json:
                from jax_cat.io.atomic import atomic_write_text

                atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
