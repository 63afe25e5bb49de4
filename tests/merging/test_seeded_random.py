"""Seeded RANDOM_SEARCH draws each parameter from its own stream (merging/_vizier_seeded.py, issue 20).

Vizier's RandomDesigner seeded with [seed, n] per trial drew DoTS's density_sft == density_rl in 7 of the first 8
trials of seed 0. The reference here is the binomial law of independent uniform draws: with k values a pair is
equal with probability 1/k, so over N trials the count of equal pairs lies in the binomial's central 99.9 %
interval (computed exactly below), and each value's count in its own.
"""
from __future__ import annotations

from math import comb

import pytest

from merging.search import Metric, SearchSpace, run_search

pytest.importorskip("vizier")

DENSITIES = (0.1, 0.3, 0.5)
SPACE = SearchSpace({"sft": (0.5, 2.0), "rl": (0.5, 2.0)}, densities={"sft": DENSITIES, "rl": DENSITIES})
METRICS = [Metric("consistency", "max"), Metric("perplexity", "min")]


def binomial_interval(n: int, p: float, mass: float = 0.999) -> tuple[int, int]:
    """The central interval [lo, hi] of Binomial(n, p) holding at least `mass` (each tail <= (1 - mass) / 2)."""
    pmf = [comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - mass) / 2
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def vizier_space():
    from vizier.service import pyvizier as vz

    cfg = vz.StudyConfig()
    SPACE.add_to(cfg.search_space.root)
    return cfg.search_space


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_pairs_are_equal_as_often_as_independent_draws_give(seed):
    from merging._vizier_seeded import random_parameters

    n = 64
    trials = [random_parameters(vizier_space(), seed, i) for i in range(1, n + 1)]
    equal = sum(t["density_sft"] == t["density_rl"] for t in trials)
    lo, hi = binomial_interval(n, 1 / len(DENSITIES))
    assert lo <= equal <= hi, (equal, (lo, hi))
    assert sum(t["density_sft"] == t["density_rl"] for t in trials[:8]) < 7  # the reported 7 of 8
    for name in ("density_sft", "density_rl"):
        for v in DENSITIES:
            count = sum(t[name] == v for t in trials)
            assert binomial_interval(n, 1 / len(DENSITIES))[0] <= count <= binomial_interval(n, 1 / 3)[1], (name, v)
    for name in ("sft", "rl"):
        assert all(0.5 <= t[name] <= 2.0 for t in trials)
        below = sum(t[name] < 1.25 for t in trials)  # the midpoint: each side with probability 1/2
        lo, hi = binomial_interval(n, 0.5)
        assert lo <= below <= hi, (name, below)


def test_pooled_over_seeds_the_pairs_are_as_independent_draws_give():
    from merging._vizier_seeded import random_parameters

    space = vizier_space()
    pairs = [random_parameters(space, seed, i) for seed in range(16) for i in range(1, 65)]
    equal = sum(t["density_sft"] == t["density_rl"] for t in pairs)
    lo, hi = binomial_interval(len(pairs), 1 / len(DENSITIES))
    assert lo <= equal <= hi, (equal, (lo, hi))


def test_binomial_interval_against_hand_values():
    assert binomial_interval(8, 0.5, mass=0.995) == (0, 8)  # P(0) = 1/256 > 0.0025: nothing cut
    assert binomial_interval(8, 0.5, mass=0.99) == (1, 7)  # P(0) = 1/256 <= 0.005 < P(0) + P(1) = 9/256
    assert binomial_interval(8, 0.5, mass=0.9) == (2, 6)  # 9/256 <= 0.05 < P(<=2) = 37/256
    assert binomial_interval(64, 1 / 3)[0] <= 21 <= binomial_interval(64, 1 / 3)[1]


def test_the_seeded_study_suggests_these_draws_and_the_same_seed_the_same_trials(tmp_path):
    from merging._vizier_seeded import random_parameters

    def objective(p):
        return {"consistency": -abs(p["sft"] - 1.0), "perplexity": abs(p["rl"] - 1.5) + 1.0}

    def params(name, seed, n=6):
        recs = run_search(objective, SPACE, METRICS, num_trials=n, db_path=tmp_path / f"{name}.db",
                          designer="RANDOM_SEARCH", seed=seed)
        return [(r.trial_id, r.parameters) for r in recs]

    a, b = params("a", 0), params("b", 0)
    assert a == b
    space = vizier_space()
    for trial_id, p in a:
        assert p == pytest.approx(random_parameters(space, 0, trial_id - 1)), trial_id
    assert params("c", 1) != a
