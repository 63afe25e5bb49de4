"""Plot the CAT weight functions (SFT and RL) and the alignment regions as PNGs in docs/figures/.

    .venv/bin/python scripts/plot_cat_weights.py [--out docs/figures] [--dpi 110]

Pure closed forms from jax_cat.losses (no model). Each file is written to a temporary name and renamed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jax_cat.io.atomic import save_figure  # noqa: E402
from jax_cat.losses import BestOfN, MajorityAtN, PassAtN, alignment_coefficient  # noqa: E402

GRID = np.linspace(0.0, 1.0, 1001)


def _w(fn, x=GRID):
    return np.asarray(fn(x.astype(np.float32)), dtype=np.float64)


def _save(fig, out: Path, name: str, dpi: int) -> Path:
    return save_figure(fig, out / name, dpi=dpi, bbox_inches="tight")


def plot_sft(out: Path, dpi: int) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for n in (1, 4, 16, 64):
        ax.plot(GRID, _w(PassAtN(n).sft_weight), label=f"pass@{n}")
    ax.set(title=r"SFT weight, pass@N:  $Np(1-p)^{N-1}/(1-(1-p)^N)$", xlabel="single-sample success p",
           ylabel="factor on the CE gradient")
    ax.legend()
    ax = axes[1]
    n = 16
    for k in (2, 4, 6, 9, 12):
        ax.plot(GRID, _w(MajorityAtN(n, k).sft_weight), label=f"k={k}" + (" (majority)" if k == n // 2 + 1 else ""))
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="standard SFT")
    ax.set(title=rf"SFT weight, maj@{n}: $kC(N,k)p^k(1-p)^{{N-k}}/B(p)$", xlabel="single-sample success p")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.25)
    return [_save(fig, out, "cat_sft_weights.png", dpi)]


def plot_rl(out: Path, dpi: int) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    for n in (1, 4, 16, 64):
        ax.plot(GRID, _w(PassAtN(n).rl_weight), label=f"pass@{n}")
    ax.set(yscale="log", ylim=(1e-3, 100), title=r"RL weight, pass@N:  $N(1-p)^{N-1}$",
           xlabel="single-sample success p", ylabel="factor on the advantage (dS/dp)")
    ax.legend()
    ax = axes[1]
    n = 64
    for k in (6, 16, 24, 33):
        ax.plot(GRID, _w(MajorityAtN(n, k).rl_weight), label=f"k={k}" + (" (majority)" if k == n // 2 + 1 else ""))
    ax.set(title=rf"RL weight, maj@{n}: $NC(N-1,k-1)p^{{k-1}}(1-p)^{{N-k}}$", xlabel="single-sample success p")
    ax.legend()
    for a in axes:
        a.grid(alpha=0.25)
    return [_save(fig, out, "cat_rl_weights.png", dpi)]


def plot_bon(out: Path, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for n in (1, 2, 4, 8, 16):
        ax.plot(GRID, _w(BestOfN(n).rl_weight), label=f"BoN@{n}")
    ax.set(title=r"RL weight, best-of-N:  $Nq^{N-1}$", xlabel="reward quantile q within the prompt's group",
           ylabel="factor on the advantage", yscale="log", ylim=(1e-3, 20))
    ax.legend()
    ax.grid(alpha=0.25)
    return [_save(fig, out, "cat_bon_weights.png", dpi)]


def plot_alignment(out: Path, dpi: int) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    cases = [
        (None, PassAtN(16), "standard SFT", "pass@16", axes[0]),
        (PassAtN(64), MajorityAtN(16), "pass@64 SFT", "maj@16", axes[1]),
    ]
    for train, test, tname, sname, ax in cases:
        r = alignment_coefficient(train, test)
        wt, ws = r.w_train / r.w_train.max(), r.w_test / r.w_test.max()
        ax.plot(r.p, wt, label=f"train: {tname}")
        ax.plot(r.p, ws, label=f"test: {sname}")
        ax.fill_between(r.p, 0, 1.05, where=r.waste_region, color="tab:red", alpha=0.15,
                        label=f"waste ({r.waste:.0%} of train mass)")
        ax.fill_between(r.p, 0, 1.05, where=r.starvation_region, color="tab:purple", alpha=0.15,
                        label=f"starvation ({r.starvation:.0%} of test mass)")
        ax.set(title=f"alignment A = {r.coefficient:.2f}", xlabel="single-sample success p",
               ylabel="SFT weight / its max", ylim=(0, 1.08))
        ax.legend(fontsize=8, loc="center right")
        ax.grid(alpha=0.25)
    return [_save(fig, out, "cat_alignment.png", dpi)]


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "figures")
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    written = []
    for fn in (plot_sft, plot_rl, plot_bon, plot_alignment):
        written += fn(args.out, args.dpi)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
