"""Decode speed of jax-cat's sampler vs transformers `generate` (torch, CPU) on the same random checkpoint.

Both sides get the same batch of random prompts (no padding) and decode greedily exactly --new-tokens tokens
(transformers: min_new_tokens = max_new_tokens; ours: no EOS ids, so no early exit). Each side runs in its own
subprocess, pinned with `taskset` to the same CPUs (--cpus) with the same thread count (--threads; torch:
`set_num_threads`; XLA: its Eigen pool, single-threaded when --threads 1, as benchmarks/train_step.py does), so its
peak RSS is its own. After one warm-up call per side, --repeats timed calls run interleaved (jax variants, then
torch, in each round) so that load drifting on the shared machine hits every side. tok/s = new tokens / wall time of
one whole call (prefill included). Ratios are medians of the per-round ratios, by wall time and by process CPU time
(with one thread a side, CPU time is the work done and barely moves with other jobs; with 2+ threads it also counts
spinning). Our compile time (first call minus the steady-state median) is reported separately.

--jax-variants runs more than one JAX configuration against the same torch runs (before/after ratios in one run):
`default` is the library as shipped; see VARIANTS for the others. --json PATH writes a JSON list, one object per
shape (format in `_json_row`).

    .venv/bin/python benchmarks/sampling.py                      # tiny + qwen2-40m shapes, 1 thread each on CPU 0
    .venv/bin/python benchmarks/sampling.py --shapes qwen2-40m --batch 64 --new-tokens 64 --repeats 3
    .venv/bin/python benchmarks/sampling.py --shapes qwen2-40m --prompt-len 768 --new-tokens 512 --repeats 3
    .venv/bin/python benchmarks/sampling.py --shapes qwen2-40m --jax-variants default,plain --json /tmp/s.json
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

# Model shapes (HF Qwen2 config fields). qwen2-40m: 39.3M parameters, the same shape as benchmarks/model_forward.py's.
SHAPES = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
    "qwen2-40m": dict(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False),
}

# JAX-side configurations: extra XLA flags and `sample_tokens` keyword arguments. "default" = the library as shipped.
VARIANTS: dict[str, dict] = {
    "default": dict(xla_flags="", kwargs={}),
}
GOAL = 4.0  # issue 12: decode >= 4x transformers `generate` new tokens/s


def build_checkpoint(shape: str, out_dir: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    fields = dict(SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.02)
    config = transformers.Qwen2Config(**fields)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out_dir)
    return out_dir


def prompts(vocab: int, batch: int, length: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length), dtype=np.int32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_ours(ckpt: Path, args):
    import jax
    import numpy as np

    from jax_cat.models import load_hf
    from jax_cat.sampling import sample_tokens

    kwargs = VARIANTS[args.variant]["kwargs"]
    model = load_hf(ckpt)
    ids = prompts(model.config.vocab_size, args.batch, args.prompt_len)
    mask = np.ones_like(ids, bool)

    def once():
        out = sample_tokens(model, ids, mask, max_new_tokens=args.new_tokens, temperature=0.0, eos_token_ids=(),
                            key=jax.random.key(0), **kwargs)
        out = jax.block_until_ready(out)
        assert int(np.min(out.lengths)) == args.new_tokens
        return np.asarray(out.tokens).tolist()

    return once, {"version": f"jax {jax.__version__}", "threads": args.threads,
                  "xla_flags": os.environ.get("XLA_FLAGS", "")}


def make_torch(ckpt: Path, args):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompts(model.config.vocab_size, args.batch, args.prompt_len)).long()
    mask = torch.ones_like(ids)

    def once():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, pad_token_id=0, eos_token_id=2)
        new = out[:, ids.shape[1]:]
        assert new.shape[1] == args.new_tokens
        return new.tolist()

    return once, {"version": f"torch {torch.__version__}", "threads": torch.get_num_threads()}


def child(args) -> None:
    """Serve timing requests on stdin ("run" -> one timed generation) so the parent can interleave the backends."""
    once, info = (make_ours if args.backend == "jax" else make_torch)(Path(args.checkpoint), args)
    tokens = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t0, c0 = time.perf_counter(), time.process_time()
            tokens = once()
            print(f"TIME {time.perf_counter() - t0} {time.process_time() - c0}", flush=True)
        elif cmd == "finish":
            print("RESULT " + json.dumps(dict(info, tokens=tokens, peak_rss_mib=peak_rss_mib())), flush=True)
            return


class Backend:
    """A benchmark child process for one backend (and, for JAX, one variant), pinned to --cpus."""

    def __init__(self, backend: str, ckpt: Path, args, variant: str = "default"):
        cmd = ["taskset", "-c", args.cpus, sys.executable, __file__, "--backend", backend, "--variant", variant,
               "--checkpoint", str(ckpt), "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(args.threads)
        flags = ["--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"] if args.threads == 1 else []
        flags += [VARIANTS[variant]["xla_flags"]] if backend == "jax" else []
        if " ".join(flags).strip():
            env["XLA_FLAGS"] = " ".join(flags).strip()
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        self.name = backend if backend == "torch" else f"jax/{variant}"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def _ask(self, cmd: str, prefix: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"{self.name} benchmark child died (exit code {self.proc.wait()})")

    def run(self) -> tuple[float, float]:
        wall, cpu = self._ask("run", "TIME ").split()
        return float(wall), float(cpu)

    def finish(self) -> dict:
        result = json.loads(self._ask("finish", "RESULT "))
        self.proc.wait()
        return result


def _side(name: str, wall: list[float], cpu: list[float], first_call: float, info: dict, new_tokens: int) -> dict:
    med_wall, med_cpu = statistics.median(wall), statistics.median(cpu)
    return dict(name=name, tok_s=new_tokens / med_wall, tok_per_cpu_s=new_tokens / med_cpu, wall_s=wall, cpu_s=cpu,
                median_wall_s=med_wall, median_cpu_s=med_cpu, first_call_s=first_call,
                compile_s=first_call - med_wall if name != "torch" else None, peak_rss_mib=info["peak_rss_mib"], version=info["version"],
                threads=info["threads"], xla_flags=info.get("xla_flags"))


def _json_row(shape: str, params: int, args, sides: dict[str, dict], same: dict[str, int]) -> dict:
    """One shape's figures: `jax` (the first --jax-variants entry) and `torch` sides with tok_s (new tokens per wall
    second, median), tok_per_cpu_s, per-call wall_s / cpu_s lists, compile_s (jax only), peak_rss_mib, threads; `ratio_wall` and
    `ratio_cpu` (medians of per-round jax/torch ratios; > 1 = we are faster), `same_token_rows` of `rows`, the pinning,
    and `variants`: the same figures for every JAX variant, by name."""
    torch_side = sides["torch"]
    variants = {}
    for name, side in sides.items():
        if name == "torch":
            continue
        variants[name] = dict(
            side,
            ratio_wall=statistics.median(t / j for t, j in zip(torch_side["wall_s"], side["wall_s"])),
            ratio_cpu=statistics.median(t / j for t, j in zip(torch_side["cpu_s"], side["cpu_s"])),
            same_token_rows=same[name],
        )
    head = variants[next(iter(variants))]
    return dict(
        benchmark="sampling", shape=shape, params=params, batch=args.batch, prompt_len=args.prompt_len,
        new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads, cpus=args.cpus,
        pinned=True, jax=head, torch=torch_side, ratio_wall=head["ratio_wall"], ratio_cpu=head["ratio_cpu"],
        peak_rss_ratio=head["peak_rss_mib"] / torch_side["peak_rss_mib"], same_token_rows=head["same_token_rows"],
        rows=args.batch, goal_ratio=GOAL, variants=variants, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        load_avg=os.getloadavg()[0],
    )


def _write_json(path: Path, rows: list[dict]) -> None:
    from jax_cat.io.atomic import atomic_write_text  # temp then rename; the temporary never stays behind

    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,qwen2-40m", help=f"comma-separated, from {sorted(SHAPES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="threads per side (torch.set_num_threads, XLA's pool)")
    p.add_argument("--cpus", default=None, help="taskset CPU list for every side (default 0..threads-1)")
    p.add_argument("--torch-threads", type=int, default=0, help="old name of --threads (0: use --threads)")
    p.add_argument("--jax-variants", default="default", help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--json", type=Path, default=None, help="write the figures here (a JSON list, one object a shape)")
    p.add_argument("--backend", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_threads:
        args.threads = args.torch_threads
    if args.backend:
        return child(args)
    for name in args.shapes.split(","):
        if name not in SHAPES:
            p.error(f"--shapes: unknown shape {name!r}; choose from {sorted(SHAPES)}")
    variants = args.jax_variants.split(",")
    for name in variants:
        if name not in VARIANTS:
            p.error(f"--jax-variants: unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    args.cpus = args.cpus or ",".join(str(i) for i in range(args.threads))

    new_tokens = args.batch * args.new_tokens
    print(f"batch {args.batch}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy); "
          f"{args.threads} thread(s) a side pinned to CPUs {args.cpus}; median of {args.repeats} interleaved rounds "
          f"after a warm-up")
    print("| shape | params | jax variant | jax tok/s | torch tok/s | ratio wall | ratio CPU-s | jax compile s | "
          "peak RSS jax / torch MiB | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = build_checkpoint(shape, Path(tmp) / shape)
            params = _num_params(ckpt)
            backends = {v: Backend("jax", ckpt, args, v) for v in variants}
            backends["torch"] = Backend("torch", ckpt, args)
            first = {name: b.run()[0] for name, b in backends.items()}  # compile + warm-up
            wall = {name: [] for name in backends}
            cpu = {name: [] for name in backends}
            for _ in range(args.repeats):  # interleaved, so every side sees the same machine load
                for name, b in backends.items():
                    w, c = b.run()
                    wall[name].append(w)
                    cpu[name].append(c)
            infos = {name: b.finish() for name, b in backends.items()}
        sides = {name: _side(name, wall[name], cpu[name], first[name], infos[name], new_tokens) for name in backends}
        same = {v: sum(a == b for a, b in zip(infos[v]["tokens"], infos["torch"]["tokens"])) for v in variants}
        row = _json_row(shape, params, args, sides, same)
        rows.append(row)
        t = row["torch"]
        for v in variants:
            j = row["variants"][v]
            print(f"| {shape} | {params / 1e6:.1f}M | {v} | {j['tok_s']:,.0f} | {t['tok_s']:,.0f} | "
                  f"{j['ratio_wall']:.2f}x | {j['ratio_cpu']:.2f}x | {j['compile_s']:.1f} | "
                  f"{j['peak_rss_mib']:,.0f} / {t['peak_rss_mib']:,.0f} | {j['same_token_rows']}/{args.batch} rows |")
        print(f"  raw wall s: " + "; ".join(f"{n} {['%.3f' % x for x in wall[n]]}" for n in backends), file=sys.stderr)
        print(f"  raw CPU s:  " + "; ".join(f"{n} {['%.3f' % x for x in cpu[n]]}" for n in backends), file=sys.stderr)
        sys.stdout.flush()
        if args.json:
            _write_json(args.json, rows)
    print(f"goal: ratio >= {GOAL:.0f}x at B = 8 and B = 64; peak RSS jax <= torch at prompt 768 + 512 new")


def _num_params(ckpt: Path) -> int:
    import numpy as np
    from safetensors import safe_open

    total = 0
    for file in ckpt.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            total += sum(int(np.prod(f.get_slice(key).get_shape())) for key in f.keys())
    return total


if __name__ == "__main__":
    main()
