"""Estimates from one pool of scored samples: pass@k, maj@k, bon@k per problem, their means with bootstrap CIs, and
paired differences between two models on the same problems.

Pure numpy on arrays the sampler already produced (no model, no JAX): every number any evaluation in the project
reports (`jax_cat.evaluate.evaluate`, the trainer's end-of-run evaluation, the default run, scripts/) comes from
`scaling_metrics` and `paired_difference` here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

METRICS = ("pass@k", "maj@k", "bon@k")


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


def curve(per_k: Callable[[int], np.ndarray], ks: Sequence[int], *, num_resamples: int = 1000,
          confidence: float = 0.95, seed: int = 0, keep_per_problem: bool = False) -> dict[str, list]:
    """{k, mean, ci_low, ci_high[, per_problem]} from a per-problem estimate for each k (bootstrap over problems)."""
    rows: dict[str, list] = {"k": [], "mean": [], "ci_low": [], "ci_high": []}
    if keep_per_problem:
        rows["per_problem"] = []
    for k in ks:
        per_problem = np.asarray(per_k(int(k)), np.float64)
        low, high = bootstrap_ci(per_problem, num_resamples=num_resamples, confidence=confidence, seed=seed)
        rows["k"].append(int(k))
        rows["mean"].append(float(per_problem.mean()) if per_problem.size else float("nan"))
        rows["ci_low"].append(low)
        rows["ci_high"].append(high)
        if keep_per_problem:
            rows["per_problem"].append([float(v) for v in per_problem])
    return rows


def scaling_metrics(
    correct: np.ndarray,
    answers: Sequence[Sequence[Any]] | None,
    scores: np.ndarray | None,
    ks: Sequence[int],
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, list[float]]]:
    """pass@k, maj@k, bon@k per k from one pool: correct[P, n] (0/1), answers P lists of n keys, scores[P, n].

    `metrics` picks which of "pass@k", "maj@k", "bon@k" to estimate (maj@k over k-subsets is the costly one);
    `answers` is needed for maj@k only and `scores` for bon@k only (None otherwise).
    Returns {"pass@k": {"k": [...], "mean": [...], "ci_low": [...], "ci_high": [...], "per_problem": [[...] per k]}, ...}.
    """
    from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"scaling_metrics: metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    correct = np.asarray(correct, np.float64)
    scores = np.zeros_like(correct) if scores is None else np.asarray(scores, np.float64)
    if answers is None:
        if "maj@k" in metrics:
            raise ValueError("scaling_metrics: maj@k needs the answers")
        answers = [[None] * correct.shape[-1]] * (correct.shape[0] if correct.ndim == 2 else 0)
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
    for name in METRICS:
        if name not in metrics:
            continue
        cls = strategies[name]

        def per_k(k: int, cls=cls) -> np.ndarray:
            strategy = cls(k)
            return np.array([strategy.estimate(correct[p], answers=list(answers[p]), scores=scores[p])
                             for p in range(len(correct))])

        out[name] = curve(per_k, ks, num_resamples=num_resamples, confidence=confidence, seed=seed,
                          keep_per_problem=True)
    return out


def seed_and_problem_ci(diffs: np.ndarray, *, num_resamples: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of the mean of `diffs` [seeds, problems], resampling training seeds AND problems.

    The two-level bootstrap: each resample draws seeds with replacement, then problems with replacement (shared by
    the drawn seeds: the problems are the same held-out set). With one seed it is the paired problem bootstrap."""
    d = np.asarray(diffs, np.float64)
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, d.shape[0], size=(num_resamples, d.shape[0]))
    p_idx = rng.integers(0, d.shape[1], size=(num_resamples, d.shape[1]))
    means = np.array([d[s][:, p].mean() for s, p in zip(s_idx, p_idx)])
    low, high = np.quantile(means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def paired_difference(num_correct_a: Sequence[int] | np.ndarray, num_correct_b: Sequence[int] | np.ndarray, *,
                      n: int, ks: Sequence[int], seed: int = 0, num_resamples: int = 1000,
                      confidence: float = 0.95) -> dict[str, list]:
    """pass@k(a) - pass@k(b) on the same problems with a paired bootstrap CI, for each k.

    Both models answered the same problems with n samples each (`num_correct_*`: correct samples per problem), so
    the per-problem differences of the unbiased estimates are resampled together (the CI of the difference, much
    tighter than comparing two separate CIs). With [P] counts (one training seed) the CI is over problems: the
    evaluation-sample noise only. With [S, P] counts (S training seeds, the same P problems) it is over training
    seeds AND problems (`seed_and_problem_ci`, seeded with seed + k), and the rows add "seed_min" / "seed_max" (the
    range of the seeds' mean differences).
    """
    from jax_cat.losses import pass_at_k_many

    a, b = np.asarray(num_correct_a), np.asarray(num_correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} vs {b.shape} problems; both must answer the same problems")

    def diff(k: int) -> np.ndarray:
        total = np.full(a.shape, n)
        return (np.asarray(pass_at_k_many(total.ravel(), a.ravel(), k), np.float64)
                - np.asarray(pass_at_k_many(total.ravel(), b.ravel(), k), np.float64)).reshape(a.shape)

    if a.ndim == 1:
        return curve(diff, ks, seed=seed, num_resamples=num_resamples, confidence=confidence)
    if a.ndim != 2:
        raise ValueError(f"paired_difference: counts must be [problems] or [seeds, problems], got shape {a.shape}")
    rows: dict[str, list] = {"k": [], "mean": [], "seed_min": [], "seed_max": [], "ci_low": [], "ci_high": []}
    for k in ks:
        d = diff(int(k))
        per_seed = d.mean(axis=1)
        low, high = seed_and_problem_ci(d, num_resamples=num_resamples, confidence=confidence, seed=seed + int(k))
        rows["k"].append(int(k))
        rows["mean"].append(float(per_seed.mean()))
        rows["seed_min"].append(float(per_seed.min()))
        rows["seed_max"].append(float(per_seed.max()))
        rows["ci_low"].append(low)
        rows["ci_high"].append(high)
    return rows
