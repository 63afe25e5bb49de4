"""GRPO step time and peak memory of jax-cat's trainer against TRL and tunix on one workload, in one run, pinned alike.

The workload (issue 25): a ~2.96M-parameter random Qwen2 written by transformers (with the arithmetic char tokenizer),
8 prompts x 8 samples x 8 new tokens at temperature 1, one AdamW update per rollout batch, beta 0, the same lr,
the same prompts in the same order (the trainer's arithmetic:sum3 stream) and the same exact-match reward. Every
side runs in its own process under `taskset -c CPU` with one thread (torch.set_num_threads(1) + OMP/MKL/OpenBLAS
vars; XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1), --warmup unmeasured steps then
--steps measured ones, sides interleaved over --repeats rounds. jax-cat runs `jax_cat.training.grpo.run_grpo` (what
`python -m jax_cat.train` runs) with timing hooks only (benchmarks/peers/jax_cat_side.py).

    .venv/bin/python benchmarks/grpo_peers.py --setup          # peers' venvs in .peers-venv/ (gitignored), once
    .venv/bin/python benchmarks/grpo_peers.py                  # 3 rounds x (jax-cat, trl, tunix), CPU 0
    .venv/bin/python benchmarks/grpo_peers.py --sides jax-cat --repeats 1 --no-record
    .venv/bin/python benchmarks/grpo_peers.py --sides jax-cat --repeats 2 --no-record --compile-cache /tmp/xla
                                                             # round 1 fills the cache, round 2 hits it

Rows go to docs/results_data/grpo_peers.jsonl (one per side and round, plus a summary row) with the commit, CPU,
versions, pinning and command; the table is printed. TRL and tunix are never project dependencies: --setup installs
them into their own venvs (tunix needs its own JAX, so it gets a venv apart from TRL's).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from common import RESULT_PREFIX, THREAD_VARS, XLA_ONE_THREAD  # noqa: E402

VENVS = ROOT / ".peers-venv"
RESULTS = ROOT / "docs" / "results_data" / "grpo_peers.jsonl"
# name -> (venv folder or None for the project's own interpreter, side script, pip requirements)
SIDES = {
    "jax-cat": (None, "jax_cat_side.py", ()),
    # The same interpreter and packages minus torch (a symlink farm of the project venv's site-packages without
    # torch*, functorch, torchgen): what `pip install jax-cat[all]` gives. The project venv has torch for the tests
    # ([test] extra), and transformers imports it whenever it is installed (AutoTokenizer -> configuration_utils ->
    # modeling_rope_utils), ~180 MiB of RSS a GRPO run never uses.
    "jax-cat-notorch": ("jax-cat-notorch", "jax_cat_side.py", None),
    "trl": ("trl", "trl_side.py", ("torch==2.13.0", "trl==1.16.0", "transformers==5.23.0")),
    "tunix": ("tunix", "tunix_side.py", ("google-tunix==0.1.7",)),
}
# The shared model: Qwen2, d=256, 4 layers, SwiGLU 704, 4 heads (2 KV) of 64, tied embeddings, 18-token vocabulary.
MODEL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
             tie_word_embeddings=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="store_true", help="create the peers' venvs in .peers-venv/ and exit")
    p.add_argument("--sides", default="jax-cat,jax-cat-notorch,trl,tunix", help="comma-separated, from: " + ", ".join(SIDES))
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (every side once a round)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (compilation included)")
    p.add_argument("--steps", type=int, default=10, help="measured steps")
    p.add_argument("--cpu", type=int, default=0, help="the one CPU every side is pinned to")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--work", default=str(ROOT / "runs" / "grpo_peers"), help="checkpoint + workload folder")
    p.add_argument("--no-record", action="store_true", help="print the table, write no rows")
    p.add_argument("--compile-cache", default="off", metavar="DIR|off",
                   help="the jax-cat sides' XLA compilation cache (JAX_CAT_XLA_CACHE; an outer "
                        "JAX_COMPILATION_CACHE_DIR is dropped): off by default, so first_step_s counts the compiles "
                        "as the recorded rows and the peers do; a DIR run twice shows a user's second run")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the jax-cat side (e.g. MALLOC_ARENA_MAX=2), repeatable")
    args = p.parse_args(argv)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in args.sides if s not in SIDES]
    if unknown:
        p.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    if args.repeats < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--repeats, --steps and --warmup must be >= 1 (the first step compiles)")
    return args


def setup() -> None:
    """One venv per peer under .peers-venv/, from the project's Python, with the pinned peer packages."""
    for name, (venv, _, reqs) in SIDES.items():
        if venv is None:
            continue
        if reqs is None:
            without_torch(VENVS / venv)
            print(f"{name}: {VENVS / venv} (the project's packages without torch)")
            continue
        path = VENVS / venv
        if not (path / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        print(f"{name}: pip install {' '.join(reqs)} into {path}", flush=True)
        rc = subprocess.run([str(path / "bin" / "pip"), "install", "-q", *reqs]).returncode
        print(f"{name}: {'ok' if rc == 0 else f'pip failed (exit {rc}); that side will be reported as not installed'}")


TORCH_ENTRIES = ("torch", "functorch", "torchgen")


def without_torch(path: Path) -> None:
    """A venv at `path` whose site-packages links every entry of this interpreter's site-packages except torch's."""
    import shutil
    import sysconfig

    source = Path(sysconfig.get_paths()["purelib"])
    if path.exists():
        shutil.rmtree(path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    target = path / source.relative_to(Path(sys.prefix))
    for entry in source.iterdir():
        if entry.name.split("-")[0].split(".")[0] in TORCH_ENTRIES:
            continue
        link = target / entry.name
        if not link.exists():
            link.symlink_to(entry)


def python_for(side: str) -> Path:
    venv = SIDES[side][0]
    return Path(sys.executable) if venv is None else VENVS / venv / "bin" / "python"


def build_workload(work: Path, args: argparse.Namespace) -> Path:
    """The checkpoint (transformers' Qwen2ForCausalLM, seed 0) + tokenizer and workload.json; reused if present."""
    ckpt = work / "qwen2-2.96m"
    if not (ckpt / "config.json").exists():
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from jax_cat.models.tiny import BOS, EOS, PAD, ARITHMETIC_ALPHABET, build_arithmetic_tokenizer, char_vocab

        vocab = char_vocab(ARITHMETIC_ALPHABET)
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=len(vocab), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                             pad_token_id=vocab[PAD], **MODEL)
        model = Qwen2ForCausalLM(config).float()
        model.save_pretrained(ckpt)
        build_arithmetic_tokenizer().save_pretrained(ckpt)
    from jax_cat.training import data as tdata
    from jax_cat.training.config import DataConfig

    total = (args.warmup + args.steps) * 8
    records = tdata.train_records(DataConfig(dataset="arithmetic:sum3", style="plain", use_chat_template=False))
    rows = [records[i] for i in range(total)]  # the order run_grpo reads them (seed 0: the stream in order)
    workload = dict(checkpoint=str(ckpt), prompts=[r["prompt"] for r in rows], answers=[r["answer"] for r in rows],
                    batch_size=8, group_size=8, max_new_tokens=8, temperature=1.0, learning_rate=args.lr,
                    weight_decay=0.0, clip_norm=1.0, max_prompt_len=13, warmup=args.warmup, steps=args.steps, seed=0)
    path = work / "workload.json"
    path.write_text(json.dumps(workload))
    return path


def pinned_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every side gets: one thread for OpenMP/MKL/OpenBLAS and XLA, CPU-only JAX, no hub."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env.update(XLA_FLAGS=XLA_ONE_THREAD, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
               WANDB_DISABLED="true", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra or {})
    return env


