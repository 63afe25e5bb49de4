"""The table of default-run settings tried for issue 21, each judged on the CAT paper's picture over its seeds.

Each input is a `scripts/combine_default_runs.py` result (`<out>.json`: one setting, several training seeds). For
every setting the table gives, as the mean over seeds with the 95 % CI over seeds and problems: plain GRPO - warm
start at pass@1 and pass@64, CAT - warm start at pass@64, CAT - plain at pass@1 and pass@64, and plain GRPO's
training reward (first -> last logged 25-step window, mean over seeds). Then each criterion of the picture is
marked yes / no by a stated rule:

- "RL sharpens": plain - warm start at pass@1 has its CI above 0;
- "RL narrows": plain - warm start at pass@64 has its CI below 0;
- "CAT keeps coverage": CAT - warm start at pass@64 has its CI reaching 0 or above (no measurable loss);
- "CAT between": warm start <= CAT <= plain GRPO at pass@1 (means over seeds; so no when RL lost pass@1);
- "reward rises": plain GRPO's last logged 25-step training reward above its first in every seed (the issue's
  "training reward rises clearly": a rise in the mean alone can be one seed's);
- "CAT > plain at K": CAT - plain at pass@64 has its CI above 0.

    python scripts/regime_table.py "sum3_2d, 3e-4, CAT pass@16=docs/results_data/issue21_default_sum3_p16.json" \\
        ... --out docs/results_data/issue21_default_tried.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_cat.io.atomic import atomic_write_text, with_extension  # noqa: E402

CRITERIA = ("RL sharpens", "RL narrows", "CAT keeps coverage", "CAT between", "reward rises", "CAT > plain at K")


def _at(diff: dict[str, list], ks: list[int], k: int) -> tuple[float, float, float]:
    i = ks.index(k)
    return diff["mean"][i], diff["ci_low"][i], diff["ci_high"][i]


def judge(combined: dict[str, Any]) -> dict[str, Any]:
    """One setting's numbers (differences at k = 1 and the largest k, training reward) and its yes/no criteria."""
    ks, d = combined["ks"], combined["differences"]
    kmax = ks[-1]
    plain1, plain_k = _at(d["plain - warm start"], ks, 1), _at(d["plain - warm start"], ks, kmax)
    cat_k = _at(d["CAT - warm start"], ks, kmax)
    cmp1, cmp_k = _at(d["CAT - plain"], ks, 1), _at(d["CAT - plain"], ks, kmax)
    p1 = {m: float(np.mean([row[m]["pass@k"][0] for row in combined["per_seed"]])) for m in ("sft", "grpo", "grpo_cat")}
    trains = [row["grpo"].get("train") or {} for row in combined["per_seed"]]
    rewards = [(t["first_reward"], t["last_reward"]) for t in trains if "first_reward" in t]
    reward = tuple(float(np.mean(x)) for x in zip(*rewards)) if rewards else None
    verdict = {"RL sharpens": plain1[1] > 0, "RL narrows": plain_k[2] < 0, "CAT keeps coverage": cat_k[2] >= 0,
               "CAT between": p1["sft"] <= p1["grpo_cat"] <= p1["grpo"],
               "reward rises": bool(rewards) and len(rewards) == len(trains) and all(b > a for a, b in rewards),
               "CAT > plain at K": cmp_k[1] > 0}
    return {"seeds": combined["seeds"], "kmax": kmax, "plain_minus_warm_1": plain1, "plain_minus_warm_k": plain_k,
            "cat_minus_warm_k": cat_k, "cat_minus_plain_1": cmp1, "cat_minus_plain_k": cmp_k, "pass@1": p1,
            "plain_reward": reward, "criteria": verdict}


def _ci(x: tuple[float, float, float]) -> str:
    return f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"


def to_markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The tried-settings table (one row a setting), as docs/results.md prints it."""
    head = ("| setting | seeds | plain - warm p@1 | plain - warm p@K | CAT - warm p@K | CAT - plain p@1 | CAT - plain p@K "
            "| plain reward first -> last | " + " | ".join(CRITERIA) + " |")
    lines = [head, "|" + "---|" * (8 + len(CRITERIA))]
    for label, j in rows:
        reward = "-" if j["plain_reward"] is None else f"{j['plain_reward'][0]:.3f} -> {j['plain_reward'][1]:.3f}"
        marks = " | ".join("yes" if j["criteria"][c] else "no" for c in CRITERIA)
        lines.append(f"| {label} | {','.join(map(str, j['seeds']))} | {_ci(j['plain_minus_warm_1'])} | "
                     f"{_ci(j['plain_minus_warm_k'])} | {_ci(j['cat_minus_warm_k'])} | {_ci(j['cat_minus_plain_1'])} "
                     f"| {_ci(j['cat_minus_plain_k'])} | {reward} | {marks} |")
    kmax = sorted({j["kmax"] for _, j in rows})
    lines.append(f"\nK = {', '.join(map(str, kmax))}; mean over seeds [95 % CI over seeds and problems].")
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", metavar="LABEL=COMBINED_JSON",
                   help="a label and a scripts/combine_default_runs.py result")
    p.add_argument("--out", type=Path, required=True, help="writes OUT (markdown) and OUT with .json")
    args = p.parse_args(argv)
    rows = []
    for item in args.settings:
        label, sep, path = item.rpartition("=")
        if not sep or not Path(path).is_file():
            p.error(f"expected LABEL=COMBINED_JSON with an existing file, got {item!r}")
        rows.append((label, judge(json.loads(Path(path).read_text()))))
    table = to_markdown(rows)
    atomic_write_text(with_extension(args.out, ".md"), table)
    atomic_write_text(with_extension(args.out, ".json"), json.dumps(
        {"rows": [{"label": label, **j} for label, j in rows],
         "command": "python scripts/regime_table.py " + " ".join(f"'{s}'" for s in args.settings)}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
