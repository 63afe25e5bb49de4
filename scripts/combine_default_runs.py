"""Combine default-run folders that differ only in `train.seed` into one verdict over seeds AND problems.

`python -m jax_cat.train --out DIR --set train.seed=S ...` trains its own warm start, plain GRPO and CAT GRPO per
seed and reports CAT - plain with a paired CI over problems only (one seed). This script joins several such folders
(same settings, same held-out problems, other seeds) and prints, for each k: every model's pass@k (and maj@k when
the runs evaluated it) per seed, and the paired differences CAT - plain, plain - warm start and CAT - warm start as
the mean over seeds, the seeds' range and a 95 % CI from the two-level bootstrap over training seeds and problems
(`jax_cat.evaluate.paired_difference` on the [seeds, problems] counts). It writes `<out>.json` and `<out>.md`.

    python scripts/combine_default_runs.py runs/s0 runs/s1 runs/s2 --out docs/results_data/issue21_cat_sum3_sft3000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_cat.evaluate.estimates import paired_difference  # noqa: E402
from jax_cat.io.atomic import atomic_write_text, with_extension  # noqa: E402
from jax_cat.training.config import _flatten  # noqa: E402 - the dotted names run folders are compared by

STAGES = {"sft": "warm_start", "grpo": "grpo", "grpo_cat": "grpo_cat"}
PAIRS = (("grpo_cat", "grpo", "CAT - plain"), ("grpo", "sft", "plain - warm start"),
         ("grpo_cat", "sft", "CAT - warm start"))
IGNORED_KEYS = {"train.seed", "model.path"}


def load_run(folder: Path) -> dict[str, Any]:
    """One default-run folder: its results.json plus each stage's maj@k per-problem estimates, if evaluated."""
    results = json.loads((folder / "results.json").read_text())
    for model, stage in STAGES.items():
        ev = folder / stage / "eval" / "results.json"
        if ev.is_file():
            maj = json.loads(ev.read_text())["metrics"].get("maj@k")
            if maj is not None:
                results["models"][model]["maj@k"] = maj
    results["folder"] = str(folder)
    return results


def check_same_settings(runs: list[dict[str, Any]]) -> None:
    """Refuse runs whose settings differ beyond the seed, or whose held-out problems differ (no pairing then)."""
    first = _flatten(runs[0]["config"])
    for run in runs[1:]:
        other = _flatten(run["config"])
        # a key only one side has is a config key added between the runs' commits (its default), not a difference
        diff = sorted(k for k in set(first) & set(other) if k not in IGNORED_KEYS and first[k] != other[k])
        if diff:
            raise SystemExit(f"combine_default_runs: {run['folder']} differs from {runs[0]['folder']} in "
                             f"{', '.join(diff[:6])}; only train.seed may differ")
    seeds = [run["config"]["train"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"combine_default_runs: repeated training seeds {seeds}")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed curves and the paired differences over seeds and problems."""
    check_same_settings(runs)
    ks = list(runs[0]["models"]["sft"]["pass@k"]["k"])
    n = int(runs[0]["models"]["sft"]["n"])
    counts = {m: np.stack([np.asarray(r["models"][m]["num_correct"]) for r in runs]) for m in STAGES}
    per_seed = []
    for run in runs:
        row = {"seed": run["config"]["train"]["seed"], "folder": run["folder"],
               "provenance": run.get("provenance", {})}
        for m in STAGES:
            row[m] = {"pass@k": run["models"][m]["pass@k"]["mean"]}
            if run["models"][m].get("train"):  # the stage's training summary (first / last logged reward, steps)
                row[m]["train"] = run["models"][m]["train"]
            if "maj@k" in run["models"][m]:
                row[m]["maj@k"] = run["models"][m]["maj@k"]["mean"]
        per_seed.append(row)
    differences = {label: paired_difference(counts[a], counts[b], n=n, ks=ks) for a, b, label in PAIRS}
    return {"ks": ks, "n": n, "num_problems": int(counts["sft"].shape[1]), "seeds": [r["seed"] for r in per_seed],
            "per_seed": per_seed, "differences": differences,
            "settings": runs[0].get("settings"), "command": "python scripts/combine_default_runs.py "
            + " ".join(r["folder"] for r in runs)}


def to_markdown(combined: dict[str, Any]) -> str:
    """The per-seed table and the difference table, as docs/results.md prints them."""
    ks = combined["ks"]
    head = "| seed | model | " + " | ".join(f"p@{k}" for k in ks) + " | " + " | ".join(f"maj@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ks))]
    names = {"sft": "SFT warm start", "grpo": "plain GRPO", "grpo_cat": "CAT GRPO"}
    for row in combined["per_seed"]:
        for m, name in names.items():
            maj = row[m].get("maj@k", [None] * len(ks))
            cells = [f"{v:.3f}" for v in row[m]["pass@k"]] + ["-" if v is None else f"{v:.3f}" for v in maj]
            lines.append(f"| {row['seed']} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "| pass@k difference | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for label, d in combined["differences"].items():
        cells = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] (seeds {smin:+.3f}..{smax:+.3f})"
                 for m, lo, hi, smin, smax in zip(d["mean"], d["ci_low"], d["ci_high"],
                                                  d.get("seed_min", d["mean"]), d.get("seed_max", d["mean"]))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="default-run folders (--out of python -m jax_cat.train)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "results.json").is_file()]
    if missing:
        p.error(f"no results.json in {', '.join(missing)} (an unfinished run?)")
    combined = combine([load_run(f) for f in args.folders])
    table = to_markdown(combined)
    atomic_write_text(with_extension(args.out, ".json"), json.dumps(combined, indent=1) + "\n")
    atomic_write_text(with_extension(args.out, ".md"), table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
