"""Alignment coefficient, waste and starvation against independent quadrature and hand-made weight functions."""
import numpy as np
import pytest
from scipy import integrate, optimize

from jax_cat.losses.alignment import alignment_coefficient
from jax_cat.losses.strategies import MajorityAtN, PassAtN


def passn_sft(p, n):
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    return np.where(p == 0, 1.0, w)


def test_identical_weights_are_perfectly_aligned():
    r = alignment_coefficient(MajorityAtN(8), MajorityAtN(8))
    assert r.coefficient == pytest.approx(1.0, abs=1e-12)
    assert r.waste == 0.0 and r.starvation == 0.0
    r = alignment_coefficient(None, PassAtN(1), kind="rl")
    assert r.coefficient == pytest.approx(1.0, abs=1e-12)


def test_standard_sft_vs_pass_at_n_matches_quadrature():
    n, tol = 16, 0.01
    r = alignment_coefficient(None, PassAtN(n), tol=tol)
    num = integrate.quad(lambda p: passn_sft(p, n), 0, 1, limit=200)[0]
    den = np.sqrt(integrate.quad(lambda p: passn_sft(p, n) ** 2, 0, 1, limit=200)[0])
    assert r.coefficient == pytest.approx(num / den, rel=1e-4)
    # waste: the uniform SFT pressure beyond the p* where the pass@16 weight falls to tol of its max (1)
    p_star = optimize.brentq(lambda p: passn_sft(p, n) - tol, 0.05, 0.999)
    assert r.waste == pytest.approx(1 - p_star, abs=2e-3)
    assert r.starvation == 0.0  # standard SFT never starves a region
    np.testing.assert_allclose(r.w_train, 1.0)
    np.testing.assert_allclose(r.w_test, passn_sft(r.p, n), rtol=1e-9, atol=1e-12)


def test_waste_and_starvation_swap_roles():
    a = alignment_coefficient(PassAtN(64), MajorityAtN(16))
    b = alignment_coefficient(MajorityAtN(16), PassAtN(64))
    assert a.starvation > 0.3  # pass@64 SFT gives ~no gradient where maj@16 still needs it (mid p)
    assert a.starvation == pytest.approx(b.waste, abs=1e-12)
    assert a.waste == pytest.approx(b.starvation, abs=1e-12)
    assert a.coefficient == pytest.approx(b.coefficient, abs=1e-12)
    assert 0 < a.coefficient < 1


def test_disjoint_supports_and_density():
    p = np.linspace(0, 1, 1001)
    left, right = (p < 0.5).astype(float), (p >= 0.5).astype(float)
    r = alignment_coefficient(left, right, p=p)
    assert r.coefficient == pytest.approx(0.0, abs=1e-12)
    assert r.waste == pytest.approx(1.0, abs=2e-3) and r.starvation == pytest.approx(1.0, abs=2e-3)
    # a density that puts (almost) all prompts where both weights agree makes them aligned
    both = np.where(p < 0.5, 1.0, 2.0)
    r = alignment_coefficient(left + right, both, p=p, density=lambda x: (x < 0.4).astype(float))
    assert r.coefficient == pytest.approx(1.0, abs=1e-9)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="train weights have shape"):
        alignment_coefficient(np.ones(3), None)
    with pytest.raises(ValueError, match="kind"):
        alignment_coefficient(None, None, kind="dpo")
    with pytest.raises(ValueError, match="nonnegative"):
        alignment_coefficient(lambda p: p - 0.5, None)
