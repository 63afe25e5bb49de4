"""The default experiment's report: each model's entry in results.json, the printed pass@k table (CAT - plain with
its paired 95% CI) and the pass@k plot."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jax_cat.atomic import save_figure
from jax_cat.extras import pyplot


def _model_entry(label: str, strategy: str, stage: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    ev = stage["eval"]
    num_correct = ev["num_correct"]
    return {"label": label, "strategy": strategy, "train": train, "pass@k": _without_per_problem(ev["metrics"]["pass@k"]),
            "num_problems": ev["num_problems"], "n": ev["config"]["n"], "seconds": ev["timing_s"],
            "solved_fraction": float(np.mean(np.asarray(num_correct) > 0)), "num_correct": num_correct}


def _without_per_problem(rows: Mapping[str, list]) -> dict[str, list]:
    return {k: v for k, v in rows.items() if k != "per_problem"}


def format_table(results: dict[str, Any]) -> str:
    """The printed pass@k table: one row per model, one column per k, plus CAT minus plain GRPO."""
    models = results["models"]
    ks = next(iter(models.values()))["pass@k"]["k"]
    name_w = max([len(m["label"]) for m in models.values()] + [len("  95% CI high")]) + 2
    lines = [" " * name_w + "".join(f"{'k=' + str(k):>8s}" for k in ks)]
    for m in models.values():
        lines.append(f"{m['label']:<{name_w}s}" + "".join(f"{v:8.3f}" for v in m["pass@k"]["mean"]))
    if "grpo" in models and "grpo_cat" in models:
        diff = np.asarray(models["grpo_cat"]["pass@k"]["mean"]) - np.asarray(models["grpo"]["pass@k"]["mean"])
        lines.append(f"{'CAT - plain':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in diff))
        paired = results.get("cat_minus_plain")
        if paired:
            lines.append(f"{'  95% CI low':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_low"]))
            lines.append(f"{'  95% CI high':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_high"]))
    return "\n".join(lines)


def plot_passk(results: dict[str, Any], path: Path) -> Path | None:
    """pass@k vs k (log2 axis) for every model with its bootstrap band, written atomically as PNG (None: no matplotlib)."""
    plt = pyplot(feature="the pass@k plot")
    if plt is None:
        return None

    styles = {"sft": ("0.45", "--"), "grpo": ("C0", "-"), "grpo_cat": ("C3", "-")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, m in results["models"].items():
        rows = m["pass@k"]
        color, line = styles.get(name, (None, "-"))
        ax.plot(rows["k"], rows["mean"], line, marker="o", ms=4, color=color, label=m["label"])
        ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, linewidth=0)
    ks = next(iter(results["models"].values()))["pass@k"]["k"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples at test time)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    cfg = results["settings"]
    ax.set_title(f"{cfg['preset']}: {results['num_problems']} held-out problems, n={cfg['eval_samples']} each, "
                 f"95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
