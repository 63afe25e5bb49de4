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
            if ties == "split":  # the default
                np.testing.assert_allclose(MajorityAtN(n).estimate_many(correct, answers=answers), want, atol=1e-12)
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
    with pytest.raises(ValueError, match=r"MajorityAtN.estimate needs `answers` \(one hashable per sample"):
        MajorityAtN(1).estimate([1, 0])
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


def test_majority_monte_carlo_is_reproducible_across_processes():
    """The Monte Carlo subsets come from a fixed seed, not from the process: the same value after the subset cache
    is dropped (as in a fresh process; test_strategies checks it against the exact enumeration)."""
    rng = np.random.default_rng(3)
    answers = list(rng.choice(["a", "b", "c"], size=22, p=[0.45, 0.35, 0.2]))
    correct = [a == "a" for a in answers]
    n = 9  # C(22, 9) = 497,420 > MAJORITY_EXACT_LIMIT -> Monte Carlo
    assert math.comb(22, n) > st.MAJORITY_EXACT_LIMIT
    first = MajorityAtN(n).estimate(correct, answers=answers)
    st._subsets.cache_clear()
    assert MajorityAtN(n).estimate(correct, answers=answers) == first


# ------------------------------------------------------------------------------------------------ weights
def closed_form_success(n):
    """S(p; k) = sum_{i>=k} C(n,i) p^i (1-p)^(n-i), written out term by term (the CAT paper's maj@N success)."""
    comb = jnp.asarray([math.comb(n, i) for i in range(n + 1)], jnp.float64)
    i = jnp.arange(n + 1, dtype=jnp.float64)

    def S(p, k):
        return jnp.sum(jnp.where(i >= k, comb * p ** i * (1 - p) ** (n - i), 0.0))
    return S


P_GRID = np.array([0.0, 1e-3, 0.05, 0.3, 0.5, 0.77, 0.999, 1.0])


