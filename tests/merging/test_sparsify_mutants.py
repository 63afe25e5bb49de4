"""Cases that pin down what mutation testing found loose in merging/sparsify.py (docs/testing.md).

References are brute force in numpy: top-k by a stable sort of -|x| over the flat index (tensors in natural name
order for the global scope), the magnitude band per row, norms as float64 numpy sums, hand-computed numbers.
Small tensors and few distinct shapes keep this file fast (every new shape is a new jit compile)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import merging
from merging import sparsify as sp
from merging.sparsify import Rescale


def _ints(seed, shape, lo=-4, hi=5):
    """Small integers as float32: many exact ties at every magnitude, and some zeros."""
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.float32)


def _ref_topk(arrays: dict, k: int, order: list[str]) -> dict:
    """Exactly-k top-|x| by brute force: stable descending sort over the concatenation in `order`."""
    flat = np.concatenate([arrays[n].reshape(-1) for n in order])
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
    out, start = {}, 0
    for n in order:
        size = arrays[n].size
        out[n] = np.where(keep[start : start + size], flat[start : start + size], 0).reshape(arrays[n].shape)
        start += size
    return out


def _ref_keep_all(x: np.ndarray, k: int) -> np.ndarray:
    t = np.sort(np.abs(x).reshape(-1))[::-1][k - 1]
    return np.where(np.abs(x) >= t, x, 0)


def test_num_kept_table():
    assert [sp.num_kept(f, n) for f, n in [(0.29, 100), (0.3, 10), (1.0, 7), (0.5, 7), (0.999, 3), (0.1, 5)]] == [
        29, 3, 7, 3, 2, 0]
    assert sp.num_kept(1.5, 4) == 4  # never more than n
    assert sp.num_kept(0.5, 0) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kth_largest_abs_equals_sorting(dtype):
    x = jnp.asarray(_ints(0, (6, 5)) * 0.75, dtype)
    a = np.sort(np.abs(np.asarray(x, np.float32)).reshape(-1))[::-1]
    for k in (1, 2, 7, 13, 29, 30):
        got = sp.kth_largest_abs(x, k)
        assert float(got) == a[k - 1], k
        assert float(jax.jit(lambda v: sp.kth_largest_abs(v, k))(x)) == a[k - 1], k  # traced: sort
    y = jnp.asarray([-3.0, 1e-30, -2.5e38, 7.0], jnp.float32)  # extreme exponents use every radix digit
    assert [float(sp.kth_largest_abs(y, k)) for k in (1, 2, 3, 4)] == [float(np.float32(2.5e38)), 7.0, 3.0,
                                                                       float(np.float32(1e-30))]


def test_kth_largest_abs_float64_under_x64():
    with jax.enable_x64(True):
        x = jnp.asarray([1.0 + 2.0**-40, -1.0, 3.0, 1.0 + 2.0**-41, -0.5], jnp.float64)
        # 4 radix levels of 16 bits: the low bits decide between 1 + 2^-40 and 1 + 2^-41
        assert [float(sp.kth_largest_abs(x, k)) for k in range(1, 6)] == [3.0, 1.0 + 2.0**-40, 1.0 + 2.0**-41, 1.0,
                                                                          0.5]


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.9])
def test_topk_exact_k_matches_brute_force_on_ties(density):
    arrays = {"a": _ints(1, (4, 6)), "b": _ints(2, (24,))}
    tree = {n: jnp.asarray(v) for n, v in arrays.items()}
    out = sp.topk(tree, density)
    for n, v in arrays.items():
        k = sp.num_kept(density, v.size)
        np.testing.assert_array_equal(out[n], _ref_topk({n: v}, k, [n])[n], err_msg=n)
        assert np.count_nonzero(np.asarray(out[n])) <= k
        np.testing.assert_array_equal(sp.topk(tree, density, tie_break="keep_all")[n], _ref_keep_all(v, k))


def test_topk_under_jit_matches_brute_force():
    arrays = {"a": _ints(3, (4, 6))}
    tree = {n: jnp.asarray(v) for n, v in arrays.items()}
    k = sp.num_kept(0.25, 24)
    out = jax.jit(lambda t: sp.topk(t, 0.25))(tree)
    np.testing.assert_array_equal(out["a"], _ref_topk(arrays, k, ["a"])["a"])
    out = jax.jit(lambda t: sp.topk(t, 0.25, tie_break="keep_all"))(tree)
    np.testing.assert_array_equal(out["a"], _ref_keep_all(arrays["a"], k))
    out = jax.jit(lambda t: sp.topk(t, 0.01))(tree)  # k = 0 under jit too
    assert not np.any(np.asarray(out["a"]))


@pytest.mark.parametrize("density", [0.05, 0.3, 0.6, 0.99])
def test_global_topk_ties_in_natural_name_order(density):
    # "l10" sorts before "l2" as plain strings; the rule takes tensors in natural order (l2, then l10)
    arrays = {"l10": _ints(4, (24,)), "l2": _ints(5, (4, 6)), "emb": _ints(6, (3, 8))}
    tree = {n: jnp.asarray(v) for n, v in arrays.items()}
    n_total = sum(v.size for v in arrays.values())
    k = sp.num_kept(density, n_total)
    ref = _ref_topk(arrays, k, ["emb", "l2", "l10"])
    out = sp.topk(tree, density, scope="global")
    for n in arrays:
        np.testing.assert_array_equal(out[n], ref[n], err_msg=f"{n} k={k}")
    flat = np.concatenate([v.reshape(-1) for v in arrays.values()])
    t = np.sort(np.abs(flat))[::-1][k - 1]
    keep_all = sp.topk(tree, density, scope="global", tie_break="keep_all")
    for n, v in arrays.items():
        np.testing.assert_array_equal(keep_all[n], np.where(np.abs(v) >= t, v, 0), err_msg=n)


def test_global_topk_edge_cases():
    tree = {"a": jnp.asarray([3.0, -1.0, 2.0]), "b": jnp.asarray([0.5, -4.0])}
    out = sp.topk(tree, 0.1, scope="global")  # k = floor(0.5) = 0: nothing kept
    assert all(not np.any(np.asarray(v)) for v in out.values())
    out = sp.topk(tree, 1.0, scope="global")
    assert np.asarray(out["a"]).tolist() == [3.0, -1.0, 2.0] and np.asarray(out["b"]).tolist() == [0.5, -4.0]
    out = sp.topk(tree, 0.4, scope="global")  # k = 2: -4 and 3
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 0.0] and np.asarray(out["b"]).tolist() == [0.0, -4.0]
    # unselected leaves pass through unchanged and do not count toward n (k = floor(0.5 * 3) = 1)
    out = sp.topk(tree, 0.5, scope="global", exclude="b")
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 0.0] and np.asarray(out["b"]).tolist() == [0.5, -4.0]
    out = sp.topk(tree, 0.5, filter="b")
    assert np.asarray(out["a"]).tolist() == [3.0, -1.0, 2.0] and np.asarray(out["b"]).tolist() == [0.0, -4.0]
    # zeros tied at the threshold: keeping them or not is the same vector
    z = {"a": jnp.asarray([0.0, 0.0, 5.0, 0.0])}
    assert np.asarray(sp.topk(z, 0.5, scope="global")["a"]).tolist() == [0.0, 0.0, 5.0, 0.0]
    # empty and 0-d tensors
    e = {"e": jnp.zeros((0, 3)), "s": jnp.asarray(2.0), "i": jnp.int32(4)}
    out = sp.topk(e, 0.5)
    assert out["e"].shape == (0, 3) and float(out["s"]) == 0.0 and int(out["i"]) == 4  # k = floor(0.5) = 0
    assert float(sp.topk(e, 1.0)["s"]) == 2.0


def test_global_norm_and_rescale_to_norm_against_numpy():
    arrays = {"a": _ints(7, (4, 6)) * 0.5, "b": _ints(8, (24,))}
    tree = {n: jnp.asarray(v) for n, v in arrays.items()}
    flat = np.concatenate([v.reshape(-1).astype(np.float64) for v in arrays.values()])
    assert sp.global_norm(tree) == pytest.approx(np.sqrt((flat**2).sum()), rel=1e-15)
    assert sp.global_norm(tree, "l1") == np.abs(flat).sum()
    assert sp.global_norm(tree, "linf") == np.abs(flat).max()
    assert sp.global_norm(tree, "l1", filter="b") == np.abs(arrays["b"]).sum()
    assert sp.global_norm(tree, "l1", exclude="b") == np.abs(arrays["a"]).sum()
    assert sp.global_norm({"z": jnp.zeros((0,))}, "linf") == 0.0 and sp.global_norm({}, "l2") == 0.0
    assert sp.global_norm({}, "linf") == 0.0 and sp.global_norm({"i": jnp.int32(3)}, "linf") == 0.0
    sparse = {n: jnp.asarray(np.where(np.abs(v) >= 1.5, v, 0)) for n, v in arrays.items()}
    sflat = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in sparse.values()])
    for norm, f in (("l2", lambda v: np.sqrt((v**2).sum())), ("l1", lambda v: np.abs(v).sum()),
                    ("linf", lambda v: np.abs(v).max())):
        out = sp.rescale_to_norm(sparse, tree, norm=norm)
        factor = f(flat) / f(sflat)
        for n in arrays:
            np.testing.assert_allclose(out[n], np.asarray(sparse[n], np.float64) * factor, rtol=1e-6)
        out = sp.rescale_to_norm(sparse, tree, norm=norm, scope="tensor")
        for n, v in arrays.items():
            s = np.asarray(sparse[n], np.float64)
            np.testing.assert_allclose(out[n], s * (f(v.astype(np.float64)) / f(s)), rtol=1e-6)
    # a tensor with nothing kept (or nothing to match) is left as is; unselected leaves pass through
    out = sp.rescale_to_norm({"a": jnp.zeros(3), "b": jnp.asarray([1.0, 0.0])},
                             {"a": jnp.ones(3), "b": jnp.asarray([3.0, 4.0])}, scope="tensor")
    assert np.asarray(out["a"]).tolist() == [0.0] * 3 and np.asarray(out["b"]).tolist() == [5.0, 0.0]
    out = sp.rescale_to_norm({"a": jnp.asarray([1.0, 0.0]), "b": jnp.asarray([2.0])},
                             {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([7.0])}, exclude="b")
    assert np.asarray(out["a"]).tolist() == [5.0, 0.0] and np.asarray(out["b"]).tolist() == [2.0]
    out = sp.rescale_to_norm({"a": jnp.asarray([1.0, 0.0]), "b": jnp.asarray([2.0])},
                             {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([7.0])}, filter="a", scope="tensor")
    assert np.asarray(out["a"]).tolist() == [5.0, 0.0] and np.asarray(out["b"]).tolist() == [2.0]
    with pytest.raises(ValueError, match=r"^shape differs at 'a': sparse \(2,\) vs reference \(3,\)$"):
        sp.rescale_to_norm({"a": jnp.ones(2)}, {"a": jnp.ones(3)})
    out = sp.rescale_to_norm({"a": jnp.asarray([1.0, 0.0])}, {"a": jnp.zeros(2)})  # reference 0: factor 1
    assert np.asarray(out["a"]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="scope must be one of"):
        sp.rescale_to_norm(sparse, tree, scope="row")
    # per-tensor factor under jit with a concrete reference closed over (traced sparse, concrete reference)
    ref = {"a": jnp.asarray([3.0, 4.0])}
    out = jax.jit(lambda s: sp.rescale_to_norm(s, ref, scope="tensor"))({"a": jnp.asarray([1.0, 0.0])})
    assert np.asarray(out["a"]).tolist() == [5.0, 0.0]


def test_topk_rescale_hand_example():
    tau = {"a": jnp.asarray([3.0, 0.0, 4.0, 0.0]), "b": jnp.asarray([0.0, 12.0])}
    # global top-1 per tensor (density 0.5 of 4 = 2 in "a", of 2 = 1 in "b"): a keeps 3, 4 (all), b keeps 12.
    out = sp.dots_sparsify(tau, 0.5)
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 4.0, 0.0]  # nothing dropped: factor 1
    tau = {"a": jnp.asarray([3.0, 1.0, 4.0, 0.0]), "b": jnp.asarray([0.0, 12.0])}
    # dropped 1 -> kept L2 = 13, dense L2 = sqrt(170): factor sqrt(170)/13 on every kept entry
    f = np.sqrt(170.0) / 13.0
    out = sp.dots_sparsify(tau, 0.5)
    np.testing.assert_allclose(np.asarray(out["a"]), [3 * f, 0, 4 * f, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [0, 12 * f], rtol=1e-6)
    # per-tensor L1: a: 8 / 7, b unchanged
    out = sp.dots_sparsify(tau, 0.5, norm="l1", scope="tensor")
    np.testing.assert_allclose(np.asarray(out["a"]), [3 * 8 / 7, 0, 4 * 8 / 7, 0], rtol=1e-6)
    assert np.asarray(out["b"]).tolist() == [0.0, 12.0]
    out = sp.dots_sparsify(tau, 0.5, rescale=False)
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 4.0, 0.0]
    ties = {"a": jnp.asarray([2.0, -2.0, 1.0, 0.0])}  # k = 1 of 4: exactly one of the tied 2s, or both
    assert np.asarray(sp.dots_sparsify(ties, 0.25, rescale=False)["a"]).tolist() == [2.0, 0.0, 0.0, 0.0]
    assert np.asarray(sp.dots_sparsify(ties, 0.25, rescale=False, tie_break="keep_all")["a"]).tolist() == [
        2.0, -2.0, 0.0, 0.0]
    ten = {"a": jnp.asarray(np.arange(1.0, 11.0, dtype=np.float32))}  # default density 0.3: the 3 largest
    assert np.asarray(sp.dots_sparsify(ten, rescale=False)["a"]).tolist() == [0.0] * 7 + [8.0, 9.0, 10.0]
    out = sp.dots_sparsify(tau, 0.5, topk_scope="global", rescale=False)  # k = 3 of 6: 12, 4, 3
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 4.0, 0.0] and np.asarray(out["b"]).tolist() == [0.0, 12.0]
    out = sp.topk(tau, 0.25, rescale=Rescale("linf", "tensor"))  # k = 1 in a (4), b: k = 0 -> zeros, factor 1
    assert np.asarray(out["a"]).tolist() == [0.0, 0.0, 4.0, 0.0] and np.asarray(out["b"]).tolist() == [0.0, 0.0]
    out = jax.jit(lambda t: sp.topk(t, 0.5, rescale=Rescale("l1", "tensor")))(tau)  # traced factor
    np.testing.assert_allclose(np.asarray(out["a"]), [3 * 8 / 7, 0, 4 * 8 / 7, 0], rtol=1e-6)
    out = jax.jit(lambda t: sp.topk(t, 0.25, rescale=Rescale("l2", "tensor")))(tau)  # traced, kept norm 0
    assert np.asarray(out["b"]).tolist() == [0.0, 0.0]
    out = jax.jit(lambda t: sp.topk(t, 0.5, rescale=Rescale("linf", "tensor")))(tau)
    assert np.asarray(out["a"]).tolist() == [3.0, 0.0, 4.0, 0.0]


def test_bf16_topk_and_rescale_keep_the_dtype():
    tau = {"a": jnp.asarray([3.0, 1.0, 4.0, 0.0], jnp.bfloat16)}
    out = sp.dots_sparsify(tau, 0.5, norm="l1")  # factor 8/7 in float32, one rounding to bf16
    assert out["a"].dtype == jnp.bfloat16
    expected = (np.asarray([3.0, 0.0, 4.0, 0.0], np.float32) * np.float32(8 / 7)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out["a"]), expected)


def test_dare_drop_rescale_and_seeding():
    x = jnp.asarray(np.arange(1, 401, dtype=np.float32).reshape(20, 20))
    assert np.asarray(sp.dare({"x": x}, 0.0)["x"]).tolist() == np.asarray(x).tolist()  # p = 0: identity
    out = np.asarray(sp.dare({"x": x}, 0.75, seed=2)["x"])
    kept = out != 0
    # 400 Bernoulli(0.25) draws: 100 expected, sd 8.7; 5 sd bounds
    assert 56 < kept.sum() < 144
    np.testing.assert_array_equal(out[kept], np.asarray(x)[kept] * 4)  # 1/(1-p) = 4, exact in float32
    raw = np.asarray(sp.dare({"x": x}, 0.75, seed=2, rescale=None)["x"])
    np.testing.assert_array_equal(raw, np.where(kept, np.asarray(x), 0))  # same mask, no rescale
    normed = sp.dare({"x": x}, 0.75, seed=2, rescale=Rescale("l1", "global"))
    assert float(jnp.abs(normed["x"]).sum()) == pytest.approx(float(np.abs(np.asarray(x)).sum()), rel=1e-6)
    np.testing.assert_array_equal(sp.dare({"x": x}, 0.75)["x"], sp.dare({"x": x}, 0.75, seed=0)["x"])  # default seed 0
    other = np.asarray(sp.dare({"x": x}, 0.75, seed=3)["x"])
    assert not np.array_equal(other != 0, kept)  # another seed, another mask
    # under jit the same mask (the key comes from the seed and the path, not from the trace)
    np.testing.assert_array_equal(jax.jit(lambda t: sp.dare(t, 0.75, seed=2))({"x": x})["x"], out)
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\), got -0.1"):
        sp.Dare(-0.1)
    with pytest.raises(ValueError, match="rescale must be 'inverse', a Rescale or None, got 'l2'"):
        sp.Dare(0.5, rescale="l2")


def _ref_band(x: np.ndarray, n_remove: int, n_keep: int) -> np.ndarray:
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        order = np.argsort(-np.abs(x[r]), kind="stable")
        sel = order[n_remove : n_remove + n_keep]
        out[r, sel] = x[r, sel]
    return out


@pytest.mark.parametrize("density, top_remove", [(0.5, 0.0), (0.25, 0.125), (0.3, 0.4), (1.0, 0.0)])
def test_breadcrumbs_band_matches_brute_force(density, top_remove):
    x = _ints(9, (3, 8))
    out = sp.breadcrumbs({"x": jnp.asarray(x)}, density, top_remove)["x"]
    np.testing.assert_array_equal(out, _ref_band(x, sp.num_kept(top_remove, 8), sp.num_kept(density, 8)))
    whole = sp.breadcrumbs({"x": jnp.asarray(x)}, density, top_remove, axis="tensor")["x"]
    ref = _ref_band(x.reshape(1, -1), sp.num_kept(top_remove, 24), sp.num_kept(density, 24)).reshape(3, 8)
    np.testing.assert_array_equal(whole, ref)


def test_breadcrumbs_edge_cases_and_rescale():
    e = {"s": jnp.asarray(2.0), "e": jnp.zeros((0,)), "v": jnp.asarray([1.0, -6.0, 2.0, 3.0])}
    out = sp.breadcrumbs(e, 0.5, 0.25)
    assert float(out["s"]) == 2.0 and out["e"].shape == (0,)
    assert np.asarray(out["v"]).tolist() == [0.0, 0.0, 2.0, 3.0]  # drop 6, keep 3 and 2
    out = sp.breadcrumbs(e, 0.5, 0.25, rescale=Rescale("l1", "tensor"))  # 12 / 5
    np.testing.assert_allclose(np.asarray(out["v"]), [0, 0, 2 * 12 / 5, 3 * 12 / 5], rtol=1e-6)
    with pytest.raises(ValueError, match=r"top_remove must be in \[0, 1\], got 1.5"):
        sp.Breadcrumbs(0.5, 1.5)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 1.5"):
        sp.Breadcrumbs(1.5)
    with pytest.raises(ValueError, match="axis must be 'last' or 'tensor', got 'rows'"):
        sp.Breadcrumbs(0.5, axis="rows")
    sp.Breadcrumbs(1.0, 0.0)  # both bounds allowed


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 0.0"):
        sp.TopK(0.0)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 1.01"):
        sp.TopK(1.01)
    sp.TopK(1.0)
    with pytest.raises(ValueError, match=r"scope must be one of \('tensor', 'global'\), got 'row'"):
        sp.TopK(0.5, scope="row")
    with pytest.raises(ValueError, match=r"tie_break must be one of \('index', 'keep_all'\), got 'random'"):
        sp.TopK(0.5, tie_break="random")
    with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'l1', 'linf'\), got 'l3'"):
        Rescale("l3")
    with pytest.raises(ValueError, match=r"scope must be one of \('tensor', 'global'\), got 'row'"):
        Rescale("l2", "row")
    assert Rescale() == Rescale("l2", "global")
    with pytest.raises(TypeError, match=r"scope='global' statistics .* need concrete arrays: call this outside jax.jit"):
        jax.jit(lambda t: sp.dots_sparsify(t, 0.5))({"a": jnp.ones(4)})


def test_moved_merges_live_in_their_method_modules_only():
    """merging.sparsify's forwarding __getattr__ went in 0.1.0 (CHANGELOG.md): ties / ram are merging.methods'."""
    from merging.methods import ram, ties

    assert merging.ties is ties.ties and merging.ram is ram.ram
    for moved in ("ties", "ties_leaf", "ram", "ram_leaf", "ram_counts_leaf", "ram_rescales"):
        with pytest.raises(AttributeError, match=f"module 'merging.sparsify' has no attribute '{moved}'"):
            getattr(sp, moved)


def test_every_sparsifier_passes_unselected_leaves_through():
    big = np.arange(1.0, 101.0, dtype=np.float32)
    tree = {"keep": jnp.asarray(big), "sp": jnp.asarray(big)}
    fns = {
        "topk": lambda **kw: sp.topk(tree, 0.5, **kw),
        "dots": lambda **kw: sp.dots_sparsify(tree, 0.5, **kw),
        "dare": lambda **kw: sp.dare(tree, 0.5, **kw),
        "breadcrumbs": lambda **kw: sp.breadcrumbs(tree, 0.5, **kw),
    }
    for name, f in fns.items():
        for out in (f(filter="sp"), f(exclude="keep")):
            assert np.asarray(out["keep"]).tolist() == big.tolist(), name
            assert np.count_nonzero(np.asarray(out["sp"])) < 100, name
    # breadcrumbs' default top_remove 0.01: floor(0.01 * 100) = 1 largest dropped, the next 50 kept
    out = np.asarray(sp.breadcrumbs(tree, 0.5)["sp"])
    assert out.tolist() == [0.0] * 49 + big[49:99].tolist() + [0.0]


def test_traced_linf_rescale_of_an_empty_tensor():
    out = jax.jit(lambda t: sp.topk(t, 0.5, rescale=Rescale("linf", "tensor")))({"e": jnp.zeros((0, 2))})
    assert out["e"].shape == (0, 2)


def test_norms_over_several_host_chunks():
    # 2^22 + 1 entries: two chunks of the host reduction; l1/l2 add the chunks, linf takes their max
    n = (1 << 22) + 1
    x = {"x": np.ones(n, np.float32)}
    assert sp.global_norm(x, "l1") == n and sp.global_norm(x, "linf") == 1.0
    assert sp.global_norm(x, "l2") == pytest.approx(np.sqrt(n), rel=1e-15)


def test_global_topk_refuses_mixed_float_widths():
    with jax.enable_x64(True):
        tree = {"a": jnp.ones(4, jnp.float32), "b": jnp.ones(4, jnp.float64)}
        with pytest.raises(TypeError, match=r"^global top-k over mixed dtypes \(float64 vs float32\) is not supported$"):
            sp.topk(tree, 0.5, scope="global")


def test_rescale_to_a_reference_of_another_dtype():
    out = sp.rescale_to_norm({"a": jnp.asarray([1.0, 0.0], jnp.bfloat16)}, {"a": jnp.asarray([3.0, 4.0], jnp.float32)})
    assert out["a"].dtype == jnp.bfloat16 and np.asarray(out["a"], np.float32).tolist() == [5.0, 0.0]


def test_statistics_passes_report_progress():
    from merging.methods import DotsMerge
    from merging.methods.engine import merge_tensors

    calls = []

    def progress(it, desc, total):
        calls.append((desc, total))
        return it

    t = {"a": np.asarray([2.0, 1.0, 2.0, 0.0], np.float32), "b": np.asarray([2.0, 3.0], np.float32)}
    # global top-k of 3 of 6 entries: 3 and two of the three tied 2s (ties split across tensors)
    out = dict(merge_tensors(["a", "b"], {"a": (4,), "b": (2,)}, lambda n: np.zeros_like(t[n]), lambda i, n: t[n], 1,
                             DotsMerge(density=0.5, topk_scope="global"), progress=progress))
    f = np.sqrt(22.0 / 17.0)
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), [2 * f, 0, 2 * f, 0, 0, 3 * f], rtol=1e-6)
    assert calls == [("stats pass 1 (global top-k threshold)", 2), ("stats pass 2 (global top-k threshold)", 2),
                     ("stats pass 3 (top-k ties at the threshold)", 2), ("stats pass 4 (global norms)", 2),
                     ("merging", 2)]
