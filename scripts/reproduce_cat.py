"""Reproduce CAT's test-time-scaling claims at small scale: from ONE SFT warm start, train plain SFT, CAT-SFT
pass@N (N in 4, 16, 64), plain GRPO, CAT-GRPO pass@N and CAT-GRPO maj@N over several seeds, then report pass@k and
maj@k for k = 1..64 on held-out problems (mean +- std over seeds) and plot each CAT variant's improvement over its
baseline (plain SFT / plain GRPO) against k, as in the paper's Figures 1, 2 and 4.

    python scripts/reproduce_cat.py                       # the shipped arithmetic task, tiny model, 3 seeds
    python scripts/reproduce_cat.py --seeds 0 --variants grpo,grpo_cat --grpo-steps 100    # a quick look
    python scripts/reproduce_cat.py --model Qwen/Qwen2.5-Math-1.5B --dataset gsm8k --max-new-tokens 512 \\
        --warmup-steps 0 --set mesh.fsdp=8 --set data.batch_size=64   # a real model (GPU/TPU), trainer keys via --set

Everything trains through the trainer's loops (`jax_cat.training.run_sft` / `run_grpo`), exactly as
`python -m jax_cat.train` does, and every model is scored by the project's one evaluation path
(`jax_cat.evaluate.evaluate`, pass@k and maj@k from one pool); the arithmetic settings and warm start are the default
experiment's (configs/default.toml, `--preset` / `--set KEY=VALUE` to change them; the warm start a trainer run in
`<out>/warm_start/`, reused, and scored once). Outputs: `<out>/results.json` (every seed's curves, the warm start's,
the paired differences with a 95% CI over training seeds and problems, and each paper claim marked "holds",
"does not hold" or "not testable here" with its numbers: `claims`), `<out>/table.md`, `<out>/improvement.png`, and
each run's metrics/checkpoints under `<out>/seed<S>/`. `--merge A/results.json B/results.json --out C` joins runs
that differ only in their seeds (one process per seed); `scripts/results_tables.py` writes docs/results.md from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jax_cat.evaluate.estimates import seed_and_problem_ci  # noqa: E402,F401 - its home; kept here under its old name

# name -> (method, strategy spec or a template with {n}, label)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "sft": ("sft", "pass@1", "plain SFT"),
    "sft_cat4": ("sft", "pass@4", "CAT-SFT pass@4"),
    "sft_cat16": ("sft", "pass@16", "CAT-SFT pass@16"),
    "sft_cat64": ("sft", "pass@64", "CAT-SFT pass@64"),
    "grpo": ("grpo", "pass@1", "plain GRPO"),
    "grpo_cat": ("grpo", "pass@{n}", "CAT-GRPO pass@{n}"),
    "grpo_maj": ("grpo", "maj@{n}", "CAT-GRPO maj@{n}"),
}
BASELINE = {"sft": "sft", "grpo": "grpo"}  # each method's plain variant
TABLE_KS = (1, 4, 16, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[4:8]))
    p.add_argument("--out", default="runs/reproduce_cat")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (the warm start is shared)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--cat-n", type=int, default=16,
                   help="N of CAT-GRPO pass@N and maj@N (16: the default run's CAT arm, configs/default.toml)")
    p.add_argument("--sft-steps", type=int, default=300, help="SFT steps of each SFT variant (after the warm start)")
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--grpo-steps", type=int, default=200, help="GRPO steps of each RL variant")
    p.add_argument("--grpo-lr", type=float, default=None, help="default: the default run's")
    p.add_argument("--grpo-warmup", type=int, default=None, help="GRPO LR warm-up steps (default: the default run's)")
    p.add_argument("--test-size", type=int, default=100, help="held-out problems")
    p.add_argument("--n", type=int, default=64, help="samples per held-out problem (largest k)")
    p.add_argument("--ks", default=None, help="the k of pass@k and maj@k, comma-separated (default 1, 2, 4, ... n); "
                                              "maj@k costs ~0.1 s CPU per problem and k, so fewer ks are cheaper")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="no training: combine results.json of runs with the same settings and other seeds (e.g. one "
                        "process per seed) into <out>/results.json, table.md and improvement.png")
    p.add_argument("--warmup-steps", type=int, default=None, help="SFT warm-start steps (default: the default run's)")
    p.add_argument("--warm-start", default=None,
                   help="an existing warm start (HF folder, e.g. runs/default/warm_start) instead of training one")
    p.add_argument("--preset", default=None,
                   help="arithmetic preset (default: the default run's, configs/default.toml); e.g. sum3_2d")
    # real models
    p.add_argument("--model", default=None, help="HF checkpoint folder or hub id (default: the tiny arithmetic model)")
    p.add_argument("--dataset", default=None, help="trainer data.dataset for --model (gsm8k, math, a file, ...)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="with --model: tokens per completion")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any trainer config key (repeatable): with --model e.g. mesh.fsdp=8, else a key of "
                        "configs/default.toml, e.g. warmup.end_lr_ratio=1.0")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ configs
def arithmetic_setup(args: argparse.Namespace, out: Path):
    """(default-experiment Config, warm-start path, held-out problems) for the shipped task: the default
    experiment's recipe (configs/default.toml) and its warm start (`<out>/warm_start/`, a trainer run, reused)."""
    from jax_cat.training.config import parse_set
    from jax_cat.training.data import eval_records
    from jax_cat.training.default_run import (DefaultRun, base_checkpoint, default_config, run_stage,
                                              warm_start_config)

    changes: dict[str, Any] = DefaultRun(preset=args.preset).overrides() if args.preset else {}
    changes.update({"eval.num_problems": args.test_size, "eval.n": args.n, "eval.ks": _ks(args.n, args.ks)})
    if args.warmup_steps is not None:
        changes["warmup.steps"] = args.warmup_steps
    if args.grpo_lr is not None:
        changes["optimizer.learning_rate"] = args.grpo_lr
    if args.grpo_warmup is not None:
        changes["optimizer.warmup_steps"] = args.grpo_warmup
    changes.update(parse_set(args.overrides))
    cfg = default_config(changes)
    if args.warm_start:
        warm = Path(args.warm_start)
        print(f"warm start: {warm} (given)", flush=True)
    else:
        stage, reused = run_stage(warm_start_config(cfg, base_checkpoint(cfg, out)), out / "warm_start", reuse=True)
        warm = stage["final"]
        print(f"warm start: {warm} ({'reused' if reused else 'trained in %.0fs' % stage['seconds']})", flush=True)
    return cfg, warm, eval_records(cfg.data, cfg.eval.num_problems)


