"""bootstrap_ci and scaling_metrics against outside references (issue 15, mutation testing).

- The interval: scipy.stats.bootstrap with method="percentile" and a generator of the same seed. scipy draws its
  resamples as `rng.integers(0, n, (n_resamples, n))`, the same index matrix, so the two intervals agree to
  rounding, for every (num_resamples, confidence, seed), defaults included.
- The metrics: brute force over every k-subset of each problem's pool (pass@k: any correct; maj@k: plurality of
  the non-empty answers, ties split evenly; bon@k: the top-scored sample, ties split evenly).
NumPy only: the file runs in well under a second.
"""
import itertools
import math
import warnings
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from jax_cat.evaluate import bootstrap_ci, scaling_metrics


def scipy_ci(x, num_resamples, confidence, seed):
    res = stats.bootstrap((np.asarray(x, np.float64),), np.mean, n_resamples=num_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
                          vectorized=True)
    return res.confidence_interval.low, res.confidence_interval.high


X = np.random.default_rng(11).random(37)


@pytest.mark.parametrize("kwargs", [{}, {"num_resamples": 200, "confidence": 0.8, "seed": 5},
                                    {"num_resamples": 333, "confidence": 0.5, "seed": 2}])
def test_bootstrap_ci_equals_scipy_percentile_bootstrap(kwargs):
    settings = {"num_resamples": 1000, "confidence": 0.95, "seed": 0} | kwargs  # the documented defaults
    np.testing.assert_allclose(bootstrap_ci(X, **kwargs), scipy_ci(X, **settings), rtol=1e-12)


def test_bootstrap_ci_works_in_float64_whatever_the_input():
    """A float32 pool gives the interval of its values in float64 (a float32 mean would differ at ~1e-8)."""
    x32 = X.astype(np.float32)
    np.testing.assert_allclose(bootstrap_ci(x32), scipy_ci(x32.astype(np.float64), 1000, 0.95, 0), rtol=1e-13)
    # 0/1 outcomes as Python ints
    ints = [1, 0, 0, 1, 1, 0, 1]
    np.testing.assert_allclose(bootstrap_ci(ints, seed=4), scipy_ci(ints, 1000, 0.95, 4), rtol=1e-12)


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.7]) == (0.7, 0.7)  # one problem: every resample is that problem
    low, high = bootstrap_ci([])
    assert math.isnan(low) and math.isnan(high)  # no problems: no interval


# ------------------------------------------------------------------------------------------------ brute force


def brute_force(correct, answers, scores, k):
    """pass@k, maj@k, bon@k of one problem: the average over all k-subsets of its pool."""
    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    pass_k = np.mean([any(correct[j] for j in s) for s in subsets])
    maj, bon = [], []
    for s in subsets:
        votes = Counter(answers[j] for j in s if answers[j] is not None)
        if votes:
            top = max(votes.values())
            winners = [a for a, c in votes.items() if c == top]
            # an answer is correct when its samples are (they agree: correct = answer == gold below)
            maj.append(np.mean([next(correct[j] for j in s if answers[j] == a) for a in winners]))
        else:
            maj.append(0.0)
        best = max(scores[j] for j in s)
        bon.append(np.mean([correct[j] for j in s if scores[j] == best]))
    return {"pass@k": pass_k, "maj@k": np.mean(maj), "bon@k": np.mean(bon)}


def random_pool(seed, num_problems=5, n=6):
    rng = np.random.default_rng(seed)
    golds = rng.choice(["1", "2", "3"], size=num_problems)
    answers = [[None if a == "-" else str(a) for a in rng.choice(["1", "2", "3", "-"], size=n)] for _ in golds]
    correct = np.array([[float(a == g) for a in row] for row, g in zip(answers, golds)])
    scores = np.round(rng.random((num_problems, n)), 1)  # one decimal: ties happen
    return correct, answers, scores


@pytest.mark.parametrize("seed", [0, 1])
def test_scaling_metrics_equal_brute_force_and_scipy(seed):
    correct, answers, scores = random_pool(seed)
    ks = [1, 2, 3, 6]
    settings = {"num_resamples": 300, "confidence": 0.8, "seed": 7}
    out = scaling_metrics(correct, answers, scores, ks, **settings)
    default = scaling_metrics(correct, answers, scores, ks)
    assert set(out) == {"pass@k", "maj@k", "bon@k"}
    for name in out:
        assert out[name]["k"] == ks
        for i, k in enumerate(ks):
            expected = [brute_force(c, a, s, k)[name] for c, a, s in zip(correct, answers, scores)]
            np.testing.assert_allclose(out[name]["per_problem"][i], expected, rtol=1e-12, err_msg=f"{name} k={k}")
            assert math.isclose(out[name]["mean"][i], np.mean(expected), rel_tol=1e-12)
            ci = (out[name]["ci_low"][i], out[name]["ci_high"][i])
            np.testing.assert_allclose(ci, scipy_ci(expected, **settings), rtol=1e-12)
            ci_default = (default[name]["ci_low"][i], default[name]["ci_high"][i])
            np.testing.assert_allclose(ci_default, scipy_ci(expected, 1000, 0.95, 0), rtol=1e-12)


def test_scaling_metrics_of_no_problems_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy's "Mean of empty slice"
        out = scaling_metrics(np.zeros((0, 4)), [], np.zeros((0, 4)), [1, 4])
    for rows in out.values():
        assert rows["k"] == [1, 4] and rows["per_problem"] == [[], []]
        assert all(math.isnan(v) for key in ("mean", "ci_low", "ci_high") for v in rows[key])


def test_scaling_metrics_bad_input_names_the_offending_argument():
    correct, answers, scores = random_pool(0, num_problems=2, n=4)
    with pytest.raises(ValueError, match=r"scaling_metrics: .*got correct \(4,\)"):
        scaling_metrics(correct[0], [[a] for a in answers[0]], scores[0], [1])  # 1-D, 4 "problems" of 1 sample
    with pytest.raises(ValueError, match=r"scaling_metrics: .*scores \(2, 3\)"):
        scaling_metrics(correct, answers, scores[:, :3], [1])
    with pytest.raises(ValueError, match=r"scaling_metrics: .*, 1 answer lists"):
        scaling_metrics(correct, answers[:1], scores, [1])
    with pytest.raises(ValueError, match=r"every k must be in \[1, n=4\]; got \[0, 5\]"):
        scaling_metrics(correct, answers, scores, [0, 1, 4, 5])
