"""Cases that kill mutmut survivors of jax_cat/losses/strategies.py (see docs/testing.md, "Mutation testing").

Values come from outside references: exact binomial fractions (math.comb / fractions), brute force over every
n-subset of a pool, scipy's binomial distribution, and jax.grad of the closed-form success probability
S(p) = P(Binomial(N, p) >= k) of the CAT paper (eqs. for pass@N and maj@N). Numpy-only cases first (fast); the
few JAX cases use small shapes.
"""
import itertools
import math
from collections import Counter
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jax_cat.losses import strategies as st
from jax_cat.losses.strategies import (BestOfN, MajorityAtN, PassAtN, majority_rl_weight, majority_sft_weight,
                                       pass_at_k, pass_at_k_many, strategy_from_spec)


def exact_pass(m, c, k):
    """pass@k = 1 - C(m-c, k) / C(m, k), as an exact fraction."""
    return 1 - Fraction(math.comb(m - c, k), math.comb(m, k))


def brute(pool_size, n, value_of_subset):
    """Average of value_of_subset over every n-subset of range(pool_size)."""
    subs = list(itertools.combinations(range(pool_size), n))
    return float(np.mean([value_of_subset(s) for s in subs]))


def plurality(correct, answers, ties):
    """Value of one subset under plurality vote: ties split evenly ("split") or fail ("failure")."""
    def value(subset):
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if not votes:
            return 0.0
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        if ties == "failure" and len(winners) > 1:
            return 0.0
        right = {answers[i] for i in range(len(answers)) if correct[i]}
        return sum(w in right for w in winners) / len(winners)
    return value


# ------------------------------------------------------------------------------------------------ estimators
def test_pass_at_k_many_matches_exact_fractions_for_compact_count_dtypes():
    """Counts stored as uint8 (a natural dtype for per-problem counts <= 255) give the exact pass@k."""
    m = np.array([255, 255, 200, 10, 7], np.uint8)
    c = np.array([0, 3, 200, 9, 1], np.uint8)
    for k in (1, 4, 7):
        want = [float(exact_pass(int(mi), int(ci), k)) for mi, ci in zip(m, c)]
        np.testing.assert_allclose(pass_at_k_many(m, c, k), want, rtol=1e-9, atol=1e-15)  # lgamma: ~1e-11 rel.
        assert [pass_at_k(int(mi), int(ci), k) for mi, ci in zip(m, c)] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_estimate_many_equals_the_per_problem_brute_force():
    correct = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1]], bool)
    answers = [["7", "3", "3", "7", None], ["1", "2", "2", None, "3"], ["4", "4", "5", "4", "4"]]
    scores = np.array([[0.9, 0.8, 0.8, 0.1, 0.5], [1, 2, 3, 4, 5], [0.5, 0.5, 0.7, 0.2, 0.7]], np.float64)
    for n in (1, 2, 3, 5):
        out = PassAtN(n).estimate_many(correct)
        assert out.dtype == np.float64 and out.shape == (3,)
        np.testing.assert_allclose(out, [float(exact_pass(5, int(r.sum()), n)) for r in correct], atol=1e-12)
        for ties in ("split", "failure"):
            want = [brute(5, n, plurality(c, a, ties)) for c, a in zip(correct, answers)]
            got = MajorityAtN(n).estimate_many(correct, answers=answers, ties=ties)
            np.testing.assert_allclose(got, want, atol=1e-12)
        want = [brute(5, n, lambda s, c=c, sc=sc: np.mean([c[i] for i in s if sc[i] == max(sc[j] for j in s)]))
                for c, sc in zip(correct, scores)]
        np.testing.assert_allclose(BestOfN(n).estimate_many(correct, scores=scores), want, atol=1e-12)


def test_majority_ties_failure_matches_brute_force():
    correct = [1, 0, 1, 0, 1, 0]
    answers = ["a", "b", "a", "b", "a", "c"]
    for n in range(1, 7):
        for ties in ("split", "failure"):
            want = brute(6, n, plurality(correct, answers, ties))
            assert MajorityAtN(n).estimate(correct, answers=answers, ties=ties) == pytest.approx(want, abs=1e-12)
    # a 2-2 tie: split gives 1/2, failure gives 0
    assert MajorityAtN(4).estimate([1, 0, 1, 0], answers=["a", "b", "a", "b"], ties="failure") == 0.0


def test_bon_with_a_perfect_verifier_is_pass_at_n():
    """Scores = correctness (bool, as a verifier returns): best-of-n succeeds iff any of the n is correct."""
    correct = np.array([0, 1, 0, 0, 1, 0, 0], bool)
    for n in range(1, 8):
        want = float(exact_pass(7, 2, n))
        assert BestOfN(n).estimate(correct, scores=correct) == pytest.approx(want, abs=1e-12)
        assert BestOfN(n).estimate(correct, scores=correct.astype(np.uint8)) == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------------------------------ bad input
