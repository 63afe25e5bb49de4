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
experiment's (configs/default.toml; the warm start a trainer run in `<out>/warm_start/`, reused). Outputs: `<out>/results.json` (every seed's curves), `<out>/table.md`,
`<out>/improvement.png`, and each run's metrics/checkpoints under `<out>/seed<S>/`.
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
    p.add_argument("--cat-n", type=int, default=8, help="N of CAT-GRPO pass@N and maj@N")
    p.add_argument("--sft-steps", type=int, default=300, help="SFT steps of each SFT variant (after the warm start)")
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--grpo-steps", type=int, default=200, help="GRPO steps of each RL variant")
    p.add_argument("--grpo-lr", type=float, default=None, help="default: the default run's")
    p.add_argument("--grpo-warmup", type=int, default=None, help="GRPO LR warm-up steps (default: the default run's)")
    p.add_argument("--test-size", type=int, default=100, help="held-out problems")
    p.add_argument("--n", type=int, default=64, help="samples per held-out problem (largest k)")
    p.add_argument("--warmup-steps", type=int, default=None, help="SFT warm-start steps (default: the default run's)")
    p.add_argument("--warm-start", default=None,
                   help="an existing warm start (HF folder, e.g. runs/default/warm_start) instead of training one")
    # real models
    p.add_argument("--model", default=None, help="HF checkpoint folder or hub id (default: the tiny arithmetic model)")
    p.add_argument("--dataset", default=None, help="trainer data.dataset for --model (gsm8k, math, a file, ...)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="with --model: tokens per completion")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --model: any trainer config key (repeatable), e.g. mesh.fsdp=8")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ configs
def arithmetic_setup(args: argparse.Namespace, out: Path):
    """(default-experiment Config, warm-start path, held-out problems) for the shipped task: the default
    experiment's recipe (configs/default.toml) and its warm start (`<out>/warm_start/`, a trainer run, reused)."""
    from jax_cat.training.data import eval_records
    from jax_cat.training.default_run import base_checkpoint, default_config, run_stage, warm_start_config

    changes: dict[str, Any] = {"eval.num_problems": args.test_size, "eval.n": args.n, "eval.ks": _ks(args.n)}
    if args.warmup_steps is not None:
        changes["warmup.steps"] = args.warmup_steps
    if args.grpo_lr is not None:
        changes["optimizer.learning_rate"] = args.grpo_lr
    if args.grpo_warmup is not None:
        changes["optimizer.warmup_steps"] = args.grpo_warmup
    cfg = default_config(changes)
    if args.warm_start:
        warm = Path(args.warm_start)
        print(f"warm start: {warm} (given)", flush=True)
    else:
        stage, reused = run_stage(warm_start_config(cfg, base_checkpoint(cfg, out)), out / "warm_start", reuse=True)
        warm = stage["final"]
        print(f"warm start: {warm} ({'reused' if reused else 'trained in %.0fs' % stage['seconds']})", flush=True)
    return cfg, warm, eval_records(cfg.data, cfg.eval.num_problems)


def _ks(n: int) -> list[int]:
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

    result = evaluate(model, tokenizer, problems, n=args.n, ks=_ks(args.n), max_new_tokens=max_new_tokens, seed=seed,
                      temperature=cfg.eval.temperature, use_chat_template=cfg.data.use_chat_template,
                      system=cfg.data.system, reward_fn=task_reward_fn(cfg.data), metrics=("pass@k", "maj@k"),
                      batch_size=cfg.eval.batch_size, progress=False)
    strip = lambda rows: {k: v for k, v in rows.items() if k != "per_problem"}  # noqa: E731
    return {"pass@k": strip(result["metrics"]["pass@k"]), "maj@k": strip(result["metrics"]["maj@k"]),
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


def differences_table(diffs: dict, labels: dict[str, str]) -> str:
    """Markdown: CAT - plain at each table k: mean over seeds [95% CI over seeds and problems] (seed range)."""
    if not diffs:
        return ""
    ks = [k for k in TABLE_KS if k in next(iter(diffs.values()))["k"]]
    lines = ["| CAT - plain (pass@k) | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
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


def markdown_table(agg: dict, labels: dict[str, str]) -> str:
    lines = []
    for metric in ("pass@k", "maj@k"):
        ks = [k for k in TABLE_KS if k in next(iter(agg.values()))[metric]["k"]]
        lines += [f"| {metric} | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
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
    from jax_cat.io.atomic import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def write_report(out: Path, args, argv, problems, labels, per_seed, timing, t0) -> tuple[str, Path]:
    """results.json, table.md and improvement.png from the runs finished so far (rewritten after each run)."""
    done = {name: seeds for name, seeds in per_seed.items() if seeds}
    agg = aggregate(done)
    diffs = paired_differences(done)
    table = markdown_table(agg, labels) + "\n" + differences_table(diffs, labels)
    from jax_cat.evaluate import provenance

    results = {"args": vars(args), "num_problems": len(problems), "labels": labels, "aggregate": agg,
               "cat_minus_plain": diffs, "provenance": provenance(),
               "per_seed": {n: {str(s): v for s, v in d.items()} for n, d in done.items()},
               "timing_s": timing, "wall_s": time.perf_counter() - t0,
               "command": "python scripts/reproduce_cat.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    from jax_cat.io.atomic import atomic_write_text

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

            write_report(out, args, argv, problems, labels, per_seed, timing, t0)  # partial results after each run
    table, plot = write_report(out, args, argv, problems, labels, per_seed, timing, t0)
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {plot} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