def _ks(n: int, ks: str | None = None) -> list[int]:
    """--ks (comma-separated, each in [1, n]) or 1, 2, 4, ... up to n."""
    if ks:
        chosen = sorted({int(k) for k in ks.split(",") if k.strip()})
        if not chosen or chosen[0] < 1 or chosen[-1] > n:
            raise SystemExit(f"reproduce_cat.py: error: --ks {ks}: every k must be in [1, --n={n}]")
        return chosen
    return [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]


def variant_config(args: argparse.Namespace, cfg, warm: Path, name: str, seed: int):
    """The trainer Config of one variant and seed (arithmetic: the default recipe's stages; --model: --set keys)."""
    method, spec, _ = VARIANTS[name]
    strategy = spec.format(n=args.cat_n)
    if args.model is None:
        from jax_cat.training.default_run import arm_config, warm_start_config

        if method == "sft":  # more SFT from the warm start: the warm-up stage's settings, no LR warm-up
            return warm_start_config(cfg, warm).replace(**{
                "train.seed": seed, "train.steps": args.sft_steps, "optimizer.learning_rate": args.sft_lr,
                "optimizer.warmup_steps": 0, "strategy": strategy, "train.eval_at_end": False})
        return arm_config(cfg, warm, strategy).replace(**{"train.seed": seed, "train.steps": args.grpo_steps,
                                                          "train.eval_at_end": False})
    from jax_cat.training.config import load_config

    overrides = [f"train.method={method}", f"strategy={strategy}", f"train.seed={seed}", f"model.path={warm}",
                 f"train.steps={args.sft_steps if method == 'sft' else args.grpo_steps}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "train.eval_at_end=false",
                 *([f"data.dataset={args.dataset}"] if args.dataset else []), *args.overrides]
    return load_config(None, overrides)


