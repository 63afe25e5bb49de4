"""Strategies: closed-form weights against autodiff and independent float64 references; estimators against brute force."""
import itertools
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scipy import stats

from jax_cat.losses import strategies as st
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN, pass_at_k, pass_at_k_many, strategy_from_spec

P_INTERIOR = np.array([1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.25, 0.5, 0.7, 0.9, 0.99, 1 - 1e-6])
P_ALL = np.concatenate([[0.0], P_INTERIOR, [1.0]])
STRATEGIES = [PassAtN(1), PassAtN(2), PassAtN(16), PassAtN(1024), MajorityAtN(5), MajorityAtN(16, 1),
              MajorityAtN(16, 16), MajorityAtN(64, 20), MajorityAtN(1024)]


def reference_success(s, p):
    """Independent float64 reference for S(p) (scipy's binomial tail)."""
    if isinstance(s, PassAtN):
        with np.errstate(divide="ignore"):
            return -np.expm1(s.n * np.log1p(-p))
    return stats.binom.sf(s.k - 1, s.n, p)


@pytest.mark.parametrize("s", STRATEGIES, ids=lambda s: s.name)
def test_weights_match_autodiff_and_reference_x64(s):
    with jax.enable_x64(True):
        p = jnp.asarray(P_INTERIOR, jnp.float64)
        S = s.success_probability(p)
        np.testing.assert_allclose(S, reference_success(s, P_INTERIOR), rtol=1e-9, atol=1e-300)
        grad = jax.jit(jax.vmap(jax.grad(s.success_probability)))(p)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(s.rl_weight(p), grad, rtol=1e-6, atol=1e-12 * s.n)
        # sft_weight = p S'/S, compared where S is representable
        ok = np.asarray(S) > 1e-250
        np.testing.assert_allclose(np.asarray(s.sft_weight(p))[ok], np.asarray(p * grad / S)[ok], rtol=1e-6, atol=1e-9 * s.n)


@pytest.mark.parametrize("s", STRATEGIES, ids=lambda s: s.name)
def test_float32_finite_with_right_limits(s):
    p = jnp.asarray(P_ALL, jnp.float32)
    out = {}
    for f in (s.success_probability, s.rl_weight, s.sft_weight):
        v = f(p)
        assert v.dtype == jnp.float32
        assert np.all(np.isfinite(v)), (f.__name__, v)
        assert np.all(np.asarray(v) >= 0)
        out[f.__name__] = np.asarray(v)
    k = s.k if isinstance(s, MajorityAtN) else 1
    n = s.n
    S, rl, sft = out["success_probability"], out["rl_weight"], out["sft_weight"]  # P_ALL[0] = 0, P_ALL[-1] = 1
    assert S[0] == 0.0 and S[-1] == 1.0
    assert sft[0] == pytest.approx(k)  # S ~ C(n,k) p^k near 0
    assert sft[-1] == pytest.approx(n if k == n else 0.0)
    assert rl[0] == pytest.approx(n if k == 1 else 0.0)
    assert rl[-1] == pytest.approx(n if k == n else 0.0)
    # float32 agrees with float64 reference where values are O(1e-30) or more
    with jax.enable_x64(True):
        ref = np.asarray(s.sft_weight(jnp.asarray(P_ALL, jnp.float64)))
    np.testing.assert_allclose(s.sft_weight(p), ref, rtol=2e-3, atol=1e-5 * max(k, 1))


def test_sft_weight_near_zero_tends_to_k():
    p = jnp.asarray([1e-12, 1e-8], jnp.float32)
    np.testing.assert_allclose(PassAtN(64).sft_weight(p), 1.0, rtol=1e-4)
    np.testing.assert_allclose(MajorityAtN(64).sft_weight(p), 33.0, rtol=1e-4)
    np.testing.assert_allclose(MajorityAtN(1024).sft_weight(p), 513.0, rtol=1e-4)


def test_jit_vmap_any_shape_and_dtype_follow():
    s = MajorityAtN(8)
    p = jax.random.uniform(jax.random.key(0), (3, 4, 5))
    out = jax.jit(s.sft_weight)(p)
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(jax.vmap(s.sft_weight)(p), out, rtol=1e-6)
    assert PassAtN(4).rl_weight(jnp.asarray(0.3, jnp.bfloat16)).dtype == jnp.bfloat16
    assert PassAtN(4).rl_weight(1).dtype == jnp.float32  # ints are cast to the default float