def parse_result(stdout: str) -> dict | None:
    """The side's result: the JSON after RESULT_PREFIX on its last such line, or None."""
    rows = [line[len(RESULT_PREFIX):] for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(rows[-1]) if rows else None


def jax_cat_env(extra_env: dict[str, str], compile_cache: str) -> dict[str, str]:
    """The jax-cat sides' extra environment: --env, and the compilation cache --compile-cache names (DIR or off)."""
    return {**extra_env, "JAX_CAT_XLA_CACHE": compile_cache}


def run_side(side: str, workload: Path, cpu: int, extra_env: dict[str, str], timeout: float = 1800) -> dict:
    """One side in its own pinned process; its result row (or an error row)."""
    python = python_for(side)
    if not python.exists():
        return {"side": side, "error": f"not installed ({python} missing; run --setup)"}
    cmd = ["taskset", "-c", str(cpu), str(python), str(HERE / "peers" / SIDES[side][1]), str(workload)]
    t0 = time.perf_counter()
    env = pinned_env(extra_env if side.startswith("jax-cat") else None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # jax-cat's cache is --compile-cache's alone (JAX_CAT_XLA_CACHE)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    row = parse_result(proc.stdout)
    if row is None or proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"side": side, "error": f"exit {proc.returncode}", "stderr_tail": tail}
    row["side"], row["side_wall_s"] = side, time.perf_counter() - t0
    return row


def median_spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.median(xs), (min(xs), max(xs))


def summary(rows: list[dict]) -> dict:
    """Per side: median (and min-max) over rounds of each metric; jax-cat's ratios to the faster peer."""
    keys = ("step_s", "generate_s", "update_s", "step_cpu_s", "generate_cpu_s", "update_cpu_s", "first_step_s", "start_to_first_step_end_s",
            "peak_rss_mib", "process_cpu_s")
    out: dict = {}
    for side in dict.fromkeys(r["side"] for r in rows):
        ok = [r for r in rows if r["side"] == side and "error" not in r]
        if not ok:
            out[side] = {"error": next(r for r in rows if r["side"] == side).get("error")}
            continue
        out[side] = {k: dict(zip(("median", "range"), median_spread([r.get(k) for r in ok]))) for k in keys}
        out[side]["rounds"] = len(ok)
    peers = [s for s in out if not s.startswith("jax-cat") and "error" not in out[s]]
    if "jax-cat" in out and "error" not in out["jax-cat"] and peers:
        fastest = min(peers, key=lambda s: out[s]["step_s"]["median"])
        ours = out["jax-cat"]
        out["ratios"] = {
            "faster_peer": fastest,
            "step_vs_faster_peer": ours["step_s"]["median"] / out[fastest]["step_s"]["median"],
            "update_vs_faster_peer": _ratio(ours, out[fastest], "update_s"),
            "step_cpu_vs_faster_peer": _ratio(ours, out[fastest], "step_cpu_s"),
            "generate_cpu_vs_faster_peer": _ratio(ours, out[fastest], "generate_cpu_s"),
            "update_cpu_vs_faster_peer": _ratio(ours, out[fastest], "update_cpu_s"),
            "peak_rss_vs_trl": (ours["peak_rss_mib"]["median"] / out["trl"]["peak_rss_mib"]["median"]
                                if "trl" in peers else None),
            "goal_step": "<= 0.8x the faster peer", "goal_rss": "<= TRL's",
        }
    return out


def _ratio(a: dict, b: dict, key: str):
    x, y = a[key]["median"], b[key]["median"]
    return x / y if x is not None and y else None


def table(summ: dict) -> str:
    """Markdown table: medians with [min-max] over rounds."""
    def cell(d, key, fmt):
        m = d[key]
        if m["median"] is None:
            return "-"
        lo, hi = m["range"]
        return f"{fmt.format(m['median'])} [{fmt.format(lo)}-{fmt.format(hi)}]"
    lines = ["| side | s/step | generate s | update s | CPU s/step | generate CPU s | update CPU s | first step s | "
             "start->first step end s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for side, d in summ.items():
        if side in ("ratios", "decode"):
            continue
        if "error" in d:
            lines.append(f"| {side} | {d['error']} |||||||||")
            continue
        lines.append(f"| {side} | " + " | ".join(cell(d, k, f) for k, f in (
            ("step_s", "{:.3f}"), ("generate_s", "{:.3f}"), ("update_s", "{:.3f}"), ("step_cpu_s", "{:.3f}"),
            ("generate_cpu_s", "{:.3f}"), ("update_cpu_s", "{:.3f}"),
            ("first_step_s", "{:.1f}"), ("start_to_first_step_end_s", "{:.1f}"), ("peak_rss_mib", "{:.0f}"))) + " |")
    return "\n".join(lines)


def copy_bandwidth_gbs(cpu: int, mib: int = 256, repeats: int = 5) -> float:
    """One core's memory bandwidth: best of `repeats` numpy copies of a `mib` MiB float32 array pinned to `cpu`,
    counted as read + write bytes (GB/s, 1e9). The arrays are 8x the L3 of this host, so the copy streams DRAM."""
    import numpy as np

    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        src = np.ones(mib * 2**20 // 4, np.float32)
        dst = np.empty_like(src)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t)
    finally:
        os.sched_setaffinity(0, old)
    return 2 * src.nbytes / best / 1e9


def decode_estimate(generate_s: float | None, bandwidth_gbs: float, prompt_len: int = 13, prompts: int = 8,
                    rows: int = 64, new_tokens: int = 8) -> dict:
    """Bytes a rollout must move and FLOPs it must do at least (float32 weights read once per decode step for all
    rows, the whole KV cache read per step; 2 FLOPs per parameter per token, one prefill per prompt), vs the
    measured generate time (which also holds the reward and, for TRL, its scoring passes)."""
    params = 2_958_080  # the checkpoint's tensors (tied embeddings counted once)
    kv_bytes_per_slot = MODEL["num_hidden_layers"] * 2 * MODEL["num_key_value_heads"] * MODEL["head_dim"] * 4
    slots = prompt_len + new_tokens
    step_bytes = params * 4 + rows * slots * kv_bytes_per_slot
    total_bytes = new_tokens * step_bytes  # prefill reads the weights once too: counted as one of the steps
    flops = 2 * params * (prompts * prompt_len + rows * new_tokens)
    out = {"bytes_per_decode_step_mb": step_bytes / 1e6, "bytes_per_token_kb": step_bytes / rows / 1e3,
           "rollout_bytes_mb": total_bytes / 1e6, "bandwidth_gbs": bandwidth_gbs,
           "bandwidth_floor_s": total_bytes / (bandwidth_gbs * 1e9), "rollout_gflop": flops / 1e9}
    if generate_s:
        out.update(generate_s=generate_s, fraction_of_bandwidth=out["bandwidth_floor_s"] / generate_s,
                   achieved_gbs=total_bytes / generate_s / 1e9, achieved_gflops=flops / generate_s / 1e9)
    return out


def context(args: argparse.Namespace, argv: list[str]) -> dict:
    """What a row needs to be read later: commit, CPU, load, pinning, command."""
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT)).stdout.strip()
        except OSError:
            return "?"
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    return {
        "commit": sh(["git", "rev-parse", "--short", "HEAD"]) + ("+dirty" if sh(["git", "status", "--porcelain",
                                                                               "--untracked-files=no"]) else ""),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": model, "cpu_flags": [f for f in flags if f.startswith(("avx", "fma", "amx"))],
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version(),
        "pinning": f"taskset -c {args.cpu}; {' '.join(v + '=1' for v in THREAD_VARS)}; torch.set_num_threads(1); "
                   f"XLA_FLAGS={XLA_ONE_THREAD}",
        "command": " ".join([".venv/bin/python", "benchmarks/grpo_peers.py", *argv]),
        "jax_cat_env": args.env,
        "compile_cache": args.compile_cache,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.setup:
        setup()
        return
    extra_env = jax_cat_env(dict(kv.split("=", 1) for kv in args.env), args.compile_cache)
    ctx = context(args, argv)
    workload = build_workload(Path(args.work), args)
    rows = []
    for rnd in range(args.repeats):
        for side in args.sides:
            row = run_side(side, workload, args.cpu, extra_env)
            row.update(round=rnd)
            rows.append(row)
            brief = {k: row.get(k) for k in ("side", "round", "step_s", "generate_s", "update_s", "first_step_s",
                                             "peak_rss_mib", "error")}
            print(json.dumps(brief), flush=True)
    ctx["loadavg_end"] = os.getloadavg()
    summ = summary(rows)
    bandwidth = copy_bandwidth_gbs(args.cpu)
    summ["decode"] = {side: decode_estimate((summ[side].get("generate_cpu_s") or {}).get("median"), bandwidth)
                      for side in list(summ) if side not in ("ratios",) and "error" not in summ[side]}
    print(table(summ))
    print(json.dumps({k: summ.get(k) for k in ("ratios", "decode")}, indent=1))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            for row in rows:
                f.write(json.dumps({**ctx, **row}) + "\n")
            f.write(json.dumps({**ctx, "side": "summary", "summary": summ}) + "\n")


if __name__ == "__main__":
    main()