# ------------------------------------------------------------------------------------------------ evaluation
def scores(model: Any, tokenizer: Any, problems: list[dict], args: argparse.Namespace, cfg, max_new_tokens: int,
           seed: int) -> dict[str, Any]:
    """pass@k and maj@k curves (k = 1, 2, 4, ..., n) from one pool of n samples per held-out problem: the project's
    one evaluation path (`jax_cat.evaluate.evaluate`), prompts formatted as the trainer formats them."""
    from jax_cat.evaluate import evaluate
    from jax_cat.training.data import task_reward_fn

    result = evaluate(model, tokenizer, problems, n=args.n, ks=_ks(args.n, args.ks), max_new_tokens=max_new_tokens, seed=seed,
                      temperature=cfg.eval.temperature, use_chat_template=cfg.data.use_chat_template,
                      system=cfg.data.system, reward_fn=task_reward_fn(cfg.data), metrics=("pass@k", "maj@k"),
                      batch_size=cfg.eval.batch_size, progress=False)
    strip = lambda rows: {k: v for k, v in rows.items() if k != "per_problem"}  # noqa: E731
    maj = strip(result["metrics"]["maj@k"])
    maj["per_problem"] = [[round(v, 5) for v in row] for row in result["metrics"]["maj@k"]["per_problem"]]
    return {"pass@k": strip(result["metrics"]["pass@k"]), "maj@k": maj,
            "num_correct": result["num_correct"], "n": args.n,
            "evaluation": {k: result["config"][k] for k in ("use_chat_template", "chat_template_applied", "system",
                                                            "reward_fn", "temperature")}}


def paired_differences(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict[str, list]]:
    """Each CAT variant minus its plain baseline (pass@k), per k: mean over seeds, the range over seeds, and a 95% CI
    over training seeds and problems (`jax_cat.evaluate.paired_difference` on [seeds, problems] counts), on the seeds
    both finished."""
    from jax_cat.evaluate import paired_difference

    out: dict[str, dict[str, list]] = {}
    for name, seeds in per_seed.items():
        base = BASELINE.get(VARIANTS[name][0])
        if name == base or base not in per_seed:
            continue
        common = sorted(set(seeds) & set(per_seed[base]))
        if not common or "num_correct" not in seeds[common[0]]:
            continue
        n, ks = seeds[common[0]]["n"], seeds[common[0]]["pass@k"]["k"]
        rows = paired_difference([seeds[s]["num_correct"] for s in common],
                                 [per_seed[base][s]["num_correct"] for s in common], n=n, ks=ks, num_resamples=2000)
        out[name] = {**rows, "seeds": common}
    return out


def _maj_rows(a: np.ndarray, b: np.ndarray, ks: list[int], seed: int = 0) -> dict[str, list]:
    """maj@k(a) - maj@k(b) from per-problem estimates [seeds, k, problems]: the rows `paired_difference` gives for
    pass@k (mean over seeds, the seeds' range, a 95% CI over training seeds AND problems: `seed_and_problem_ci`)."""
    rows: dict[str, list] = {"k": [], "mean": [], "seed_min": [], "seed_max": [], "ci_low": [], "ci_high": []}
    for i, k in enumerate(ks):
        d = a[:, i, :] - b[:, i, :]
        per_seed = d.mean(axis=1)
        low, high = seed_and_problem_ci(d, num_resamples=2000, seed=seed + int(k))
        for key, v in (("k", int(k)), ("mean", per_seed.mean()), ("seed_min", per_seed.min()),
                       ("seed_max", per_seed.max()), ("ci_low", low), ("ci_high", high)):
            rows[key].append(v if key == "k" else float(v))
    return rows


