"""Test-time scaling curves: pass@k, maj@k and best-of-k from ONE pool of n samples per problem.

`evaluate(model, tokenizer, problems, *, n, ks, ...)` samples n completions per problem once, scores them with the
verifier (`jax_cat.rewards`), then, from the same samples, estimates for every k:

- pass@k: the unbiased estimator of Chen et al. (2021) (`PassAtN(k).estimate`);
- maj@k: plurality vote over the extracted final answers of a random k-subset, success when the winning answer is
  correct; samples with no answer never win; ties are split evenly (the expected value of a uniformly random
  tie-break); exact over all k-subsets when C(n, k) <= 20000, else a fixed-seed Monte Carlo (`MajorityAtN(k).estimate`).
  Answers are grouped by their exact rational value when they parse as numbers, else by their normalised string;
- bon@k: the top-scored sample of a random k-subset (`BestOfN(k).estimate`, exact order statistics; ties split
  evenly). The default scorer is the policy's mean token log-probability (reward-free). With the verifier as the
  scorer, best-of-k equals pass@k by construction (any correct sample scores 1), which the output says.

Each metric is averaged over problems, with a 95% bootstrap confidence interval over problems (seeded, 1000
resamples, percentile method). Results go to `results.json` and `scaling.png` (accuracy vs k, log2 axis), plus
`samples.jsonl` (every completion with its answer and reward) when `--save-samples` is on.

CLI: `python -m jax_cat.evaluate --model PATH --dataset arithmetic --n 64 --k 1,2,4,8,16,32,64 --out DIR`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_cat.atomic import atomic_write
from jax_cat.extras import pyplot
from jax_cat.cli import ArgumentParser, CLIError, quiet_third_party, run_cli
from jax_cat.rewards.answers import answer_key  # its home is jax_cat.rewards; kept here under its old name

__all__ = [
    "BON_SCORERS",
    "answer_key",
    "bootstrap_ci",
    "build_parser",
    "default_reward_fn",
    "evaluate",
    "load_model_and_tokenizer",
    "load_problems",
    "main",
    "plot_scaling",
    "scaling_metrics",
    "to_json",
    "write_results",
]

PROG = "python -m jax_cat.evaluate"
STRATEGY_LABELS = {"pass": "pass@k", "maj": "maj@k", "bon": "bon@k"}
BON_SCORERS = ("logprob", "verifier")


# ----------------------------------------------------------------------------------------------------------------
# Answers and scores
# ----------------------------------------------------------------------------------------------------------------


def bootstrap_ci(per_problem: np.ndarray, *, num_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over problems (resampling problems with replacement)."""
    x = np.asarray(per_problem, np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def scaling_metrics(
    correct: np.ndarray,
    answers: Sequence[Sequence[Any]],
    scores: np.ndarray,
    ks: Sequence[int],
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """pass@k, maj@k, bon@k per k from one pool: correct[P, n] (0/1), answers P lists of n keys, scores[P, n].

    Returns {"pass@k": {"k": [...], "mean": [...], "ci_low": [...], "ci_high": [...], "per_problem": [[...] per k]}, ...}.
    """
    from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN

    correct = np.asarray(correct, np.float64)
    scores = np.asarray(scores, np.float64)
    if correct.ndim != 2 or scores.shape != correct.shape or len(answers) != correct.shape[0]:
        raise ValueError(
            f"scaling_metrics: need correct[P, n], scores[P, n] and P answer lists; got correct {correct.shape}, "
            f"scores {scores.shape}, {len(answers)} answer lists"
        )
    n = correct.shape[1]
    bad = [k for k in ks if not 1 <= int(k) <= n]
    if bad:
        raise ValueError(f"every k must be in [1, n={n}]; got {bad}")
    strategies = {"pass@k": PassAtN, "maj@k": MajorityAtN, "bon@k": BestOfN}
    out: dict[str, dict[str, list]] = {}
    for name, cls in strategies.items():
        rows = {"k": [], "mean": [], "ci_low": [], "ci_high": [], "per_problem": []}
        for k in ks:
            strategy = cls(int(k))
            per_problem = np.array([
                strategy.estimate(correct[p], answers=list(answers[p]), scores=scores[p]) for p in range(len(correct))
            ])
            low, high = bootstrap_ci(per_problem, num_resamples=num_resamples, confidence=confidence, seed=seed)
            rows["k"].append(int(k))
            rows["mean"].append(float(per_problem.mean()) if per_problem.size else float("nan"))
            rows["ci_low"].append(low)
            rows["ci_high"].append(high)
            rows["per_problem"].append([float(v) for v in per_problem])
        out[name] = rows
    return out


# ----------------------------------------------------------------------------------------------------------------
# The library entry point
# ----------------------------------------------------------------------------------------------------------------


def _problem_fields(problem: Any, index: int) -> tuple[Mapping[str, Any], str]:
    """(record, gold answer) from a problem: a mapping (or object) with a string `prompt` and an `answer`."""
    record = problem if isinstance(problem, Mapping) else vars(problem)
    prompt, answer = record.get("prompt"), record.get("answer")
    if not isinstance(prompt, str) or answer is None:
        raise ValueError(f"problem {index} needs a string 'prompt' and an 'answer'; got {dict(record)!r:.300}")
    return record, str(answer)


def evaluate(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    *,
    n: int,
    ks: Sequence[int],
    max_new_tokens: int = 256,
    sampling_params: Any = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    stop: Sequence[str] | None = None,
    bon_scorer: str = "logprob",
    use_chat_template: bool = True,
    system: str | None = None,
    batch_size: int = 128,
    reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    progress: bool | None = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Sample n completions per problem once and report pass@k / maj@k / bon@k for each k (see module docstring).

    `problems`: records with a `prompt` and a gold `answer` (what `jax_cat.data.load_prompt_dataset` returns); each
    prompt is formatted like the training pipeline does (`jax_cat.data.format_prompt`: the tokenizer's chat template
    when it has one and `use_chat_template`, with BOS/special tokens added only to untemplated prompts).
    Sampling settings: a `jax_cat.sampling.SamplingParams` as `sampling_params`, or the `temperature` / `top_p` /
    `top_k` keywords (defaults 1.0, 1.0, 0; not both). `reward_fn(completions, golds) -> 0/1 rewards` defaults to
    `jax_cat.rewards.compute_rewards`. Returns a JSON-ready dict; with `keep_samples`, also "samples": one list per
    problem of {text, answer, reward, ...}.
    """
    from jax_cat.sampling.engine import _sampling_params

    params = _sampling_params(sampling_params, temperature, top_p, top_k, "evaluate")
    ks = _check_evaluate_args(problems, n, ks, bon_scorer)
    fields, golds, prompts, templated = _format_problems(problems, tokenizer, system, use_chat_template)
    timing: dict[str, float] = {}
    with _timed(timing, "sampling"):
        completions = _sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, params=params, seed=seed,
                              stop=stop, batch_size=batch_size, progress=progress, add_special_tokens=not templated)
    with _timed(timing, "scoring"):
        rewards, answers = _score(completions, golds, reward_fn, progress=progress)
    mean_logprob = np.array([[c.mean_logprob for c in row] for row in completions])
    scores = rewards if bon_scorer == "verifier" else mean_logprob
    with _timed(timing, "estimates"):
        metrics = scaling_metrics(rewards, answers, scores, ks, num_resamples=num_resamples, confidence=confidence,
                                  seed=seed)
    config = {
        "n": n, "ks": ks, "max_new_tokens": max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k, "seed": seed, "stop": list(stop or []), "bon_scorer": bon_scorer,
        "num_resamples": num_resamples, "confidence": confidence, "use_chat_template": use_chat_template,
        "system": system,
    }
    result: dict[str, Any] = {
        "config": config,
        "num_problems": len(problems),
        "problem_ids": [str(f[0].get("id", i)) for i, f in enumerate(fields)],
        "metrics": metrics,
        "summary": _summary(completions, rewards, answers, mean_logprob),
        "timing_s": timing,
        "notes": _notes(bon_scorer, confidence, num_resamples, seed),
    }
    if keep_samples:
        result["samples"] = [
            [
                {"text": c.text, "answer": a, "reward": float(r), "length": c.length,
                 "finish_reason": c.finish_reason, "mean_logprob": c.mean_logprob}
                for c, a, r in zip(row, ans_row, rew_row)
            ]
            for row, ans_row, rew_row in zip(completions, answers, rewards)
        ]
        result["prompts"], result["golds"] = prompts, golds
    return result


def _check_evaluate_args(problems: Sequence[Any], n: int, ks: Sequence[int], bon_scorer: str) -> list[int]:
    """Step 1 of `evaluate`: the ks, sorted and deduplicated, after checking them against n."""
    if bon_scorer not in BON_SCORERS:
        raise ValueError(f"bon_scorer must be one of {BON_SCORERS}, got {bon_scorer!r}")
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"ks must be non-empty integers in [1, n={n}], got {ks}")
    if len(problems) == 0:
        raise ValueError("evaluate: no problems given")
    return ks


def _format_problems(problems: Sequence[Any], tokenizer: Any, system: str | None, use_chat_template: bool):
    """Step 2: (records, golds, prompt strings, whether the chat template applies) from the problems."""
    from jax_cat.data import format_prompt

    fields = [_problem_fields(p, i) for i, p in enumerate(problems)]
    golds = [f[1] for f in fields]
    prompts = [format_prompt(f[0], tokenizer, system=system, use_chat_template=use_chat_template) for f in fields]
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    return fields, golds, prompts, templated


class _timed:
    """`with _timed(timing, "name"):` stores the block's wall time in timing["name"] (seconds)."""

    def __init__(self, timing: dict[str, float], name: str) -> None:
        self.timing, self.name = timing, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timing[self.name] = time.perf_counter() - self.start


def _sample(model: Any, tokenizer: Any, prompts: list[str], *, n: int, max_new_tokens: int, params: Any, seed: int,
            stop: Sequence[str] | None, batch_size: int, progress: bool | None, add_special_tokens: bool) -> list:
    """Step 3: n completions per prompt from `jax_cat.sampling.generate` (one pool for every k)."""
    from jax_cat.sampling import generate

    return generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, sampling_params=params, seed=seed,
                    stop=stop, batch_size=batch_size, progress=progress, add_special_tokens=add_special_tokens)


def _score(completions: list, golds: list[str], reward_fn: Callable | None, *, progress: bool | None = None,
           chunk: int = 1024) -> tuple[np.ndarray, list[list[str | None]]]:
    """Step 4: rewards [P, n] from the verifier and the answer keys that majority voting compares.

    The verifier sees the completions in chunks of `chunk`, behind a progress bar when `progress` (default: when
    stderr is a terminal); rewards are per completion, so chunking does not change them.
    """
    flat_texts = [c.text for row in completions for c in row]
    flat_golds = [g for g, row in zip(golds, completions) for _ in row]
    reward_fn = default_reward_fn if reward_fn is None else reward_fn
    starts = range(0, len(flat_texts), chunk)
    if (sys.stderr.isatty() if progress is None else progress) and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scoring", unit="chunk")
    flat_rewards = [r for s in starts for r in reward_fn(flat_texts[s: s + chunk], flat_golds[s: s + chunk])]
    rewards = np.asarray(flat_rewards, np.float64).reshape(len(completions), -1)
    answers = [[answer_key(c.text) for c in row] for row in completions]
    return rewards, answers


def _summary(completions: list, rewards: np.ndarray, answers: list, mean_logprob: np.ndarray) -> dict[str, Any]:
    """Step 5: pool-wide statistics (mean reward, answered fraction, lengths, finish reasons, mean log-prob)."""
    lengths = np.array([[c.length for c in row] for row in completions])
    finish = [c.finish_reason for row in completions for c in row]
    finite = np.isfinite(mean_logprob)
    return {
        "mean_reward": float(rewards.mean()),
        "answered_fraction": float(np.mean([a is not None for row in answers for a in row])),
        "mean_length": float(lengths.mean()),
        "finish_reasons": {r: finish.count(r) for r in ("eos", "stop", "length")},
        "mean_logprob": float(np.mean(mean_logprob[finite])) if finite.any() else None,
    }


def _notes(bon_scorer: str, confidence: float, num_resamples: int, seed: int) -> list[str]:
    """How each number was computed, for the reader of results.json."""
    notes = [
        "pass@k: unbiased estimator (Chen et al. 2021) from the n samples of each problem.",
        "maj@k: plurality vote over extracted answers of k-subsets; no-answer samples never win; ties split evenly; "
        "exact when C(n,k) <= 20000, else a 20000-subset fixed-seed Monte Carlo.",
        f"bon@k: best-of-k under the '{bon_scorer}' scorer (ties split evenly).",
        f"CIs: {int(confidence * 100)}% percentile bootstrap over problems, {num_resamples} resamples, seed {seed}.",
    ]
    if bon_scorer == "verifier":
        notes.append("bon@k under the verifier equals pass@k by construction (any correct sample scores 1).")
    return notes


def default_reward_fn(completions: Sequence[str], golds: Sequence[str]) -> list[float]:
    """0/1 rewards from `jax_cat.rewards.compute_rewards` (extraction + math equivalence in a bounded process pool)."""
    from jax_cat.rewards import compute_rewards

    return [float(r) for r in compute_rewards(completions, golds)]


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def plot_scaling(result: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path | None:
    """Accuracy vs k (log2 x axis), one line per strategy with its bootstrap CI band; written atomically as PNG.

    Returns None (after one note) when matplotlib, the 'plots' extra, is not installed."""
    plt = pyplot(feature="the scaling plot")
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for (name, rows), color in zip(result["metrics"].items(), ("C0", "C1", "C2", "C3")):
        label = name if name != "bon@k" else f"bon@k ({result['config']['bon_scorer']})"
        ax.plot(rows["k"], rows["mean"], marker="o", color=color, label=label)
        ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2, linewidth=0)
    ks = result["config"]["ks"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples at test time)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ci = int(round(result["config"]["confidence"] * 100))
    subtitle = f"{result['num_problems']} problems, n={result['config']['n']} samples each, {ci}% bootstrap CI"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def to_json(value: Any, indent: int = 0) -> str:
    """JSON with dicts indented and lists of scalars kept on one line (readable per-k / per-problem arrays)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {to_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
        items = [f"{inner}{to_json(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def write_results(result: Mapping[str, Any], out_dir: str | Path, *, plot_title: str | None = None) -> dict[str, Path]:
    """Write results.json (per-problem values kept), scaling.png and, when present, samples.jsonl into out_dir."""
    out = Path(out_dir)
    samples = result.get("samples")
    summary = {k: v for k, v in result.items() if k not in ("samples", "prompts", "golds")}
    paths = {"results": out / "results.json", "plot": out / "scaling.png"}
    atomic_write(paths["results"], lambda tmp: tmp.write_text(to_json(summary) + "\n"))
    if plot_scaling(result, paths["plot"], title=plot_title) is None:
        del paths["plot"]
    if samples is not None:
        paths["samples"] = out / "samples.jsonl"

        def write_samples(tmp: Path) -> None:
            with tmp.open("w") as f:
                for i, row in enumerate(samples):
                    f.write(json.dumps({"problem": i, "prompt": result["prompts"][i], "gold": result["golds"][i],
                                        "samples": row}) + "\n")

        atomic_write(paths["samples"], write_samples)
    return paths


def load_model_and_tokenizer(model: str | os.PathLike, *, dtype: str = "float32") -> tuple[Any, Any, Path]:
    """(CausalLM, tokenizer, checkpoint path) from an HF-format folder or hub id; "tiny" is the embedded default."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.models.resolve import resolve_model

    path = resolve_model(model, setting="--model")  # "tiny" | folder | hub id (fetched once, then read locally)
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    return load_hf(path, dtype=dtypes[dtype]), AutoTokenizer.from_pretrained(path), path


def load_problems(dataset: str, *, split: str = "test", limit: int | None = None, data_seed: int = 0,
                  arithmetic_style: str = "plain") -> list[dict]:
    """Problem records: "arithmetic[:preset]" (shipped generator), "gsm8k", "math", "math500", a hub id or a local file."""
    from jax_cat.data import load_prompt_dataset

    problems = load_prompt_dataset(dataset, split=split, limit=limit, data_seed=data_seed,
                                   arithmetic_style=arithmetic_style)
    if not problems:
        raise ValueError(f"dataset {dataset!r} (split {split!r}) has no problems")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks:
        raise argparse.ArgumentTypeError("--k is empty")
    return ks


def build_parser() -> ArgumentParser:
    """The CLI's arguments (usage errors are one line, exit status 2; `--debug` shows tracebacks)."""
    p = ArgumentParser(
        prog=PROG,
        description="Sample n completions per problem once; report pass@k, maj@k and best-of-k with bootstrap CIs.",
    )
    p.add_argument("--model", required=True,
                   help="HF-format checkpoint folder (config.json + safetensors + tokenizer), a hub id, or 'tiny' "
                        "(the offline default model in the user cache)")
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
    p.add_argument("--bon-scorer", choices=BON_SCORERS, default="logprob",
                   help="best-of-k scorer: the policy's mean log-prob (reward-free, default) or the verifier (= pass@k)")
    p.add_argument("--batch-size", type=int, default=128, help="rows (prompts x samples) decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--num-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--save-samples", action="store_true", help="also write samples.jsonl")
    p.add_argument("--out", default="runs/evaluate", help="output folder")
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
    try:  # the data first: it is cheap, so a bad --dataset is reported before a model loads
        problems = load_problems(args.dataset, split=args.split, limit=args.limit, data_seed=args.data_seed,
                                 arithmetic_style=args.arithmetic_style)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise CLIError(f"--dataset {args.dataset}: {e}") from e
    try:
        model, tokenizer, model_path = load_model_and_tokenizer(args.model, dtype=args.dtype)
    except (ValueError, OSError) as e:
        raise CLIError(f"--model {args.model}: {e}") from e
    print(f"evaluating {model_path} on {len(problems)} problems of {args.dataset!r}: n={args.n}, k={ks}", file=sys.stderr)
    result = evaluate(
        model, tokenizer, problems, n=args.n, ks=ks, max_new_tokens=args.max_new_tokens, sampling_params=params,
        seed=args.seed, bon_scorer=args.bon_scorer, use_chat_template=not args.no_chat_template, system=args.system,
        stop=args.stop, batch_size=args.batch_size, num_resamples=args.num_resamples, keep_samples=args.save_samples,
    )
    result["config"].update(model=str(model_path), dataset=args.dataset, split=args.split, limit=args.limit,
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


if __name__ == "__main__":
    raise SystemExit(main())
