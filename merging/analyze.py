"""`python -m merging.analyze`: the DoTS task-vector analysis of an SFT and an RL checkpoint against their base.

Reads the three checkpoints tensor by tensor (never a whole model), prints a table (global L2 and mean|x| ratios,
sign conflict overall and among significant entries, cosine, per-module mass, per layer) and, with --out, writes
analysis.json, layer_magnitude.png, sign_conflict.png and module_mass.png.

    python -m merging.analyze --base BASE --sft SFT --rl RL --out report/

The functions behind it are `merging.stream.analyze_checkpoints` and `merging.analysis` (pytrees in memory).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from jax_cat.extras import pyplot
from jax_cat.io.atomic import atomic_write_text, save_figure
from merging._cli import ArgumentParser, CLIError, run_cli
from merging._paths import MODULES
from merging.analysis import Comparison

PROG = "python -m merging.analyze"


def _plt():
    return pyplot(feature="the analysis plots")


def plot_layer_magnitude(cmp: Comparison, path: Path) -> None:
    """Per-layer L2 norm and mean |x| of both task vectors."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    layers = cmp.by_layer()
    xs = list(layers)
    a, b = cmp.labels
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, fa, fb) in zip(
        axes,
        [("L2 norm per layer", lambda s: s.l2_a, lambda s: s.l2_b),
         ("mean |x| per layer", lambda s: s.mean_abs_a, lambda s: s.mean_abs_b)],
    ):
        ax.plot(xs, [fa(s) for s in layers.values()], "o-", label=f"tau_{a}")
        ax.plot(xs, [fb(s) for s in layers.values()], "s-", label=f"tau_{b}")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_sign_conflict(cmp: Comparison, path: Path) -> None:
    """Heat maps of the sign-conflict rate by module (rows) and layer (columns): all entries changed by both, and
    entries significant in both."""
    plt = _plt()
    import numpy as np

    cells = cmp.by_module_layer()
    layers = sorted({l for _, l in cells})
    modules = [m for m in MODULES if any(k[0] == m for k in cells)]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.5 * len(layers) * 2 + 4), 0.5 * len(modules) + 2.5))
    for ax, (title, metric) in zip(
        axes,
        [("sign conflict (both changed)", lambda s: s.conflict_rate),
         (f"sign conflict (both in top {100 * cmp.top_fraction:g}%)", lambda s: s.conflict_rate_significant)],
    ):
        grid = np.full((len(modules), len(layers)), np.nan)
        for (m, l), s in cells.items():
            grid[modules.index(m), layers.index(l)] = metric(s)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="coolwarm", aspect="auto")
        ax.set_xticks(range(len(layers)), [str(l) for l in layers])
        ax.set_yticks(range(len(modules)), modules)
        ax.set_xlabel("layer")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_module_mass(cmp: Comparison, path: Path) -> None:
    """Share of each vector's squared L2 norm, and of the parameters, per module."""
    plt = _plt()
    import numpy as np

    mass = cmp.mass()
    a, b = cmp.labels
    mods = list(mass)
    x = np.arange(len(mods))
    fig, ax = plt.subplots(figsize=(max(6, len(mods) * 0.9), 4))
    for off, key, label in ((-0.27, "params", "parameters"), (0.0, a, f"tau_{a}"), (0.27, b, f"tau_{b}")):
        ax.bar(x + off, [100 * mass[m][key] for m in mods], width=0.27, label=label)
    ax.set_xticks(x, mods)
    ax.set_ylabel("% of total")
    ax.set_title("update mass (share of ||tau||^2) per module")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def write_report(cmp: Comparison, out: Path) -> list[Path]:
    """analysis.json + the three PNGs into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "analysis.json", out / "layer_magnitude.png", out / "sign_conflict.png", out / "module_mass.png"]
    atomic_write_text(paths[0], json.dumps(_clean(cmp.summary()), indent=1) + "\n")
    if _plt() is None:
        return paths[:1]
    if cmp.by_layer():
        plot_layer_magnitude(cmp, paths[1])
        plot_sign_conflict(cmp, paths[2])
    else:
        paths = [p for p in paths if p.name not in ("layer_magnitude.png", "sign_conflict.png")]
    plot_module_mass(cmp, out / "module_mass.png")
    return paths


def _main(argv: list[str]) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--sft", required=True)
    p.add_argument("--rl", required=True)
    p.add_argument("--top-fraction", type=float, default=0.3,
                   help="an entry is significant when in its tensor's top fraction by |x| (default 0.3)")
    p.add_argument("--out", help="folder for analysis.json and the PNG plots")
    p.add_argument("--allow-nonfinite", action="store_true", help="analyse weights holding NaN/Inf instead of refusing")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.top_fraction <= 1:
        raise CLIError(f"--top-fraction must be in (0, 1], got {args.top_fraction}; e.g. 0.3 for the top 30 %")
    from merging.stream import analyze_checkpoints

    cmp = analyze_checkpoints(args.base, args.sft, args.rl, top_fraction=args.top_fraction,
                              progress=not args.no_progress, allow_nonfinite=args.allow_nonfinite)
    print(cmp.table())
    if args.out:
        for path in write_report(cmp, Path(args.out)):
            print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in process (bad input: one line on stderr, returns 2; --debug shows the traceback)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
