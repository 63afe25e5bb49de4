"""alignment_coefficient on tiny hand-made grids where every integral is a trapezoid sum done by hand, plus the
boundary of the tol regions and the argument errors (mutation testing, issue 15)."""
import math

import numpy as np
import pytest

from jax_cat.losses.alignment import alignment_coefficient
from jax_cat.losses.strategies import MajorityAtN, PassAtN

P3 = np.array([0.0, 0.5, 1.0])  # two trapezoids of width 1/2: integral of y = (y0 + 2 y1 + y2) / 4


def test_coefficient_is_the_trapezoid_cosine_by_hand():
    # int 1*[0,1,2] = (0+2+2)/4 = 1; int 1 = 1; int [0,1,4] = (0+2+4)/4 = 1.5 -> A = 1/sqrt(1.5)
    r = alignment_coefficient(np.ones(3), [0.0, 1.0, 2.0], p=P3)
    assert r.coefficient == pytest.approx(1 / math.sqrt(1.5), rel=1e-12)
    assert r.waste == pytest.approx(0.25, rel=1e-12)  # test weight 0 <= tol at p=0 only: (1+0+0)/4 of mass 1
    assert r.starvation == 0.0
    np.testing.assert_array_equal(r.p, P3)
    np.testing.assert_array_equal(r.waste_region, [True, False, False])
    np.testing.assert_array_equal(r.starvation_region, [False, False, False])
    # a non-uniform grid: widths 0.1 and 0.9; int [1, 1, 0] = 0.1 + 0.45 = 0.55 of int 1 = 1
    r = alignment_coefficient(np.ones(3), [0.0, 0.0, 5.0], p=np.array([0.0, 0.1, 1.0]))
    assert r.waste == pytest.approx(0.55, rel=1e-12)
    # with a density mu = [1, 0, 1]: int wt ws mu = [0, 0, 2] -> 2/4 = 0.5,
    # int wt^2 mu = [1,0,1]/4 = 0.5, int ws^2 mu = [0,0,4]/4 = 1 -> A = 0.5 / sqrt(0.5) = sqrt(0.5)
    r = alignment_coefficient(np.ones(3), [0.0, 1.0, 2.0], p=P3, density=np.array([1.0, 0.0, 1.0]))
    assert r.coefficient == pytest.approx(math.sqrt(0.5), rel=1e-12)
    r = alignment_coefficient(np.ones(3), [0.0, 1.0, 2.0], p=P3, density=lambda x: (x != 0.5).astype(float))
    assert r.coefficient == pytest.approx(math.sqrt(0.5), rel=1e-12)


@pytest.mark.parametrize("tol,waste", [(0.01, 0.75), (0.005, 0.25), (0.0, 0.25)])
def test_region_boundary_is_strictly_above_tol_times_max(tol, waste):
    """Test weight [0, 0.01, 1]: at tol = 0.01 the middle point (exactly tol * max) is NOT in the test support,
    so the waste region is the first two points: (1 + 2*1 + 0)/4 = 0.75; a smaller tol keeps it: 0.25."""
    r = alignment_coefficient(np.ones(3), [0.0, 0.01, 1.0], p=P3, tol=tol)
    assert r.waste == pytest.approx(waste, rel=1e-12)
    s = alignment_coefficient([0.0, 0.01, 1.0], np.ones(3), p=P3, tol=tol)  # the same on the training side
    assert s.starvation == pytest.approx(waste, rel=1e-12)
    assert s.waste == 0.0


def test_zero_weights_give_zero_not_nan():
    r = alignment_coefficient(np.zeros(3), np.ones(3), p=P3)
    assert r.coefficient == 0.0 and r.waste == 0.0
    assert r.starvation == pytest.approx(1.0)  # all of the test mass lies where training gives nothing
    r = alignment_coefficient(np.ones(3), np.zeros(3), p=P3)
    assert r.coefficient == 0.0 and r.starvation == 0.0 and r.waste == pytest.approx(1.0)


def test_strategy_weights_of_either_kind_and_default_grid():
    r = alignment_coefficient(PassAtN(4), MajorityAtN(3), kind="rl", p=P3)
    np.testing.assert_allclose(r.w_train, [4.0, 4 * 0.5 ** 3, 0.0], rtol=1e-12)  # N (1-p)^(N-1)
    np.testing.assert_allclose(r.w_test, [0.0, 6 * 0.5 * 0.5, 0.0], rtol=1e-12)  # maj@3 (k=2): 6 p (1-p)
    r = alignment_coefficient(PassAtN(4), None, p=P3)  # sft: 4 p (1-p)^3 / (1 - (1-p)^4), 1 at p = 0
    np.testing.assert_allclose(r.w_train, [1.0, 4 * 0.5 ** 4 / (1 - 0.5 ** 4), 0.0], rtol=1e-12)
    np.testing.assert_allclose(r.w_test, 1.0)
    r = alignment_coefficient(None, None)
    assert r.p.shape == (2001,) and r.p[0] == 0.0 and r.p[-1] == 1.0 and r.coefficient == pytest.approx(1.0)
    r = alignment_coefficient(lambda p: 1 - p, (1.0, 1.0, 1.0), p=P3)  # a callable and a tuple
    np.testing.assert_allclose(r.w_train, [1.0, 0.5, 0.0])