def test_majority_weights_equal_autodiff_of_the_closed_form_for_every_threshold():
    """rl_weight = dS/dp (jax.grad of the written-out S) and sft_weight = p S'/S, for every k of n = 1, 4, 7,
    as a per-element threshold array (the dynamic consensus threshold varies by prompt), in float64."""
    rl_fn = jax.jit(majority_rl_weight, static_argnums=1)  # one compile per n (eager op-by-op is slower here)
    sft_fn = jax.jit(majority_sft_weight, static_argnums=1)
    with jax.enable_x64(True):
        for n in (1, 4, 7):
            ks = np.arange(1, n + 1)
            pp, kk = np.meshgrid(P_GRID, ks)  # [n, len(P_GRID)]
            S_fn = closed_form_success(n)
            S = np.asarray(jax.jit(jax.vmap(S_fn))(pp.ravel(), kk.ravel())).reshape(pp.shape)
            grad = np.asarray(jax.jit(jax.vmap(jax.grad(S_fn)))(pp.ravel(), kk.ravel())).reshape(pp.shape)
            inner = (pp > 0) & (pp < 1)  # p^0 has no derivative at p = 0 in autodiff; the ends are checked below
            rl = rl_fn(jnp.asarray(pp), n, jnp.asarray(kk))
            assert rl.dtype == jnp.float64 and rl.shape == pp.shape
            np.testing.assert_allclose(np.asarray(rl)[inner], grad[inner], rtol=1e-10, atol=1e-12)
            # the paper's form N C(N-1, k-1) p^(k-1) (1-p)^(N-k) = N * Binomial(N-1, p).pmf(k-1), ends included
            np.testing.assert_allclose(rl, n * stats.binom.pmf(kk - 1, n - 1, pp), rtol=1e-10, atol=1e-12)
            sft = np.asarray(sft_fn(jnp.asarray(pp), n, jnp.asarray(kk)))
            # atol: the written-out S loses ~1e-16 absolute to cancellation near p = 1
            np.testing.assert_allclose(sft[inner], (pp * grad / S)[inner], rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(sft[:, 0], ks, rtol=1e-12)  # p -> 0: S ~ C(n,k) p^k, so p S'/S -> k
            np.testing.assert_allclose(sft[:, -1], np.where(ks == n, n, 0.0), atol=1e-12)  # p = 1: 0 unless k = n
        # the strategy object passes its own k, or the override, to the same functions
        np.testing.assert_allclose(MajorityAtN(7, 3).rl_weight(jnp.asarray(P_GRID)), rl[2], rtol=1e-12)
        np.testing.assert_allclose(MajorityAtN(7).sft_weight(jnp.asarray(P_GRID), k=jnp.asarray(ks)[:, None]), sft,
                                   rtol=1e-12)


def test_majority_weights_keep_the_dtype_and_clip_a_traced_threshold():
    p = np.array([0.2, 0.6], np.float32)
    both = jax.jit(lambda q: (majority_rl_weight(q, 4, 2), majority_sft_weight(q, 4, 2)))
    assert [w.dtype for w in both(jnp.asarray(p, jnp.bfloat16))] == [jnp.bfloat16] * 2
    assert [w.dtype for w in both(1)] == [jnp.float32] * 2  # an int p is cast to the default float
    # under jit k cannot be checked: it is clipped into [1, n]
    rl = jax.jit(lambda q, k: majority_rl_weight(q, 4, k))
    sft = jax.jit(lambda q, k: majority_sft_weight(q, 4, k))
    np.testing.assert_allclose(rl(p, 9), 4 * stats.binom.pmf(3, 3, p), rtol=1e-6)  # k -> 4
    np.testing.assert_allclose(rl(p, -3), 4 * stats.binom.pmf(0, 3, p), rtol=1e-6)  # k -> 1
    np.testing.assert_allclose(sft(p, 9), 4.0, rtol=1e-6)  # k = n: S = p^n, p S'/S = n
    np.testing.assert_allclose(sft(p, 0), 4 * p * (1 - p) ** 3 / (1 - (1 - p) ** 4), rtol=1e-6)  # k = 1: pass@4
    # a float-valued threshold (the paper's floor(n c_w / M) + 1 computed in float arithmetic) counts as integers
    kf = jnp.floor(jnp.asarray([4 * 1 / 4, 4 * 2 / 4])) + 1  # [2., 3.]
    np.testing.assert_allclose(rl(p, kf), 4 * stats.binom.pmf([1, 2], 3, p), rtol=1e-6)
    np.testing.assert_allclose(sft(p, kf), majority_sft_weight(p, 4, np.array([2, 3])), rtol=1e-6)


def mp_log_tail(n, k, p):
    """log P(Binomial(n, p) >= k) with 60-digit arithmetic (mpmath)."""
    import mpmath

    with mpmath.workdps(60):
        q = mpmath.mpf(p)
        return float(mpmath.log(mpmath.fsum(mpmath.binomial(n, i) * q ** i * (1 - q) ** (n - i)
                                            for i in range(k, n + 1))))


def test_majority_success_in_log_space_matches_high_precision_far_into_the_tails():
    """log S(p) against a 60-digit evaluation of the binomial tail, where S is far below float range (float64)."""
    p = np.array([1e-300, 1e-30, 1e-3, 0.4, 0.5, 0.6, 1 - 1e-9])
    with jax.enable_x64(True):
        for n, k in ((1, 1), (6, 3), (6, 6), (40, 21)):
            s = MajorityAtN(n, k)
            got = np.asarray(s.log_success_probability(jnp.asarray(p)))
            np.testing.assert_allclose(got, [mp_log_tail(n, k, x) for x in p], rtol=1e-10, atol=1e-14)
            # end points: S(0) = 0 and S(1) = 1 exactly (0 * log 0 = 0)
            ends = np.asarray(s.success_probability(jnp.asarray([0.0, 1.0])))
            assert ends[0] == 0.0 and ends[1] == 1.0


def test_log_success_from_logp_keeps_relative_precision_at_both_ends_float32():
    """float32 log-probabilities: pass@1024 where p = exp(a) is below float32 eps (the series branch), and
    a = -1e-15 (p == 1 to working precision), against float64 references."""
    a = np.log(np.array([1e-7, 5e-8, 1e-9, 1e-20], np.float64)).astype(np.float32)
    p = np.exp(a.astype(np.float64))
    ref = np.log(-np.expm1(1024 * np.log1p(-p)))
    np.testing.assert_allclose(PassAtN(1024).log_success_from_logp(jnp.asarray(a)), ref, rtol=2e-7)
    near = jnp.asarray([-1e-15, -1e-20], jnp.float32)
    # k = N: S = p^N, so log S = N a exactly; k < N: log S = log(1 - P(X < k)) ~ -C(N,k-1)(-a)^(N-k+1) = 0
    np.testing.assert_allclose(MajorityAtN(16, 16).log_success_from_logp(near), 16 * np.asarray(near), rtol=1e-6)
    for s in (MajorityAtN(16), MajorityAtN(16, 1), PassAtN(16)):
        assert np.all(np.asarray(s.log_success_from_logp(near)) == 0.0), s.name
    # k = N - 1 a little further from 0: log S = log(1 - P(X <= N-2)) ~ -C(N, 2) (1-p)^2, still resolved
    a = np.float32(-1e-7)
    want = mp_log_tail(16, 15, float(np.exp(np.float64(a))))
    assert float(MajorityAtN(16, 15).log_success_from_logp(a)) == pytest.approx(want, rel=1e-5)



def mp_log1mexp(a):
    import mpmath

    with mpmath.workdps(200):  # 1 - exp(-300) needs ~130 digits
        return float(mpmath.log(1 - mpmath.exp(mpmath.mpf(float(a)))))


def test_log1mexp_is_accurate_on_both_sides_of_minus_log2():
    """log(1 - exp(a)) to working precision near a = 0 (expm1 side) and far below -log 2 (log1p side)."""
    a = [-1e-30, -1e-6, -0.5, -0.69, -0.7, -1.0, -20.0, -50.0]
    ref = np.array([mp_log1mexp(np.float32(x)) for x in a])
    np.testing.assert_allclose(st._log1mexp(jnp.asarray(a, jnp.float32)), ref, rtol=3e-7)
    with jax.enable_x64(True):
        a = a + [-300.0]
        ref = np.array([mp_log1mexp(x) for x in a])
        np.testing.assert_allclose(st._log1mexp(jnp.asarray(a, jnp.float64)), ref, rtol=4e-15)


def test_bool_and_int_probabilities_are_cast_to_float():
    """p given as bools or ints (a deterministic verdict: p = 1 or 0) gives the values at p = 1 and p = 0."""
    for p in (jnp.asarray([True, False]), jnp.asarray([1, 0])):
        np.testing.assert_array_equal(PassAtN(4).rl_weight(p), [0.0, 4.0])  # N (1-p)^(N-1)
        np.testing.assert_array_equal(majority_rl_weight(p, 3, 1), [0.0, 3.0])  # k = 1 is pass@3
        assert PassAtN(4).rl_weight(p).dtype == jnp.float32


def test_majority_outputs_follow_the_input_dtype_with_x64_enabled():
    """float32 p stays float32 even when x64 is on (the host-built float64 tables must not promote it)."""
    m = MajorityAtN(5)
    fns = {"success_probability": m.success_probability, "log_success_probability": m.log_success_probability,
           "log_success_from_logp": lambda x: m.log_success_from_logp(jnp.log(x)), "rl_weight": m.rl_weight,
           "sft_weight": m.sft_weight}
    with jax.enable_x64(True):
        p = jnp.asarray([0.2, 0.5], jnp.float32)
        for name, f in fns.items():
            assert f(p).dtype == jnp.float32, name
        # and the value is the float32 one: S(0.2) for maj@5 (k = 3) = P(Binomial(5, .2) >= 3)
        assert float(m.success_probability(jnp.float32(0.2))) == pytest.approx(stats.binom.sf(2, 5, 0.2), rel=1e-6)


# --- jitted methods (mutable only under scripts/mutation_prepare.py's jit unwrapping; docs/testing.md) ---------------
P_GRID = np.array([0.0, 0.05, 0.3, 0.5, 0.77, 0.99, 1.0], np.float64)


def test_pass_at_n_log_success_probability_is_log_of_one_minus_miss_to_the_n():
    """log S(p) = log(1 - (1 - p)^N) in float64 numpy (-inf at p = 0)."""
    with np.errstate(divide="ignore"):
        want = np.log1p(-(1.0 - P_GRID) ** 4)
    got = np.asarray(PassAtN(4).log_success_probability(jnp.asarray(P_GRID, jnp.float32)), np.float64)
    assert np.isneginf(got[0]) and np.isneginf(want[0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-5, atol=1e-7)


def test_majority_rl_weight_uses_the_k_passed_in_not_the_strategys():
    """dS/dp for maj@5 with an explicit k = 2 is 5 C(4,1) p (1-p)^3 = 20 p (1-p)^3 (the paper's weight), not k = 3's."""
    p = P_GRID[1:-1]
    m = MajorityAtN(5, 3)
    got = np.asarray(m.rl_weight(jnp.asarray(p, jnp.float32), k=jnp.asarray(2)), np.float64)
    np.testing.assert_allclose(got, 20 * p * (1 - p) ** 3, rtol=1e-5)
    own = np.asarray(m.rl_weight(jnp.asarray(p, jnp.float32)), np.float64)
    np.testing.assert_allclose(own, 5 * math.comb(4, 2) * p**2 * (1 - p) ** 2, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_best_of_small_n_is_the_cdf_and_density_of_the_max(n):
    """For N = 2, 3: P(max of N quantiles <= q) = q^N and its density N q^(N-1) (order statistics)."""
    q = P_GRID
    s = BestOfN(n)
    np.testing.assert_allclose(np.asarray(s.success_probability(jnp.asarray(q, jnp.float32))), q**n, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(s.rl_weight(jnp.asarray(q, jnp.float32))), n * q ** (n - 1), rtol=1e-6,
                               atol=1e-7)
