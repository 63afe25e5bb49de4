"""Write the measured tables of docs/results.md from results.json files, so every number there says when, where
and with what it was measured, and how to rerun it.

    python scripts/results_tables.py --default runs/default/results.json [more seeds' results.json ...] \\
        [--reproduce runs/reproduce_cat/results.json] [--doc docs/results.md]
    python scripts/results_tables.py --regenerate    # every section again from the results.json it names
    python scripts/results_tables.py --check         # exit 1 if the doc drifted from those files (a test runs it)

Each table goes between its markers in the doc (`<!-- default-run:begin -->` ... `<!-- default-run:end -->`,
`<!-- reproduce-cat:begin -->` ... `<!-- reproduce-cat:end -->`), replacing what was there; the rest of the doc is
kept. The doc is rewritten atomically. Bad input (a missing or unreadable file, missing markers): one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TABLE_KS = (1, 4, 16, 64)


def _provenance_line(res: dict[str, Any]) -> str:
    p = res.get("provenance") or {}
    dirty = " (+ uncommitted changes)" if p.get("dirty") else ""
    isa = f", XLA code {p['cpu_isa']}" if p.get("cpu_isa") else ""  # recorded since issue 21's range over machines
    return (f"commit {p.get('commit', '?')}{dirty}, {p.get('cpu', '?')} ({p.get('cores', '?')} cores{isa}), "
            f"jax {p.get('jax', '?')}, {p.get('utc', '?')} UTC, {res.get('wall_seconds', float('nan')):.0f} s wall")


def _overrides(settings: dict[str, Any]) -> str:
    """The default-run CLI flags that reproduce `settings` (only those that differ from `DefaultRun()`)."""
    import dataclasses

    from jax_cat.training.default_run import DefaultRun

    defaults = dataclasses.asdict(DefaultRun())
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
                    if k in defaults and k != "seed" and v != defaults[k])


def default_run_section(results: list[dict[str, Any]], paths: list[str]) -> str:
    """Markdown for one or more default runs (one per training seed): per-seed pass@k rows, CAT - plain with the
    paired 95% CI of each seed, and the range of CAT - plain over seeds."""
    ks_all = results[0]["models"]["sft"]["pass@k"]["k"]
    ks = [k for k in TABLE_KS if k in ks_all]
    same = len({_overrides(r["settings"]) for r in results}) == 1  # seeds of one setting, or several settings
    head = "| run | model | " + " | ".join(f"k={k}" for k in ks) + " |\n" + "|---" * (len(ks) + 2) + "|\n"
    rows, diffs = [], []
    for res in results:
        seed = f"seed {res['settings']['seed']}" + ("" if same else f" `{_overrides(res['settings'])}`")
        for m in res["models"].values():
            cells = [f"{m['pass@k']['mean'][ks_all.index(k)]:.3f}" for k in ks]
            rows.append(f"| {seed} | {m['label']} | " + " | ".join(cells) + " |")
        d = res.get("cat_minus_plain")
        if d:
            cells = [f"{d['mean'][d['k'].index(k)]:+.3f} [{d['ci_low'][d['k'].index(k)]:+.3f}, "
                     f"{d['ci_high'][d['k'].index(k)]:+.3f}]" for k in ks]
            rows.append(f"| {seed} | **CAT - plain** [95% CI] | " + " | ".join(cells) + " |")
            diffs.append([d["mean"][d["k"].index(k)] for k in ks])
    s = results[0]["settings"]
    lines = [("Settings (shared by every run below): " if same else "Settings of the first run (the others differ "
              "by the flags in their row): ") + f"preset `{s['preset']}`, {s['sft_steps']} SFT steps, GRPO {s['grpo_steps']} steps at lr "
             f"{s['grpo_learning_rate']:g} ({s.get('grpo_warmup_steps', 0)} warm-up), {s['grpo_prompts']} prompts x "
             f"{s['group_size']}, CAT {s['cat_strategy']}; {results[0]['num_problems']} held-out problems x "
             f"{s['eval_samples']} samples.", "", head + "\n".join(rows), ""]
    if len(diffs) > 1 and same:
        d = np.asarray(diffs)
        lines.append("CAT - plain over the seeds above (min .. max of the seeds' differences): "
                     + ", ".join(f"k={k}: {lo:+.3f} .. {hi:+.3f}" for k, lo, hi in zip(ks, d.min(0), d.max(0))) + ".")
        lines.append("")
    lines.append("Measured on: " + "; ".join(f"seed {r['settings']['seed']}: {_provenance_line(r)}" for r in results)
                 + ".")
    lines.append("Rerun: " + "; ".join(f"`python -m jax_cat.training.default_run --seed {r['settings']['seed']} "
                                         f"{_overrides(r['settings'])} --out <dir>`".replace("  ", " ")
                                         for r in results)
                 + f" (then `python scripts/results_tables.py --default <dir>/results.json ...`). Sources: "
                 + ", ".join(f"`{p}`" for p in paths) + ".")
    return "\n".join(lines)


def _reproduce_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_cat", ROOT / "scripts" / "reproduce_cat.py")
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    return rc


def reproduce_section(res: dict[str, Any], path: str) -> str:
    """Markdown for one scripts/reproduce_cat.py results.json: its pass@k/maj@k tables (mean ± std over seeds, the
    shared warm start), CAT - plain with the CI over training seeds and problems, and each claim's verdict."""
    tables = _reproduce_module().report_tables(res)
    return "\n".join([f"Command: `{res['command']}` (then `python scripts/results_tables.py --reproduce "
                      "<out>/results.json` writes this section).", "", tables,
                      f"Measured on: {_provenance_line({**res, 'wall_seconds': res.get('wall_s', float('nan'))})}. "
                      f"Source: `{path}`."])