def test_arguments_are_checked_and_named():
    with pytest.raises(ValueError, match="strictly increasing"):
        alignment_coefficient(None, None, p=np.array([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        alignment_coefficient(None, None, p=np.array([0.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        alignment_coefficient(None, None, p=np.ones((2, 2)))
    with pytest.raises(ValueError, match="tol"):
        alignment_coefficient(None, None, p=P3, tol=1.0)
    with pytest.raises(ValueError, match="tol"):
        alignment_coefficient(None, None, p=P3, tol=-0.1)
    with pytest.raises(ValueError, match="density"):
        alignment_coefficient(None, None, p=P3, density=np.ones(2))
    with pytest.raises(ValueError, match="density"):
        alignment_coefficient(None, None, p=P3, density=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(TypeError, match="train must be"):
        alignment_coefficient("pass@4", None, p=P3)
    with pytest.raises(TypeError, match="test must be"):
        alignment_coefficient(None, 3, p=P3)
    with pytest.raises(ValueError, match="test weights have shape"):
        alignment_coefficient(None, np.ones(4), p=P3)
    with pytest.raises(ValueError, match="test weights must be finite"):
        alignment_coefficient(None, [1.0, np.nan, 1.0], p=P3)
    with pytest.raises(ValueError, match="train weights must be finite and nonnegative"):
        alignment_coefficient([1.0, -0.5, 1.0], None, p=P3)


def test_integer_weights_are_converted_before_squaring():
    """Integer weights as large as 2e10 square past int64 (9.2e18): they must become float64 first. Weights
    proportional to [0, 1, 2] are perfectly aligned with [0, 1, 2]."""
    r = alignment_coefficient(np.array([0, 10 ** 10, 2 * 10 ** 10]), [0.0, 1.0, 2.0], p=P3)
    assert r.coefficient == pytest.approx(1.0, rel=1e-12)
    assert r.w_train.dtype == np.float64
    r = alignment_coefficient(lambda p: (p * 2e10).astype(np.int64), [0.0, 1.0, 2.0], p=P3)  # a callable's ints too
    assert r.coefficient == pytest.approx(1.0, rel=1e-12)


def test_a_callable_with_only_one_weight_method_is_used_as_a_callable():
    def w(p):
        return 1 - p

    w.rl_weight = None  # not a strategy: a strategy has both rl_weight and sft_weight
    r = alignment_coefficient(w, None, p=P3)
    np.testing.assert_allclose(r.w_train, [1.0, 0.5, 0.0])


def test_grids_of_two_points_and_of_float32_are_fine():
    r = alignment_coefficient(np.ones(2), [1.0, 3.0], p=np.array([0.0, 1.0]))  # the smallest grid: 2 points
    assert r.coefficient == pytest.approx(2 / math.sqrt(5), rel=1e-12)  # int 1*[1,3] = 2, int 1 = 1, int [1,9] = 5
    p32 = np.linspace(0.0, 1.0, 11, dtype=np.float32)  # evaluated in float64, not at float32 precision
    r = alignment_coefficient(PassAtN(4), lambda p: (p * 2e10).astype(np.int64), kind="rl", p=p32)
    assert r.p.dtype == np.float64
    q = p32.astype(np.float64)
    np.testing.assert_allclose(r.w_train, 4 * (1 - q) ** 3, rtol=1e-13)
    np.testing.assert_allclose(r.w_test, np.floor(q * 2e10), rtol=1e-15)  # int64 output, squared in float64


def test_messages_start_with_the_function_and_argument():
    with pytest.raises(ValueError, match="^alignment_coefficient: p must be a strictly increasing 1-D grid"):
        alignment_coefficient(None, None, p=np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="^alignment_coefficient: density must be nonnegative"):
        alignment_coefficient(None, None, p=P3, density=-np.ones(3))


def test_starvation_is_weighted_by_the_density():
    """Training covers p = 0, 0.5 only; density [1, 1, 2]: starvation = int [0, 0, 2] / int [1, 1, 2]
    = (2/4) / (5/4) = 0.4 (the density multiplies; it does not divide)."""
    r = alignment_coefficient([1.0, 1.0, 0.0], np.ones(3), p=P3, density=np.array([1.0, 1.0, 2.0]))
    assert r.starvation == pytest.approx(0.4, rel=1e-12)
    s = alignment_coefficient(np.ones(3), [1.0, 1.0, 0.0], p=P3, density=np.array([1.0, 1.0, 2.0]))
    assert s.waste == pytest.approx(0.4, rel=1e-12)