def compare(a: dict[int, dict], b: dict[int, dict] | dict, metric: str = "pass@k") -> dict[str, list] | None:
    """`metric` of a - b, paired per problem, over the training seeds of `a` (b: the same seeds, or ONE pool, e.g.
    the shared warm start, compared with every seed of a). pass@k: `jax_cat.evaluate.paired_difference` on the
    [seeds, problems] counts; maj@k: the same two-level bootstrap on the per-problem estimates. None: nothing to pair."""
    from jax_cat.evaluate import paired_difference

    seeds = sorted(a) if "n" in b else sorted(set(a) & set(b))
    pick = (lambda s: b) if "n" in b else (lambda s: b[s])  # noqa: E731
    if not seeds:
        return None
    ks = a[seeds[0]][metric]["k"]
    if metric == "pass@k":
        rows = paired_difference([a[s]["num_correct"] for s in seeds], [pick(s)["num_correct"] for s in seeds],
                                 n=a[seeds[0]]["n"], ks=ks, num_resamples=2000)
    else:
        if any("per_problem" not in a[s][metric] or "per_problem" not in pick(s)[metric] for s in seeds):
            return None
        rows = _maj_rows(np.array([a[s][metric]["per_problem"] for s in seeds], np.float64),
                         np.array([pick(s)[metric]["per_problem"] for s in seeds], np.float64), ks)
    return {**rows, "seeds": seeds}


def all_differences(per_seed: dict[str, dict[int, dict]], warm: dict | None) -> dict[str, dict[str, Any]]:
    """Every comparison the claims read: "<variant> - <its baseline>" (pass@k and maj@k) and "<variant> - warm start"
    (pass@k and maj@k), each `compare`'s rows."""
    out: dict[str, dict[str, Any]] = {}
    for name, seeds in per_seed.items():
        base = BASELINE.get(VARIANTS[name][0])
        for metric in ("pass@k", "maj@k"):
            if name != base and base in per_seed:
                rows = compare(seeds, per_seed[base], metric)
                if rows:
                    out[f"{name} - {base}|{metric}"] = rows
            if warm is not None:
                rows = compare(seeds, warm, metric)
                if rows:
                    out[f"{name} - warm|{metric}"] = rows
    return out


def _at(rows: dict[str, list], k: int) -> tuple[float, float, float]:
    i = rows["k"].index(k)
    return rows["mean"][i], rows["ci_low"][i], rows["ci_high"][i]


def _fmt(rows: dict[str, list], k: int) -> str:
    m, lo, hi = _at(rows, k)
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _sign_verdict(rows: dict[str, list], k: int, sign: int) -> str:
    """holds: the 95% CI excludes 0 on the claimed side; does not hold: on the other side; else within the noise."""
    _, lo, hi = _at(rows, k)
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return "holds"
    if (hi < 0 and sign > 0) or (lo > 0 and sign < 0):
        return "does not hold (the opposite, beyond noise)"
    return "does not hold (within noise: the CI covers 0)"


CEILING = 0.98  # a pool at or above this pass@k (or maj@k) leaves no room to show a gain there