@pytest.mark.parametrize("s", [PassAtN(4), MajorityAtN(16, 16), MajorityAtN(1024), BestOfN(8)], ids=lambda s: s.name)
def test_log_success_from_logp(s):
    """Value = log S(exp a); derivative = sft_weight(exp a), also checked against float64 autodiff of a naive log S."""
    a32 = jnp.asarray([-1e4, -300.0, -50.0, -5.0, -1.0, -0.3, -0.01, -1e-5, -1e-12, 0.0], jnp.float32)
    v = s.log_success_from_logp(a32)
    g = jax.jit(jax.vmap(jax.grad(s.log_success_from_logp)))(a32)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g)) and np.all(np.asarray(v) <= 0)
    np.testing.assert_allclose(g, s.sft_weight(jnp.exp(a32)), rtol=1e-5)
    base = PassAtN(s.n) if isinstance(s, BestOfN) else s
    with jax.enable_x64(True):
        a = jnp.asarray(a32, jnp.float64)
        with np.errstate(divide="ignore"):
            ref = np.log(reference_success(base, np.exp(np.asarray(a))))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(np.asarray(v)[fin], ref[fin], rtol=2e-5, atol=2e-6)
        naive = lambda x: jnp.log(base.success_probability(jnp.exp(x)))  # noqa: E731
        with np.errstate(divide="ignore"):
            mid = jnp.asarray([x for x in [-5.0, -1.0, -0.3, -0.01] if np.log(reference_success(base, np.exp(x))) > -300])
        np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(s.log_success_from_logp)))(mid),
                                   jax.jit(jax.vmap(jax.grad(naive)))(mid), rtol=1e-8, atol=1e-12)
    # underflowed p: the loss keeps its slope k (= 1 for pass@N)
    k = s.k if isinstance(s, MajorityAtN) else 1
    assert float(g[0]) == pytest.approx(k)


def test_pass_at_1_log_success_is_identity():
    a = jnp.asarray([-3.0, -0.5, 0.0])
    assert PassAtN(1).log_success_from_logp(a) is not None
    np.testing.assert_array_equal(PassAtN(1).log_success_from_logp(a), a)


def test_bon_quantile_weights():
    s = BestOfN(4)
    q = jnp.asarray([0.0, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(s.success_probability(q), np.asarray(q) ** 4, rtol=1e-6)
    np.testing.assert_allclose(s.rl_weight(q), 4 * np.asarray(q) ** 3, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(s.success_probability)))(q[1:]), s.rl_weight(q[1:]), rtol=1e-6)
    np.testing.assert_allclose(s.sft_weight(q), PassAtN(4).sft_weight(q))
    np.testing.assert_array_equal(BestOfN(1).rl_weight(q), 1.0)


def test_majority_default_threshold_and_validation():
    assert MajorityAtN(4).k == 3 and MajorityAtN(5).k == 3 and MajorityAtN(1).k == 1
    assert MajorityAtN(4) == MajorityAtN(4, 3)
    with pytest.raises(ValueError, match="k"):
        MajorityAtN(4, 5)
    with pytest.raises(ValueError, match="n must be"):
        PassAtN(0)
    with pytest.raises(ValueError, match="n must be"):
        BestOfN(2.0)


def test_strategy_from_spec():
    assert strategy_from_spec("pass@16") == PassAtN(16)
    assert strategy_from_spec("maj@8") == MajorityAtN(8)
    assert strategy_from_spec("maj@8:k=3") == MajorityAtN(8, 3)
    assert strategy_from_spec("BoN@4") == BestOfN(4)
    with pytest.raises(ValueError, match="not understood"):
        strategy_from_spec("top@3")
    for s in (PassAtN(3), MajorityAtN(8), MajorityAtN(8, 2), BestOfN(5)):
        assert strategy_from_spec(s.name) == s


# ------------------------------------------------------------------------------------------------------------
# estimators vs brute force over subsets
# ------------------------------------------------------------------------------------------------------------
def brute_pass(correct, k):
    subs = list(itertools.combinations(range(len(correct)), k))
    return np.mean([any(correct[i] for i in s) for s in subs])


def brute_majority(correct, answers, k):
    vals = []
    for s in itertools.combinations(range(len(correct)), k):
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            vals.append(0.0)
            continue
        top = max(votes.values())
        winners = [a for a, c in votes.items() if c == top]
        vals.append(np.mean([np.mean([correct[i] for i in range(len(correct)) if answers[i] == a]) for a in winners]))
    return float(np.mean(vals))


def brute_bon(correct, scores, k):
    vals = []
    for s in itertools.combinations(range(len(correct)), k):
        top = max(scores[i] for i in s)
        vals.append(np.mean([correct[i] for i in s if scores[i] == top]))
    return float(np.mean(vals))


