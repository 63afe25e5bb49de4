"""The CAT paper's alignment diagnostic: how much of a training objective's gradient lands where a test metric needs it.

Over a grid of single-sample success probabilities p (or reward quantiles q for best-of-N RL weights), with an
optional density mu(p) of prompts:

- alignment coefficient A = <w_train, w_test>_mu / (||w_train||_mu ||w_test||_mu), the cosine of the two weight
  functions (1: the same shape up to scale; it is dominated by the overlap of their supports);
- waste region: w_train > tol max(w_train) but w_test <= tol max(w_test) (training pushes where the metric is
  satiated); waste = the share of the training weight mass spent there;
- starvation region: w_test > tol max(w_test) but w_train <= tol max(w_train) (the metric needs improvement the
  objective does not provide); starvation = the share of the test weight mass there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from jax_cat.losses.strategies import PassAtN, Strategy

__all__ = ["AlignmentReport", "alignment_coefficient"]

WeightSpec = Strategy | Callable[[np.ndarray], Any] | np.ndarray | None


@dataclass(frozen=True)
class AlignmentReport:
    """Result of `alignment_coefficient`; the arrays are over the grid ``p``, for plots."""

    coefficient: float
    waste: float
    starvation: float
    p: np.ndarray
    w_train: np.ndarray
    w_test: np.ndarray
    waste_region: np.ndarray
    starvation_region: np.ndarray


def _weights(spec: WeightSpec, p: np.ndarray, kind: str, who: str) -> np.ndarray:
    if spec is None:  # standard training: CE / plain policy gradient, weight 1 everywhere
        spec = PassAtN(1)
    if isinstance(spec, np.ndarray) or isinstance(spec, (list, tuple)):
        w = np.asarray(spec, dtype=np.float64)
    elif hasattr(spec, "rl_weight") and hasattr(spec, "sft_weight"):
        fn = spec.rl_weight if kind == "rl" else spec.sft_weight
        import jax

        with jax.enable_x64(True):
            w = np.asarray(fn(p), dtype=np.float64)
    elif callable(spec):
        w = np.asarray(spec(p), dtype=np.float64)
    else:
        raise TypeError(f"alignment_coefficient: {who} must be a strategy, a callable p -> w, an array or None")
    if w.shape != p.shape:
        raise ValueError(f"alignment_coefficient: {who} weights have shape {w.shape}, grid p has {p.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"alignment_coefficient: {who} weights must be finite and nonnegative")
    return w


def _integral(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(p)))


def alignment_coefficient(train: WeightSpec, test: WeightSpec, *, kind: Literal["sft", "rl"] = "sft",
                          p: np.ndarray | None = None, density: Callable[[np.ndarray], Any] | np.ndarray | None = None,
                          tol: float = 0.01) -> AlignmentReport:
    """Cosine alignment of the training weight w_train(p) with the test metric's weight w_test(p), plus waste and
    starvation shares (see the module docstring). ``train``/``test``: a strategy (its ``kind`` weight), a callable,
    an array over ``p``, or None for standard SFT/RL (weight 1). Default grid: 2001 points on [0, 1]; ``density``
    weights the integrals by a distribution of prompt difficulty (uniform by default).

    >>> from jax_cat.losses import PassAtN
    >>> report = alignment_coefficient(None, PassAtN(16))  # standard SFT trained, pass@16 tested
    >>> round(report.coefficient, 2), round(report.waste, 2)
    (0.42, 0.66)
    """
    grid = np.linspace(0.0, 1.0, 2001) if p is None else np.asarray(p, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("alignment_coefficient: p must be a strictly increasing 1-D grid of >= 2 points")
    if kind not in ("sft", "rl"):
        raise ValueError(f"alignment_coefficient: kind must be 'sft' or 'rl', got {kind!r}")
    if not 0 <= tol < 1:
        raise ValueError(f"alignment_coefficient: tol must be in [0, 1), got {tol}")
    wt = _weights(train, grid, kind, "train")
    ws = _weights(test, grid, kind, "test")
    mu = np.ones_like(grid) if density is None else np.asarray(
        density(grid) if callable(density) else density, dtype=np.float64)
    if mu.shape != grid.shape or np.any(mu < 0):
        raise ValueError("alignment_coefficient: density must be nonnegative over the grid")
    norm = np.sqrt(_integral(wt * wt * mu, grid) * _integral(ws * ws * mu, grid))
    coef = _integral(wt * ws * mu, grid) / norm if norm > 0 else 0.0
    on_train = wt > tol * wt.max()
    on_test = ws > tol * ws.max()
    waste_region = on_train & ~on_test
    starve_region = on_test & ~on_train
    mass_t, mass_s = _integral(wt * mu, grid), _integral(ws * mu, grid)
    waste = _integral(np.where(waste_region, wt, 0.0) * mu, grid) / mass_t if mass_t > 0 else 0.0
    starve = _integral(np.where(starve_region, ws, 0.0) * mu, grid) / mass_s if mass_s > 0 else 0.0
    return AlignmentReport(float(coef), float(waste), float(starve), grid, wt, ws, waste_region, starve_region)
