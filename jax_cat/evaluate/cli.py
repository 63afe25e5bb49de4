"""`python -m jax_cat.evaluate`: flags -> `evaluate` -> results.json, scaling.png (and samples.jsonl)."""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jax_cat.cli import ArgumentParser, CLIError, quiet_third_party, run_cli
from jax_cat.io import compile_cache
from jax_cat.evaluate.estimates import METRICS
from jax_cat.evaluate.loading import load_model_and_tokenizer, load_problems
from jax_cat.evaluate.outputs import write_results
from jax_cat.evaluate.pool import BON_SCORERS, evaluate

PROG = "python -m jax_cat.evaluate"


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks:
        raise argparse.ArgumentTypeError("--k is empty")
    return ks


def _parse_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise argparse.ArgumentTypeError(f"--metrics must be a comma-separated subset of {','.join(METRICS)}, got {text!r}")
    return metrics


def build_parser() -> ArgumentParser:
    """The CLI's arguments (usage errors are one line, exit status 2; `--debug` shows tracebacks)."""
    p = ArgumentParser(
        prog=PROG,
        description="Sample n completions per problem once; report pass@k, maj@k and best-of-k with bootstrap CIs.",
    )
    p.add_argument("--model", required=True,
                   help="HF-format checkpoint folder (config.json + safetensors + tokenizer), a hub id, or 'tiny' "
                        "(the offline default model in the user cache), or a PEFT LoRA adapter folder "
                        "(adapter_config.json) loaded onto its base")
    p.add_argument("--base", default=None,
                   help="with a LoRA adapter folder as --model: the base checkpoint (folder or hub id) to load it "
                        "onto, instead of adapter_config.json's base_model_name_or_path")
    p.add_argument("--dataset", default="arithmetic",
                   help="arithmetic[:preset] | gsm8k | math | math500 | hub id | PATH.{jsonl,json,parquet}")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first LIMIT problems")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the arithmetic generator (fixes its test set)")
    p.add_argument("--arithmetic-style", choices=("plain", "natural"), default="plain")
    p.add_argument("--no-chat-template", action="store_true", help="feed raw prompts (BOS added) instead")
    p.add_argument("--system", default=None, help="system prompt for the chat template")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--n", type=int, default=64, help="samples per problem")
    p.add_argument("--k", type=_parse_ks, default=None, help="comma-separated ks (default: powers of two up to n)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--metrics", type=_parse_metrics, default=list(METRICS),
                   help="comma-separated estimates to report (default pass@k,maj@k,bon@k; maj@k is the costly one)")
    p.add_argument("--bon-scorer", choices=BON_SCORERS, default="logprob",
                   help="best-of-k scorer: the policy's mean log-prob (reward-free, default) or the verifier (= pass@k)")
    p.add_argument("--batch-size", type=int, default=128, help="rows (prompts x samples) decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--num-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--save-samples", action="store_true", help="also write samples.jsonl")
    p.add_argument("--out", default="runs/evaluate", help="output folder")
    compile_cache.add_flags(p)
    return p


def _check_cli_args(args: argparse.Namespace) -> tuple[list[int], Any]:
    """The CLI's checks before anything heavy loads: (ks, SamplingParams); `CLIError` names the flag and the fix."""
    for flag, value in (("--n", args.n), ("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size),
                        ("--num-resamples", args.num_resamples)):
        if value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}; pass a positive integer")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}; pass a positive integer or leave it out (all problems)")
    ks = args.k or [2**i for i in range(int(math.log2(args.n)) + 1)]
    if max(ks) > args.n or min(ks) < 1:
        raise CLIError(f"--k: every k must be in [1, --n={args.n}], got {ks}; raise --n or drop the larger ks")
    from jax_cat.sampling import SamplingParams

    try:
        params = SamplingParams(args.temperature, args.top_p, args.top_k)
    except ValueError as e:
        flag = next((f for f in ("temperature", "top_p", "top_k") if str(e).startswith(f)), "sampling")
        raise CLIError(f"--{flag.replace('_', '-')}: {e}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder (it is created when missing)")
    return ks, params


def _run(argv: list[str]) -> int:
    quiet_third_party()
    args = build_parser().parse_args(argv)
    ks, params = _check_cli_args(args)
    compile_cache.enable_from_args(args, prog=PROG)  # before the sampler compiles
    try:  # the data first: it is cheap, so a bad --dataset is reported before a model loads
        problems = load_problems(args.dataset, split=args.split, limit=args.limit, data_seed=args.data_seed,
                                 arithmetic_style=args.arithmetic_style)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise CLIError(f"--dataset {args.dataset}: {e}") from e
    try:
        model, tokenizer, model_path = load_model_and_tokenizer(args.model, dtype=args.dtype, base=args.base)
    except (ValueError, OSError) as e:
        raise CLIError(f"--model {args.model}: {e}") from e
    print(f"evaluating {model_path} on {len(problems)} problems of {args.dataset!r}: n={args.n}, k={ks}", file=sys.stderr)
    result = evaluate(
        model, tokenizer, problems, n=args.n, ks=ks, max_new_tokens=args.max_new_tokens, sampling_params=params,
        seed=args.seed, bon_scorer=args.bon_scorer, use_chat_template=not args.no_chat_template, system=args.system,
        stop=args.stop, batch_size=args.batch_size, num_resamples=args.num_resamples, keep_samples=args.save_samples,
        metrics=args.metrics,
    )
    result["config"].update(model=str(model_path), base=args.base, dataset=args.dataset, split=args.split, limit=args.limit,
                            data_seed=args.data_seed, dtype=args.dtype)
    paths = write_results(result, args.out, plot_title=f"{Path(str(model_path)).name} on {args.dataset}")
    for name, rows in result["metrics"].items():
        cells = "  ".join(f"k={k}: {m:.3f} [{lo:.3f},{hi:.3f}]" for k, m, lo, hi in
                          zip(rows["k"], rows["mean"], rows["ci_low"], rows["ci_high"]))
        print(f"{name:7s} {cells}")
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (bad input: one stderr line and 2; `--debug` for the traceback)."""
    return run_cli(_run, argv, prog=PROG)