def claims(per_seed: dict[str, dict[int, dict]], warm: dict | None, diffs: dict[str, dict], cat_n: int,
           labels: dict[str, str]) -> list[dict[str, str]]:
    """The papers' test-time-scaling claims, each marked "holds", "does not hold (...)" or "not testable here (...)"
    with the numbers it rests on (differences: mean over seeds [95% CI over training seeds and problems]).

    Rules: a difference claim holds when its CI excludes 0 on the claimed side. A coverage claim (large k) is not
    testable when the pools it compares are all at the ceiling (pass@k_max >= CEILING: nothing to lose or keep);
    a maj@k claim is not testable when the warm start's plurality answer is no more often right than one sample
    (maj@k_max <= pass@1: no majority to sharpen), or when both pools are at the maj@N ceiling."""
    def mean_at(pool: dict | dict[int, dict], metric: str, k: int) -> float:
        pools = [pool] if "n" in pool else list(pool.values())
        return float(np.mean([p[metric]["mean"][p[metric]["k"].index(k)] for p in pools]))

    out: list[dict[str, str]] = []

    def add(claim: str, verdict: str, numbers: str) -> None:
        out.append({"claim": claim, "verdict": verdict, "numbers": numbers})

    grpo, cat, maj = per_seed.get("grpo"), per_seed.get("grpo_cat"), per_seed.get("grpo_maj")
    kmax = next(iter(next(iter(per_seed.values())).values()))["pass@k"]["k"][-1]
    if grpo and warm is not None:
        d = diffs["grpo - warm|pass@k"]
        add("RL: plain GRPO raises pass@1 over the warm start", _sign_verdict(d, 1, +1),
            f"plain - warm start at k=1: {_fmt(d, 1)} (warm {mean_at(warm, 'pass@k', 1):.3f}, plain "
            f"{mean_at(grpo, 'pass@k', 1):.3f})")
        top = max(mean_at(warm, "pass@k", kmax), mean_at(grpo, "pass@k", kmax))
        verdict = (f"not testable here (warm start and plain pass@{kmax} >= {CEILING})"
                   if min(mean_at(warm, "pass@k", kmax), mean_at(grpo, "pass@k", kmax)) >= CEILING
                   else _sign_verdict(d, kmax, -1))
        add(f"RL: plain GRPO narrows pass@k at large k (k={kmax}) below the warm start", verdict,
            f"plain - warm start at k={kmax}: {_fmt(d, kmax)} (warm {mean_at(warm, 'pass@k', kmax):.3f}, plain "
            f"{mean_at(grpo, 'pass@k', kmax):.3f}; max {top:.3f})")
    if grpo and cat:
        d = diffs["grpo_cat - grpo|pass@k"]
        label = labels["grpo_cat"]
        both = min(mean_at(cat, "pass@k", kmax), mean_at(grpo, "pass@k", kmax))
        verdict = (f"not testable here (both pass@{kmax} >= {CEILING})" if both >= CEILING
                   else _sign_verdict(d, kmax, +1))
        add(f"RL: {label} keeps more coverage than plain GRPO (pass@{kmax})", verdict,
            f"CAT - plain at k={kmax}: {_fmt(d, kmax)}; at k={cat_n}: {_fmt(d, cat_n)} (CAT pass@{kmax} "
            f"{mean_at(cat, 'pass@k', kmax):.3f}, plain {mean_at(grpo, 'pass@k', kmax):.3f})")
        if warm is not None:
            w = diffs["grpo_cat - warm|pass@k"]
            add(f"RL: {label} pays a small pass@1 cost: its pass@1 stays above the warm start's",
                _sign_verdict(w, 1, +1),
                f"CAT - warm start at k=1: {_fmt(w, 1)}; CAT - plain at k=1 (the cost): {_fmt(d, 1)}")
    if grpo and maj:
        d = diffs["grpo_maj - grpo|maj@k"]
        label = labels["grpo_maj"]
        k = cat_n if cat_n in d["k"] else d["k"][-1]
        note = ""
        if warm is not None and mean_at(warm, "maj@k", kmax) <= mean_at(warm, "pass@k", 1):
            verdict = "not testable here (the warm start's plurality answer is no more often right than one sample)"
        elif min(mean_at(maj, "maj@k", k), mean_at(grpo, "maj@k", k)) >= CEILING:
            verdict = f"not testable here (both maj@{k} >= {CEILING})"
        else:
            verdict = _sign_verdict(d, k, +1)
        if warm is not None:
            note = (f"; warm start pass@1 {mean_at(warm, 'pass@k', 1):.3f}, maj@{kmax} (plurality of all samples) "
                    f"{mean_at(warm, 'maj@k', kmax):.3f}")
        add(f"RL: {label} improves maj@{k} over plain GRPO", verdict,
            f"CAT maj - plain at maj@{k}: {_fmt(d, k)}; at maj@{kmax}: {_fmt(d, kmax)} (CAT maj@{k} "
            f"{mean_at(maj, 'maj@k', k):.3f}, plain {mean_at(grpo, 'maj@k', k):.3f}){note}")
    sft = per_seed.get("sft")
    for name in ("sft_cat4", "sft_cat16", "sft_cat64"):
        if not sft or name not in per_seed:
            continue
        n = int(VARIANTS[name][1].split("@")[1])
        k = min(n, kmax)
        d = diffs[f"{name} - sft|pass@k"]
        both = min(mean_at(per_seed[name], "pass@k", k), mean_at(sft, "pass@k", k))
        verdict = (f"not testable here (both pass@{k} >= {CEILING})" if both >= CEILING
                   else _sign_verdict(d, k, +1))
        add(f"SFT: {labels[name]} improves pass@{k} over plain SFT", verdict,
            f"CAT - plain at k={k}: {_fmt(d, k)}; at k=1: {_fmt(d, 1)} (plain SFT pass@{k} "
            f"{mean_at(sft, 'pass@k', k):.3f})")
    return out