def test_estimator_errors_name_the_offending_input():
    with pytest.raises(ValueError, match=r"num_correct=4, num_samples=3"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match=r"num_correct=-1"):
        pass_at_k(3, -1, 1)
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got 0"):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got 0"):
        pass_at_k_many([3], [1], 0)
    with pytest.raises(ValueError, match=r"num_correct <= num_samples"):
        pass_at_k_many([3, 3], [1, 4], 1)
    with pytest.raises(ValueError, match=r"num_correct <= num_samples"):
        pass_at_k_many([3, 3], [-1, 1], 1)
    with pytest.raises(ValueError, match=r"num_samples >= k=4 for every problem, min is 3"):
        pass_at_k_many([5, 3], [1, 1], 4)
    with pytest.raises(ValueError, match=r"PassAtN.estimate_many: `correct` must be \[P, M\], got shape \(4,\)"):
        PassAtN(2).estimate_many([1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"PassAtN.estimate: `correct` must be 1-D .* got shape \(1, 2\)"):
        PassAtN(1).estimate([[1, 0]])
    with pytest.raises(ValueError, match=r"BestOfN.estimate: need M >= n samples, got M=2 < n=3"):
        BestOfN(3).estimate([1, 0], scores=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"MajorityAtN.estimate: need M >= n"):
        MajorityAtN(3).estimate([1, 0], answers=["a", "b"])
    with pytest.raises(ValueError, match=r"BestOfN.estimate: scores shape \(3,\) != correct shape \(2,\)"):
        BestOfN(1).estimate([1, 0], scores=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"BestOfN.estimate: `scores` contains NaN"):
        BestOfN(1).estimate([1, 0], scores=[1.0, float("nan")])
    with pytest.raises(ValueError, match=r"BestOfN.estimate needs `scores`"):
        BestOfN(1).estimate([1, 0])
    with pytest.raises(ValueError, match=r"MajorityAtN.estimate: len\(answers\)=3 != len\(correct\)=2"):
        MajorityAtN(1).estimate([1, 0], answers=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"ties must be 'split' or 'failure', got 'first'"):
        MajorityAtN(1).estimate([1, 0], answers=["a", "b"], ties="first")
    with pytest.raises(ValueError, match=r"MajorityAtN.estimate_many needs `answers`"):
        MajorityAtN(1).estimate_many([[1, 0]])
    with pytest.raises(ValueError, match=r"MajorityAtN.estimate_many needs `answers`"):
        MajorityAtN(1).estimate_many([[1, 0], [0, 1]], answers=[["a", "b"]])
    for bad in (None, np.ones((2, 3))):
        with pytest.raises(ValueError, match=r"BestOfN.estimate_many needs `scores` of the same \[P, M\] shape"):
            BestOfN(1).estimate_many(np.ones((2, 2)), scores=bad)
    with pytest.raises(ValueError, match=r"BestOfN.estimate_many needs `scores`"):
        BestOfN(1).estimate_many(np.float64(1.0))  # a scalar is not a [P, M] table either


def test_strategy_errors_name_the_offending_input():
    with pytest.raises(ValueError, match=r"MajorityAtN: need 1 <= k <= n, got k=5, n=4"):
        MajorityAtN(4, 5)
    with pytest.raises(ValueError, match=r"^k must be a positive integer, got 0"):
        MajorityAtN(4, 0)
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got True"):
        PassAtN(True)
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got -2"):
        MajorityAtN(-2)
    with pytest.raises(ValueError, match=r"^majority threshold k must be in \[1, n=4\], got 5"):
        majority_rl_weight(0.5, 4, 5)
    with pytest.raises(ValueError, match=r"^majority threshold k must be in \[1, n=4\], got 0"):
        majority_sft_weight(0.5, 4, np.int64(0))
    with pytest.raises(ValueError, match=r"strategy spec 'pass@4:k=2': k= only applies to maj@N"):
        strategy_from_spec("pass@4:k=2")
    with pytest.raises(ValueError, match=r"strategy spec 'bon@4,k=1': k= only applies to maj@N"):
        strategy_from_spec("bon@4,k=1")
    with pytest.raises(ValueError, match=r"strategy spec 'maj@' not understood; use 'pass@N', 'maj@N'"):
        strategy_from_spec("maj@")


def test_strategy_from_spec_accepts_every_documented_spelling():
    cases = {
        "pass@16": PassAtN(16), " PASS @ 16 ": PassAtN(16), "maj@8": MajorityAtN(8), "majority@8": MajorityAtN(8),
        "maj@8:k=3": MajorityAtN(8, 3), "maj@8,k=3": MajorityAtN(8, 3), "Maj @ 8 : K = 3": MajorityAtN(8, 3),
        "bon@4": BestOfN(4), "best_of_n@4": BestOfN(4), "best-of-n@4": BestOfN(4), "BoN@1": BestOfN(1),
    }
    for spec, want in cases.items():
        got = strategy_from_spec(spec)
        assert got == want and type(got) is type(want), spec
    for bad in ("pass16", "pass@", "pass@-1", "maj@8:k=", "maj@8;k=3", "bon@4x", "maj@8:j=3", "top@3"):
        with pytest.raises(ValueError, match="not understood"):
            strategy_from_spec(bad)
