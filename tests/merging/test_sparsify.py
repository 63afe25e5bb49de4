"""Sparsification rules against hand-computed tensors and numpy references; norm preservation; DARE's expectation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import merging
import merging.methods.ram
from merging import sparsify as sp
from merging import task_vectors as tv
from merging.sparsify import Rescale


def _random_tree(seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = {"embed": (40, 16), "layers/0/w": (16, 24), "layers/0/b": (24,), "layers/1/w": (24, 16), "scale": ()}
    return {k: jnp.asarray(rng.standard_normal(s) * (1 + i), dtype) for i, (k, s) in enumerate(shapes.items())}


def _np_norm(tree, norm):
    flat = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])
    return {"l2": np.linalg.norm(flat), "l1": np.abs(flat).sum(), "linf": np.abs(flat).max()}[norm]


def test_topk_per_tensor_keeps_entries_at_or_above_kth_magnitude():
    x = jnp.asarray([[3.0, -1.0, 0.5, -4.0], [2.0, -2.0, 0.1, 0.0]])
    # density 0.375 of 8 entries -> k = 3; the 3rd largest |x| is 2.0 and +-2.0 tie.
    # Issue 14 changed this on purpose: by default exactly k are kept, ties by index (2.0 at flat index 4 wins);
    # tie_break="keep_all" (the DoTS authors' keep_top_k_abs, the old default) keeps both.
    out = sp.topk({"x": x}, 0.375)["x"]
    np.testing.assert_array_equal(out, [[3.0, 0, 0, -4.0], [2.0, 0, 0, 0]])
    np.testing.assert_array_equal(jax.jit(lambda t: sp.topk(t, 0.375))({"x": x})["x"], out)  # same rule under jit
    keep_all = sp.topk({"x": x}, 0.375, tie_break="keep_all")["x"]
    np.testing.assert_array_equal(keep_all, [[3.0, 0, 0, -4.0], [2.0, -2.0, 0, 0]])
    assert float(jnp.abs(sp.topk({"x": x}, 0.1)["x"]).sum()) == 0.0  # k = floor(0.8) = 0 keeps nothing
    np.testing.assert_array_equal(sp.topk({"x": x}, 1.0)["x"], x)
    assert sp.num_kept(0.29, 100) == 29 and sp.num_kept(0.3, 10) == 3


@pytest.mark.parametrize("integers", [False, True])
def test_global_topk_threshold_matches_numpy(integers):
    rng = np.random.default_rng(1)
    tree = _random_tree(2)
    if integers:  # many ties: the exact threshold still decides every entry
        tree = {k: jnp.asarray(rng.integers(-5, 6, np.shape(v)), jnp.float32) for k, v in tree.items()}
    flat = np.concatenate([np.abs(np.asarray(v)).reshape(-1) for v in tree.values()])
    for density in (0.01, 0.3, 0.77):
        k = sp.num_kept(density, flat.size)
        t = np.sort(flat)[::-1][k - 1]
        out = sp.topk(tree, density, scope="global", tie_break="keep_all")
        for name, v in tree.items():
            v = np.asarray(v)
            np.testing.assert_array_equal(out[name], np.where(np.abs(v) >= t, v, 0), err_msg=f"{name} {density}")
        # default (issue 14, on purpose): exactly k, ties at t taken in tensor-name order then flat index
        exact = sp.topk(tree, density, scope="global")
        quota = k - int((flat > t).sum())
        for name in sorted(tree):  # these names sort the same in natural and plain order
            v = np.asarray(tree[name]).reshape(-1)
            eq = np.flatnonzero(np.abs(v) == t) if t > 0 else np.zeros(0, int)
            keep = np.abs(v) > t
            keep[eq[:quota]] = True
            quota -= min(quota, eq.size)
            expected = np.where(keep | (t == 0), v, 0).reshape(np.shape(tree[name]))
            np.testing.assert_array_equal(exact[name], expected, err_msg=f"exact {name} {density}")
        assert int(sum(np.count_nonzero(np.asarray(x)) for x in exact.values())) <= k


def test_dots_sparsify_is_topk_then_one_global_l2_factor():
    tau = _random_tree(3)
    out = sp.dots_sparsify(tau, 0.3)
    kept = sp.topk(tau, 0.3)
    factor = _np_norm(tau, "l2") / _np_norm(kept, "l2")
    assert factor > 1.1  # top 30 % of a Gaussian holds ~76 % of the squared norm
    for k in tau:
        np.testing.assert_allclose(out[k], np.asarray(kept[k], np.float64) * factor, rtol=1e-6)


SPARSIFIERS = [
    sp.TopK(0.3, "tensor"),
    sp.TopK(0.3, "global"),
    sp.Dare(0.6, seed=4),
    sp.Breadcrumbs(0.5, 0.1),
]


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_norm_preserving_rescale_float64(norm, scope):
    """float64 under jax.enable_x64: the rescaled vector's norm equals the original's to 1e-12 relative."""
    with jax.enable_x64(True):
        tau = _random_tree(5, jnp.float64)
        for base in SPARSIFIERS:
            s = type(base)(**{**base.__dict__, "rescale": Rescale(norm, scope)})
            out = sp.sparsify(tau, s)
            assert all(out[k].dtype == jnp.float64 for k in tau)
            if scope == "global":
                assert _np_norm(out, norm) == pytest.approx(_np_norm(tau, norm), rel=1e-12), s
            else:
                for k in tau:
                    if np.any(np.asarray(out[k])):
                        assert _np_norm({k: out[k]}, norm) == pytest.approx(_np_norm({k: tau[k]}, norm), rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_norm_preserving_rescale_float32(norm):
    """float32 leaves: factors come from float64 host sums; the result keeps the norm to 1e-6 relative."""
    tau = _random_tree(6)
    for scope in ("tensor", "global"):
        out = sp.dots_sparsify(tau, 0.2, norm=norm, scope=scope)
        if scope == "global":
            assert _np_norm(out, norm) == pytest.approx(_np_norm(tau, norm), rel=1e-6)
        else:
            for k in tau:
                if np.any(np.asarray(out[k])):
                    assert _np_norm({k: out[k]}, norm) == pytest.approx(_np_norm({k: tau[k]}, norm), rel=1e-6)
    dense = sp.rescale_to_norm(sp.topk(tau, 0.2), tau, norm=norm)
    assert _np_norm(dense, norm) == pytest.approx(_np_norm(tau, norm), rel=1e-6)


def test_dare_mean_over_seeds_converges_to_input():
    x = jnp.asarray(np.random.default_rng(7).standard_normal(64), jnp.float32)
    p, seeds = 0.5, 400
    draws = np.stack([np.asarray(sp.dare({"x": x}, p, seed=s)["x"]) for s in range(seeds)])
    kept = draws != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(draws[kept], np.broadcast_to(np.asarray(x) / (1 - p), draws.shape)[kept], rtol=1e-6)
    mean = draws.mean(axis=0)
    stderr = np.abs(np.asarray(x)) * np.sqrt(p / (1 - p)) / np.sqrt(seeds)
    assert np.all(np.abs(mean - np.asarray(x)) <= 5 * stderr)
    assert np.linalg.norm(mean - np.asarray(x)) / np.linalg.norm(np.asarray(x)) < 0.1
    # seeded and per-path: the same seed repeats, another path draws another mask
    np.testing.assert_array_equal(sp.dare({"x": x}, p, seed=3)["x"], draws[3])
    two = sp.dare({"x": x, "y": x}, p, seed=3)
    assert not np.array_equal(two["x"] != 0, two["y"] != 0)


def test_breadcrumbs_band_hand_example():
    x = jnp.asarray([[5.0, -1.0, 3.0, -4.0, 2.0], [0.1, -0.5, 0.3, 0.2, -0.4]])
    # per row (last axis): drop floor(0.2*5)=1 largest |x|, keep the next floor(0.4*5)=2
    rows = sp.breadcrumbs({"x": x}, 0.4, 0.2)["x"]
    np.testing.assert_array_equal(rows, np.asarray([[0, 0, 3.0, -4.0, 0], [0, 0, 0.3, 0, -0.4]], np.float32))
    # whole tensor: drop the 2 largest (5, -4), keep the next 4 (3, 2, -1, -0.5)
    whole = sp.breadcrumbs({"x": x}, 0.4, 0.2, axis="tensor")["x"]
    np.testing.assert_array_equal(whole, np.asarray([[0, -1.0, 3.0, 0, 2.0], [0, -0.5, 0, 0, 0]], np.float32))


def test_ties_hand_checked_3x4():
    t1 = jnp.asarray([[4.0, -1.0, 2.0, 0.5], [-3.0, 6.0, -0.2, 1.0], [5.0, -1.5, 0.1, -7.0]])
    t2 = jnp.asarray([[-1.0, 3.0, -4.0, 2.0], [2.5, -5.0, 1.0, 0.3], [-6.0, 0.4, 8.0, -0.5]])
    t3 = jnp.asarray([[2.0, 0.5, -1.0, -3.5], [1.0, 4.0, -2.2, 0.2], [3.0, -0.1, 6.0, 5.0]])
    # Trim, density 0.5 -> keep the 6 largest |x| of each 3x4 tensor (no ties at the cut):
    #   t1 keeps 7,6,5,4,3,2 -> [[4,0,2,0],[-3,6,0,0],[5,0,0,-7]]
    #   t2 keeps 8,6,5,4,3,2.5 -> [[0,3,-4,0],[2.5,-5,0,0],[-6,0,8,0]]
    #   t3 keeps 6,5,4,3.5,3,2.2 -> [[0,0,0,-3.5],[0,4,-2.2,0],[3,0,6,5]]
    # Elect sign of the column sums:
    #   [[ 4, 3,-2,-3.5],[-0.5, 5,-2.2, 0],[ 2, 0, 14,-2]]
    # Disjoint mean of the agreeing non-zero entries:
    #   (0,0) 4 | (0,1) 3 | (0,2) -4 | (0,3) -3.5 | (1,0) -3 | (1,1) (6+4)/2=5 | (1,2) -2.2 | (1,3) sign 0 -> 0
    #   (2,0) (5+3)/2=4 | (2,1) 0 | (2,2) (8+6)/2=7 | (2,3) -7
    expected = np.asarray([[4, 3, -4, -3.5], [-3, 5, -2.2, 0], [4, 0, 7, -7]], np.float32)
    merged = merging.ties([{"w": t1}, {"w": t2}, {"w": t3}], density=0.5)
    np.testing.assert_allclose(merged["w"], expected, rtol=1e-6)
    base = {"w": jnp.ones((3, 4))}
    np.testing.assert_allclose(tv.combine(base, [merged], [0.5])["w"], 1 + 0.5 * expected, rtol=1e-6)
    # weights scale each trimmed vector before the election: doubling t2 flips (1,0) to t2's sign (+2*2.5=5)
    weighted = merging.ties([{"w": t1}, {"w": t2}, {"w": t3}], density=0.5, coefficients=[1.0, 2.0, 1.0])
    assert float(weighted["w"][1, 0]) == pytest.approx(5.0)


def test_ram_and_ram_plus_hand_example():
    t1 = np.asarray([1, 0, 2, -1, 0, 3, 7, 8], np.float32)
    t2 = np.asarray([0, 4, -2, 1e-7, 5, 1, 0, 0], np.float32)  # 1e-7 is below the 1e-5 "changed" threshold
    a = [{"a": jnp.asarray(t[:4]), "b": jnp.asarray(t[4:])} for t in (t1, t2)]
    # changed counts: [1,1,2,1,1,2,1,1]; unique entries kept, shared (2 and 5) averaged: (2-2)/2=0, (3+1)/2=2
    ram = merging.ram(a)
    np.testing.assert_allclose(np.concatenate([ram["a"], ram["b"]]), [1, 4, 0, -1, 5, 2, 7, 8], rtol=1e-6)
    # RAM+ r=1.2: vector 1 changed 6 entries, 2 shared -> rho = 2/4, factor 1 + 0.2*0.5 = 1.1;
    #             vector 2 changed 4 entries, 2 shared -> rho = 2/2, factor 1 + 0.2*1 = 1.2
    assert list(merging.methods.ram.ram_rescales([6, 4], [2, 2], 1.2)) == pytest.approx([1.1, 1.2])
    plus = merging.ram(a, rescale_factor=1.2)
    np.testing.assert_allclose(np.concatenate([plus["a"], plus["b"]]), [1.1, 4.8, 0, -1.1, 6, 2, 7.7, 8.8], rtol=1e-6)
    per_tensor = merging.ram(a, rescale_factor=1.2, scope="tensor")  # same ratios per tensor here
    np.testing.assert_allclose(np.concatenate([per_tensor["a"], per_tensor["b"]]), [1.1, 4.8, 0, -1.1, 6, 2, 7.7, 8.8], rtol=1e-6)


def test_tensor_scope_is_jittable_global_scope_says_why_not():
    tau = _random_tree(8)
    eager = sp.topk(tau, 0.3, rescale=Rescale("l2", "tensor"))
    jitted = jax.jit(lambda t: sp.topk(t, 0.3, rescale=Rescale("l2", "tensor")))(tau)
    for k in tau:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-5)
    jax.jit(lambda t: merging.ties([t, t], 0.3))(tau)
    jax.jit(lambda t: sp.dare(t, 0.5, seed=1))(tau)
    with pytest.raises(TypeError, match="scope='global'.*concrete arrays"):
        jax.jit(lambda t: sp.topk(t, 0.3, scope="global"))(tau)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="density must be in"):
        sp.TopK(0.0)
    with pytest.raises(ValueError, match="drop_rate must be in"):
        sp.Dare(1.0)
    with pytest.raises(ValueError, match="norm must be one of"):
        Rescale("l3")