def claims_table(rows: list[dict[str, str]]) -> str:
    """Markdown: one line per claim with its verdict and numbers."""
    if not rows:
        return ""
    lines = ["| claim | verdict | numbers: mean over seeds [95% CI over training seeds and problems] |",
             "|---|---|---|"]
    lines += [f"| {r['claim']} | **{r['verdict']}** | {r['numbers']} |" for r in rows]
    return "\n".join(lines) + "\n"


def differences_table(diffs: dict, labels: dict[str, str], title: str = "CAT - plain (pass@k)",
                      ks: tuple[int, ...] = TABLE_KS) -> str:
    """Markdown: CAT - plain at each table k: mean over seeds [95% CI over seeds and problems] (seed range)."""
    if not diffs:
        return ""
    ks = [k for k in ks if k in next(iter(diffs.values()))["k"]]
    lines = [f"| {title} | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name, d in diffs.items():
        cells = []
        for k in ks:
            i = d["k"].index(k)
            cells.append(f"{d['mean'][i]:+.3f} [{d['ci_low'][i]:+.3f}, {d['ci_high'][i]:+.3f}] "
                         f"(seeds {d['seed_min'][i]:+.3f}..{d['seed_max'][i]:+.3f})")
        lines.append(f"| {labels[name]} ({len(d['seeds'])} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ report
def aggregate(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict[str, dict[str, list]]]:
    """variant -> metric -> {k, mean, std} over seeds (std with ddof=1 when there are >= 2 seeds)."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for name, seeds in per_seed.items():
        out[name] = {}
        for metric in ("pass@k", "maj@k"):
            values = np.array([s[metric]["mean"] for s in seeds.values()])
            ks = next(iter(seeds.values()))[metric]["k"]
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
            out[name][metric] = {"k": ks, "mean": values.mean(axis=0).tolist(), "std": std.tolist(),
                                 "seeds": len(values)}
    return out


def markdown_table(agg: dict, labels: dict[str, str], warm: dict | None = None,
                   ks: tuple[int, ...] = TABLE_KS) -> str:
    """Markdown: pass@k and maj@k of every variant (mean ± std over seeds), the shared warm start's first (one pool)."""
    lines = []
    for metric in ("pass@k", "maj@k"):
        ks_m = [k for k in ks if k in next(iter(agg.values()))[metric]["k"]]
        lines += [f"| {metric} | " + " | ".join(f"k={k}" for k in ks_m) + " |", "|---" * (len(ks_m) + 1) + "|"]
        if warm is not None:
            row = warm[metric]
            lines.append("| SFT warm start (shared, one pool) | "
                         + " | ".join(f"{row['mean'][row['k'].index(k)]:.3f}" for k in ks_m) + " |")
        ks = ks_m
        for name, m in agg.items():
            row = m[metric]
            cells = [f"{row['mean'][row['k'].index(k)]:.3f} ± {row['std'][row['k'].index(k)]:.3f}" for k in ks]
            lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_improvement(agg: dict, labels: dict[str, str], path: Path) -> Path:
    """Improvement over the plain baseline vs k (log2 axis): SFT variants (pass@k), RL variants (pass@k / maj@k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("sft", "grpo") if BASELINE[m] in agg] or ["grpo"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.6 * len(methods), 4.2), dpi=120, squeeze=False)
    for ax, method in zip(axes[0], methods):
        base = BASELINE[method]
        if base not in agg:
            continue
        for name, m in agg.items():
            if name == base or VARIANTS[name][0] != method:
                continue
            metric = "maj@k" if name == "grpo_maj" else "pass@k"
            ks = np.array(m[metric]["k"])
            diff = np.array(m[metric]["mean"]) - np.array(agg[base][metric]["mean"])
            err = np.sqrt(np.array(m[metric]["std"]) ** 2 + np.array(agg[base][metric]["std"]) ** 2)
            ax.plot(ks, diff, marker="o", ms=4, label=f"{labels[name]} ({metric})")
            ax.fill_between(ks, diff - err, diff + err, alpha=0.15, linewidth=0)
        ax.axhline(0, color="0.3", lw=0.8)
        ks_all = agg[base]["pass@k"]["k"]
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks_all, [str(k) for k in ks_all])
        ax.set_xlabel("k")
        ax.set_ylabel(f"improvement over {labels[base]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("SFT objectives" if method == "sft" else "RL objectives", fontsize=10)
    fig.tight_layout()
    from jax_cat.io.atomic import save_figure

    return save_figure(fig, path)


def report_tables(results: dict[str, Any]) -> str:
    """The markdown of one results.json: pass@k / maj@k tables, CAT - plain (pass@k; maj@k for CAT maj), claims."""
    labels, agg, warm = results["labels"], results["aggregate"], results.get("warm_start")
    comparisons = results.get("comparisons") or {}
    maj = {name: comparisons[f"{name} - grpo|maj@k"] for name in ("grpo_maj",) if f"{name} - grpo|maj@k" in comparisons}
    ks = tuple(sorted(set(TABLE_KS) | {results["args"]["cat_n"]}))
    parts = [markdown_table(agg, labels, warm, ks), differences_table(results.get("cat_minus_plain") or {}, labels,
                                                                      ks=ks),
             differences_table(maj, labels, "CAT maj - plain (maj@k)", ks=ks), claims_table(results.get("claims") or [])]
    return "\n".join(p for p in parts if p)


def merge(paths: list[str], out: Path) -> tuple[str, Path]:
    """One report from several results.json of the same settings and disjoint seeds (e.g. one process per seed):
    their per-seed curves together, the warm start's pool from the first (all must score the same pool)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    ignore = {"seeds", "out", "merge"}
    first = runs[0]
    per_seed: dict[str, dict[int, dict]] = {}
    timing: dict[str, float] = {}
    for path, res in zip(paths, runs):
        diff = sorted(k for k in set(res["args"]) | set(first["args"])
                      if k not in ignore and res["args"].get(k) != first["args"].get(k))
        if diff:
            raise SystemExit(f"reproduce_cat.py: error: {path} has other settings than {paths[0]} ({diff}); merge "
                             "only runs that differ in --seeds")
        if (res.get("warm_start") or {}).get("num_correct") != (first.get("warm_start") or {}).get("num_correct"):
            raise SystemExit(f"reproduce_cat.py: error: {path} scored another warm-start pool than {paths[0]}")
        for name, seeds in res["per_seed"].items():
            for seed, row in seeds.items():
                if int(seed) in per_seed.get(name, {}):
                    raise SystemExit(f"reproduce_cat.py: error: {name} seed {seed} is in two of the files")
                per_seed.setdefault(name, {})[int(seed)] = row
        timing.update({f"{path}:{k}": v for k, v in res["timing_s"].items()})
    args = argparse.Namespace(**{**first["args"], "out": str(out), "merge": list(paths),
                                 "seeds": ",".join(str(s) for s in sorted({s for d in per_seed.values() for s in d}))})
    command = "; ".join(r["command"] for r in runs)
    return write_report(out, args, None, [None] * first["num_problems"], first["labels"], per_seed, timing,
                        time.perf_counter() - max(r["wall_s"] for r in runs), first.get("warm_start"),
                        command=command, measured=first.get("provenance"))


def write_report(out: Path, args, argv, problems, labels, per_seed, timing, t0, warm=None,
                 command: str | None = None, measured: dict | None = None) -> tuple[str, Path]:
    """results.json, table.md and improvement.png from the runs finished so far (rewritten after each run)."""
    done = {name: seeds for name, seeds in per_seed.items() if seeds}
    agg = aggregate(done)
    diffs = paired_differences(done)
    comparisons = all_differences(done, warm)
    from jax_cat.evaluate import provenance

    results = {"args": vars(args), "num_problems": len(problems), "labels": labels, "aggregate": agg,
               "cat_minus_plain": diffs, "comparisons": comparisons, "warm_start": warm,
               "claims": claims(done, warm, comparisons, args.cat_n, labels), "provenance": measured or provenance(),
               "per_seed": {n: {str(s): v for s, v in d.items()} for n, d in done.items()},
               "timing_s": timing, "wall_s": time.perf_counter() - t0,
               "command": command or "python scripts/reproduce_cat.py " + " ".join(sys.argv[1:] if argv is None
                                                                                 else argv)}
    from jax_cat.io.atomic import atomic_write_text

    table = report_tables(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "table.md", table + "\n")
    return table, plot_improvement(agg, labels, out / "improvement.png")


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"reproduce_cat.py: error: unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    if args.merge:
        table, plot = merge(args.merge, out)
        print(table + f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {plot}")
        return 0
    t0 = time.perf_counter()
    labels = {name: VARIANTS[name][2].format(n=args.cat_n) for name in variants}

    from jax_cat.training.default_run import default_mesh
    from jax_cat.training.grpo import run_grpo
    from jax_cat.training.runtime import load_model
    from jax_cat.training.sft import run_sft

    if args.model is None:
        base_cfg, warm, problems = arithmetic_setup(args, out)
        max_new_tokens = base_cfg.eval.max_new_tokens or base_cfg.rollout.max_new_tokens
    else:
        from jax_cat.evaluate import load_problems

        base_cfg, warm = None, args.model
        dataset = args.dataset or "gsm8k"
        problems = load_problems(dataset, split="test", limit=args.test_size)
        max_new_tokens = args.max_new_tokens
        if args.warmup_steps:  # an SFT warm start on the dataset's solutions first
            cfg = variant_config(args, None, Path(args.model), "sft", 0).replace(**{"train.steps": args.warmup_steps})
            mesh = default_mesh(cfg)
            model, tokenizer = load_model(cfg, mesh)
            result = run_sft(cfg, model=model, tokenizer=tokenizer, mesh=mesh, out=out, stage="warm_start")
            from jax_cat.training.runtime import save_final

            warm = save_final(result.model, tokenizer, out / "warm_start")

    per_seed: dict[str, dict[int, dict]] = {name: {} for name in variants}
    timing: dict[str, float] = {}
    t1 = time.perf_counter()  # the shared warm start, scored once (the claims compare RL/SFT with it)
    warm_cfg = variant_config(args, base_cfg, Path(str(warm)), "sft", 0)
    model, tokenizer = load_model(warm_cfg, default_mesh(warm_cfg))
    warm_scores = scores(model, tokenizer, problems, args, warm_cfg, max_new_tokens, seed=1000)
    timing["warm_start"] = time.perf_counter() - t1
    p, m = warm_scores["pass@k"], warm_scores["maj@k"]
    print(f"warm start{'':<17s} pass@1 {p['mean'][0]:.3f} pass@{p['k'][-1]} {p['mean'][-1]:.3f} "
          f"maj@{m['k'][-1]} {m['mean'][-1]:.3f} ({timing['warm_start']:.0f}s)", flush=True)
    for seed in seeds:
        for name in variants:
            cfg = variant_config(args, base_cfg, Path(str(warm)), name, seed)
            t1 = time.perf_counter()
            mesh = default_mesh(cfg)
            model, tokenizer = load_model(cfg, mesh)
            loop = run_sft if cfg.train.method == "sft" else run_grpo
            result = loop(cfg, model=model, tokenizer=tokenizer, mesh=mesh, out=out / f"seed{seed}", stage=name)
            per_seed[name][seed] = scores(result.model, tokenizer, problems, args, cfg, max_new_tokens, seed=1000 + seed)
            timing[f"{name}/seed{seed}"] = time.perf_counter() - t1
            p, m = per_seed[name][seed]["pass@k"], per_seed[name][seed]["maj@k"]
            print(f"seed {seed} {labels[name]:<20s} pass@1 {p['mean'][0]:.3f} pass@{p['k'][-1]} {p['mean'][-1]:.3f} "
                  f"maj@{m['k'][-1]} {m['mean'][-1]:.3f} ({timing[f'{name}/seed{seed}']:.0f}s)", flush=True)

            write_report(out, args, argv, problems, labels, per_seed, timing, t0, warm_scores)  # after each run
    table, plot = write_report(out, args, argv, problems, labels, per_seed, timing, t0, warm_scores)
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {plot} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
