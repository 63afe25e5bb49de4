"""Cases that pin down what mutation testing found loose in merging/task_vectors.py (docs/testing.md): the compute
dtype table, the dtype of `add`/`scale`/`combine` results, the error messages' named paths and leaves, and the
coefficient checks of `combine`. Values are hand-computed or numpy float64 arithmetic."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from merging import task_vectors as tv


def test_compute_dtype_table():
    # float32 for every float type up to 32 bits; the float's own type when wider (float64 under x64)
    for d in (jnp.bfloat16, jnp.float16, jnp.float32):
        assert jnp.dtype(tv.compute_dtype(d)) == jnp.float32
    with jax.enable_x64(True):
        assert jnp.dtype(tv.compute_dtype(jnp.float64)) == jnp.float64
        assert jnp.dtype(tv.compute_dtype(jnp.bfloat16)) == jnp.float32


def test_float64_leaves_are_computed_in_float64_under_x64():
    with jax.enable_x64(True):
        base = {"w": jnp.asarray([1.0, 2.0], jnp.float64)}
        ft = {"w": jnp.asarray([1.0 + 2.0**-40, 2.0], jnp.float64)}
        tau = tv.task_vector(ft, base)
        assert tau["w"].dtype == jnp.float64
        assert np.asarray(tau["w"]).tolist() == [2.0**-40, 0.0]  # float32 would give 0
        merged = tv.combine(base, [tau], [3.0])
        assert np.asarray(merged["w"]).tolist() == [1.0 + 3 * 2.0**-40, 2.0]
        assert np.asarray(tv.add(tau, tau)["w"]).tolist() == [2.0**-39, 0.0]
        assert np.asarray(tv.scale(tau, 0.5)["w"]).tolist() == [2.0**-41, 0.0]
        # a float64 jax.Array coefficient is used as given (a float32 cast would round 1 + 2^-30 to 1)
        one = {"w": jnp.asarray([1.0], jnp.float64)}
        assert np.asarray(tv.scale(one, jnp.asarray(1.0 + 2.0**-30, jnp.float64))["w"]).tolist() == [1.0 + 2.0**-30]


def test_add_and_scale_of_bf16_round_once_from_float32():
    a = {"w": jnp.asarray([1.0, 3.0], jnp.bfloat16), "n": jnp.int32(4)}
    b = {"w": jnp.asarray([2.0**-7, 0.5], jnp.bfloat16), "n": jnp.int32(9)}
    s = tv.add(a, b)
    assert s["w"].dtype == jnp.bfloat16
    assert np.asarray(s["w"], np.float64).tolist() == [1.0078125, 3.5]
    assert int(s["n"]) == 4  # non-float leaves come from the first argument
    # scale: 3 * 0.1 in float32 is 0.3000000119..., rounded once to bf16 = 0.30078125
    x = {"w": jnp.asarray([0.1], jnp.float32).astype(jnp.bfloat16), "k": jnp.int32(5)}
    y = tv.scale(x, 3.0)
    assert y["w"].dtype == jnp.bfloat16
    expected = np.float32(np.asarray(x["w"], np.float32)[0]) * np.float32(3.0)
    assert np.asarray(y["w"], np.float32)[0] == np.float32(jnp.asarray(expected, jnp.float32).astype(jnp.bfloat16))
    assert int(y["k"]) == 5
    z = tv.scale({"w": jnp.asarray([2.0, -4.0])}, jnp.asarray(-0.25))  # coefficient given as a jax.Array
    assert np.asarray(z["w"]).tolist() == [-0.5, 1.0]


def test_task_vector_dtype_argument_and_unselected_leaves():
    base = {"a": jnp.asarray([1.0, 2.0], jnp.bfloat16), "b": jnp.asarray([5.0], jnp.bfloat16), "i": jnp.int32(3)}
    ft = {"a": jnp.asarray([1.5, 2.0], jnp.bfloat16), "b": jnp.asarray([6.0], jnp.bfloat16), "i": jnp.int32(8)}
    tau = tv.task_vector(ft, base, filter="a", dtype=jnp.float32)
    assert tau["a"].dtype == jnp.float32 and tau["b"].dtype == jnp.float32
    assert np.asarray(tau["a"]).tolist() == [0.5, 0.0]
    assert np.asarray(tau["b"]).tolist() == [0.0]  # not selected: zero, in the requested dtype
    assert int(tau["i"]) == 3  # passenger from the base
    tau = tv.task_vector(ft, base, exclude="a")
    assert tau["a"].dtype == jnp.bfloat16 and tau["b"].dtype == jnp.bfloat16
    assert np.asarray(tau["a"], np.float32).tolist() == [0.0, 0.0]
    assert np.asarray(tau["b"], np.float32).tolist() == [1.0]


def test_combine_coefficient_checks_and_empty_list():
    base = {"w": jnp.asarray([1.0, 2.0]), "i": jnp.int32(1)}
    tau = {"w": jnp.asarray([4.0, -2.0]), "i": jnp.int32(0)}
    once = r"^combine needs the coefficients once: positionally \(coeffs\) or as coefficients=$"
    with pytest.raises(TypeError, match=once):
        tv.combine(base, [tau], [1.0], coefficients=[1.0])
    with pytest.raises(TypeError, match=once):
        tv.combine(base, [tau])
    with pytest.raises(ValueError, match=r"^coeffs has shape \(2,\), expected \(1,\) for 1 task vectors$"):
        tv.combine(base, [tau], jnp.asarray([1.0, 2.0]))
    with pytest.raises(ValueError, match="^got 1 task vectors but 2 coeffs$"):
        tv.combine(base, [tau], [1.0, 2.0])
    out = tv.combine(base, [tau], coefficients=[0.5])
    assert np.asarray(out["w"]).tolist() == [3.0, 1.0] and int(out["i"]) == 1
    out = tv.combine(base, [tau], jnp.asarray([-1.0]))
    assert np.asarray(out["w"]).tolist() == [-3.0, 4.0]
    out = tv.combine(base, [], [])  # no task vectors: the base
    assert np.asarray(out["w"]).tolist() == [1.0, 2.0]
    out = tv.combine(base, [], coefficients=jnp.zeros((0,)))
    assert np.asarray(out["w"]).tolist() == [1.0, 2.0]
    # float32 vectors onto a bf16 base: the base's dtype comes back
    b16 = {"w": jnp.asarray([1.0, 2.0], jnp.bfloat16)}
    out = tv.combine(b16, [{"w": jnp.asarray([0.5, 0.25], jnp.float32)}], [2.0])
    assert out["w"].dtype == jnp.bfloat16 and np.asarray(out["w"], np.float32).tolist() == [2.0, 2.5]


def test_combine_filter_keeps_the_base_on_unselected_paths():
    base = {"attn": jnp.asarray([1.0]), "mlp": jnp.asarray([2.0])}
    tau = {"attn": jnp.asarray([10.0]), "mlp": jnp.asarray([10.0])}
    out = tv.combine(base, [tau], [1.0], filter="attn")
    assert float(out["attn"][0]) == 11.0 and float(out["mlp"][0]) == 2.0
    out = tv.combine(base, [tau], [1.0], exclude="attn")
    assert float(out["attn"][0]) == 1.0 and float(out["mlp"][0]) == 12.0


def test_mismatch_messages_name_the_path_and_both_leaves():
    base = {"a": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros((1,))}
    other = {"a": 3, "b": jnp.zeros((1,))}
    msg = "leaf kind differs at 'a': finetuned has int, base has ArrayImpl(2, 3) float32"
    with pytest.raises(tv.TreeMismatchError) as err:
        tv.task_vector(other, base)
    assert str(err.value) == msg
    other = {"a": jnp.zeros((2, 3), jnp.int32), "b": jnp.zeros((1,))}  # an int array is not a vector leaf
    with pytest.raises(tv.TreeMismatchError) as err:
        tv.task_vector(base, other)
    assert str(err.value) == "leaf kind differs at 'a': finetuned has ArrayImpl(2, 3) float32, base has ArrayImpl(2, 3) int32"
    extra = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((1,)), "c": jnp.zeros((1,))}
    with pytest.raises(tv.TreeMismatchError) as err:
        tv.add(base, extra)
    assert str(err.value) == "pytree structure differs between first and second: path 'c' is in second but not in first"
    with pytest.raises(tv.TreeMismatchError) as err:  # same paths, different node types: dict vs list
        tv.add({"0": jnp.zeros(1)}, [jnp.zeros(1)])
    assert str(err.value).startswith("pytree structure differs between first and second: node types differ at or above '0'")
    with pytest.raises(tv.TreeMismatchError) as err:  # dtype check only in check_compatible's default mode
        tv.check_compatible([base, {"a": jnp.zeros((2, 3), jnp.bfloat16), "b": jnp.zeros((1,))}], ["x", "y"])
    assert str(err.value) == "dtype differs at 'a': x float32 vs y bfloat16"
    rows = tv.check_compatible(
        [base, {"a": jnp.zeros((2, 3), jnp.bfloat16), "b": jnp.zeros((1,))}], ["x", "y"], check_dtype=False
    )
    assert [p for p, _ in rows] == ["a", "b"] and rows[0][1][1].dtype == jnp.bfloat16
    with pytest.raises(tv.TreeMismatchError) as err:
        tv.combine(base, [{"a": jnp.zeros((2, 3)), "b": jnp.zeros((2,))}], [1.0])
    assert str(err.value) == "shape differs at 'b': base (1,) vs taus[0] (2,)"

    class HasShape:  # a leaf with a shape but no dtype is named by its type
        shape = (2, 3)

    with pytest.raises(tv.TreeMismatchError) as err:
        tv.task_vector({"a": HasShape(), "b": jnp.zeros((1,))}, base)
    assert str(err.value) == "leaf kind differs at 'a': finetuned has HasShape, base has ArrayImpl(2, 3) float32"


def test_functions_are_jittable_with_passengers():
    base = {"w": jnp.asarray([1.0, 2.0]), "i": jnp.int32(1)}
    ft = {"w": jnp.asarray([2.0, 0.0]), "i": jnp.int32(1)}
    tau = jax.jit(tv.task_vector)(ft, base)
    assert np.asarray(tau["w"]).tolist() == [1.0, -2.0]
    assert np.asarray(jax.jit(tv.scale)(tau, jnp.asarray(2.0))["w"]).tolist() == [2.0, -4.0]


def test_structure_messages_in_every_branch():
    a, b, c = jnp.zeros(1), jnp.ones(1), jnp.full(1, 2.0)
    with pytest.raises(tv.TreeMismatchError) as err:  # the first tree has a path the second lacks
        tv.add({"a": a, "b": b, "c": c}, {"a": a, "b": b})
    assert str(err.value) == "pytree structure differs between first and second: path 'c' is in first but not in second"
    from collections import OrderedDict

    with pytest.raises(tv.TreeMismatchError) as err:  # same paths in another order: the first differing one
        tv.add({"a": a, "b": b, "c": c}, OrderedDict([("a", a), ("c", c), ("b", b)]))
    assert str(err.value).startswith("pytree structure differs between first and second: node types differ at or "
                                     "above 'b' (")
    with pytest.raises(tv.TreeMismatchError) as err:  # no leaves at all, different containers
        tv.add({}, [])
    assert str(err.value) == ("pytree structure differs between first and second: node types differ at or above '' "
                              f"({jax.tree_util.tree_structure({})} vs {jax.tree_util.tree_structure([])})")
    # a passenger leaf in the base is still checked against every task vector, not only the first
    base = {"i": jnp.int32(1), "w": a}
    with pytest.raises(tv.TreeMismatchError) as err:
        tv.combine(base, [{"i": jnp.int32(0), "w": a}, {"i": jnp.zeros(()), "w": a}], [1.0, 1.0])
    assert str(err.value) == "leaf kind differs at 'i': base has ArrayImpl() int32, taus[1] has ArrayImpl() float32"


def test_float32_leaves_subtract_in_float32_even_when_written_as_float64():
    """Under x64, task_vector(..., dtype=float64) of float32 leaves is the float32 difference widened (the documented
    compute dtype), not the exact float64 one: 1 + 2^-23 minus 2^-30 rounds to 1 + 2^-23 in float32."""
    ft = np.array([1.0 + 2.0**-23, 3.0], np.float32)
    base = np.array([2.0**-30, 1.0], np.float32)
    with jax.enable_x64(True):
        tau = tv.task_vector({"w": jnp.asarray(ft)}, {"w": jnp.asarray(base)}, dtype=jnp.float64)["w"]
        assert tau.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(tau), (ft - base).astype(np.float64))
        assert float(tau[0]) != float(np.float64(ft[0]) - np.float64(base[0]))


def test_combine_of_float32_leaves_accumulates_in_float32_under_x64():
    """1 + 2^-24 + 2^-24 accumulated in float32 is 1.0 (each half-ulp step ties to even); exactly, or in float64, it
    would be 1 + 2^-23. combine keeps float32 arithmetic for float32 leaves even when x64 is on."""
    base = {"w": np.array([1.0, 2.0], np.float32)}
    taus = [{"w": np.array([2.0**-24, 1.0], np.float32)}, {"w": np.array([2.0**-24, 1.0], np.float32)}]
    with jax.enable_x64(True):
        out = tv.combine(jax.tree.map(jnp.asarray, base), [jax.tree.map(jnp.asarray, t) for t in taus],
                         jnp.asarray([1.0, 1.0], jnp.float32))["w"]
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), np.array([1.0, 4.0], np.float32))