def test_pass_at_k_brute_force():
    rng = np.random.default_rng(0)
    for m in range(1, 11):
        for c in range(m + 1):
            correct = np.zeros(m, bool)
            correct[rng.choice(m, c, replace=False)] = True
            for k in range(1, m + 1):
                want = brute_pass(correct, k)
                assert pass_at_k(m, c, k) == pytest.approx(want, abs=1e-12)
                assert PassAtN(k).estimate(correct) == pytest.approx(want, abs=1e-12)
    ms, cs = np.array([10, 64, 64, 200, 5]), np.array([3, 0, 64, 17, 4])
    for k in (1, 2, 5):
        np.testing.assert_allclose(pass_at_k_many(ms, cs, k), [pass_at_k(m, c, k) for m, c in zip(ms, cs)], atol=1e-12)
    np.testing.assert_allclose(PassAtN(3).estimate_many(np.eye(6, 8, dtype=bool)), [pass_at_k(8, 1, 3)] * 6)
    with pytest.raises(ValueError, match="num_samples >= k"):
        pass_at_k(3, 1, 4)


MAJ_CASES = [
    # (correct, answers)
    ([1, 0, 0, 1, 0], ["7", "3", "3", "7", "5"]),
    ([1, 0, 1, 0], ["a", "b", "a", "b"]),  # 2-2 ties
    ([0, 0, 0, 1, 1, 0], [None, "x", None, "y", "y", "x"]),  # None never wins
    ([0, 0, 0], [None, None, None]),
    ([1, 1, 1, 0, 0, 0, 0], [4, 4, 4, 1, 2, 3, None]),  # plurality below strict majority
    ([1, 0, 0, 0, 1, 0, 1, 0], ["r", "w1", "w2", "w1", "r", "w2", "r", None]),
]


@pytest.mark.parametrize("case", range(len(MAJ_CASES)))
def test_majority_estimate_brute_force(case):
    correct, answers = MAJ_CASES[case]
    for k in range(1, len(correct) + 1):
        want = brute_majority(correct, answers, k)
        assert MajorityAtN(k).estimate(correct, answers=answers) == pytest.approx(want, abs=1e-12)
    assert MajorityAtN(1).estimate([1, 0], answers=["a", "b"]) == pytest.approx(0.5)
    # ties split evenly: 2 right vs 2 wrong in a pool of 4, n=4 -> 1/2
    assert MajorityAtN(4).estimate([1, 0, 1, 0], answers=["a", "b", "a", "b"]) == pytest.approx(0.5)


def test_majority_monte_carlo_path(monkeypatch):
    rng = np.random.default_rng(1)
    m, n = 24, 9  # C(24, 9) = 1.3M > 20000 -> Monte Carlo
    answers = list(rng.choice(["a", "b", "c", "d"], size=m, p=[0.4, 0.3, 0.2, 0.1]))
    answers[3] = None
    correct = [a == "a" for a in answers]
    mc = MajorityAtN(n).estimate(correct, answers=answers)
    assert mc == MajorityAtN(n).estimate(correct, answers=answers)  # fixed seed: reproducible
    monkeypatch.setattr(st, "MAJORITY_EXACT_LIMIT", 2_000_000)
    exact = MajorityAtN(n).estimate(correct, answers=answers)
    assert abs(mc - exact) < 4 * 0.5 / math.sqrt(st.MAJORITY_MC_SAMPLES)


BON_CASES = [
    ([1, 0, 1, 0, 0], [0.9, 0.8, 0.1, 0.5, 0.3]),
    ([1, 0, 1, 0, 0, 1], [1.0, 1.0, 0.5, 0.5, 0.5, 0.0]),  # score ties
    ([0, 1, 0, 1], [2.0, 2.0, 2.0, 2.0]),
    ([1, 1, 0, 0, 0, 1, 0], [3, -1, 3, 7, 0, 0, 7]),
]


@pytest.mark.parametrize("case", range(len(BON_CASES)))
def test_bon_estimate_brute_force(case):
    correct, scores = BON_CASES[case]
    for k in range(1, len(correct) + 1):
        want = brute_bon(correct, scores, k)
        assert BestOfN(k).estimate(correct, scores=scores) == pytest.approx(want, abs=1e-12)
    c = np.array([c for c, _ in [BON_CASES[0]]][0])
    np.testing.assert_allclose(BestOfN(2).estimate_many(np.stack([c, c]), scores=np.stack([BON_CASES[0][1]] * 2)),
                               [brute_bon(c, BON_CASES[0][1], 2)] * 2)


def test_estimate_errors_name_the_input():
    with pytest.raises(ValueError, match="answers"):
        MajorityAtN(2).estimate([1, 0])
    with pytest.raises(ValueError, match="scores"):
        BestOfN(2).estimate([1, 0])
    with pytest.raises(ValueError, match="M >= n"):
        PassAtN(4).estimate([1, 0])