def replace_between(doc: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        raise ValueError(f"the doc has no `{begin}` ... `{end}` markers: add them where the {name} table goes")
    head, rest = doc.split(begin, 1)
    return head + begin + "\n" + body.rstrip() + "\n" + end + rest.split(end, 1)[1]


def _load(path: str) -> dict[str, Any]:
    try:
        return json.loads((ROOT / path if not Path(path).is_absolute() and not Path(path).exists() else Path(path))
                          .read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read results ({err.__class__.__name__}: {err}); pass a results.json "
                         "written by the default run or scripts/reproduce_cat.py") from None


SECTIONS = ("default-run", "reproduce-cat")  # the kinds; a doc may hold several of a kind, e.g. reproduce-cat-sum3


def section_names(doc: str) -> list[str]:
    """Every generated section in the doc, in order: a kind (SECTIONS) or a kind with a suffix ("reproduce-cat-sum3")."""
    kinds = "|".join(re.escape(k) for k in SECTIONS)
    return re.findall(rf"<!-- ((?:{kinds})[\w-]*):begin -->", doc)


def _body(doc: str, name: str) -> str:
    """The text between a section's markers ("" when the doc has none)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    return doc.split(begin, 1)[1].split(end, 1)[0] if begin in doc and end in doc else ""


def section_sources(doc: str, name: str) -> list[str]:
    """The results.json paths a generated section names on its `Source(s): ...` line ([] when it names none)."""
    found = re.findall(r"Sources?: (.*)$", _body(doc, name), flags=re.M)
    return re.findall(r"`([^`]+)`", found[-1]) if found else []


def regenerate(doc: str) -> str:
    """The doc with every generated section rewritten from the results.json files it names (see --check)."""
    for name in section_names(doc):
        sources = section_sources(doc, name)
        if not sources:
            continue
        body = (default_run_section([_load(f) for f in sources], sources) if name.startswith("default-run")
                else reproduce_section(_load(sources[0]), sources[0]))
        doc = replace_between(doc, name, body)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--default", nargs="*", default=[], help="default-run results.json files (one per seed)")
    p.add_argument("--reproduce", default=None, help="a scripts/reproduce_cat.py results.json")
    p.add_argument("--section", default=None, metavar="NAME",
                   help="the markers --default / --reproduce write between (default: default-run / reproduce-cat; "
                        "e.g. reproduce-cat-sum3 for a second reproduction in the same doc)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--regenerate", action="store_true",
                   help="rewrite every section from the results.json files it names (its Source(s) line)")
    p.add_argument("--check", action="store_true",
                   help="regenerate every section from the results.json it names and exit 1 if the doc differs "
                        "(nothing written)")
    args = p.parse_args(argv)
    try:
        doc = Path(args.doc).read_text()
        if args.check:
            fresh = regenerate(doc)
            if fresh != doc:
                changed = [n for n in section_names(doc) if _body(fresh, n) != _body(doc, n)]
                print(f"results_tables.py: {args.doc} differs from its results.json (sections {changed}); run "
                      "`python scripts/results_tables.py --regenerate`", file=sys.stderr)
                return 1
            print(f"{args.doc}: every generated section matches its results.json")
            return 0
        if args.regenerate:
            doc = regenerate(doc)
        if args.default:
            body = default_run_section([_load(f) for f in args.default], args.default)
            doc = replace_between(doc, args.section or "default-run", body)
        if args.reproduce:
            body = reproduce_section(_load(args.reproduce), args.reproduce)
            doc = replace_between(doc, args.section or "reproduce-cat", body)
    except (OSError, ValueError, KeyError) as err:
        print(f"results_tables.py: error: {err}", file=sys.stderr)
        return 2
    from jax_cat.atomic import atomic_write_text

    atomic_write_text(Path(args.doc), doc)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
