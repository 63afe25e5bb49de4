"""Task-vector algebra on hand-made pytrees: nested dicts with tuples, NNX State, Equinox modules."""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merging import task_vectors as tv
from merging._paths import classify_param, make_selector, path_to_str


def _tree(seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "layers": [
            {"w": jnp.asarray(rng.standard_normal((3, 4)), dtype), "b": jnp.asarray(rng.standard_normal(4), dtype)},
            {"w": jnp.asarray(rng.standard_normal((3, 4)), dtype), "b": jnp.asarray(rng.standard_normal(4), dtype)},
        ],
        "head": (jnp.asarray(rng.standard_normal((4, 2)), dtype), jnp.int32(7)),
    }


def test_task_vector_add_scale_combine_values_on_nested_dicts():
    base, ft1, ft2 = _tree(0), _tree(1), _tree(2)
    t1, t2 = tv.task_vector(ft1, base), tv.task_vector(ft2, base)
    np.testing.assert_array_equal(t1["layers"][0]["w"], np.float32(ft1["layers"][0]["w"]) - np.float32(base["layers"][0]["w"]))
    assert t1["head"][1] == 7  # integer leaves ride along from the base
    s = tv.add(t1, t2)
    np.testing.assert_allclose(s["head"][0], np.asarray(t1["head"][0]) + np.asarray(t2["head"][0]), rtol=1e-6)
    np.testing.assert_allclose(tv.scale(t1, -2.0)["layers"][1]["b"], -2 * np.asarray(t1["layers"][1]["b"]), rtol=1e-6)
    merged = tv.combine(base, [t1, t2], [0.25, 0.5])
    by_path = lambda tree: {path_to_str(p): np.asarray(l) for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]}
    m, b, f1, f2 = by_path(merged), by_path(base), by_path(ft1), by_path(ft2)
    assert list(m) == ["head/0", "head/1", "layers/0/b", "layers/0/w", "layers/1/b", "layers/1/w"]
    assert m["head/1"] == 7
    for p in m:
        if p != "head/1":
            np.testing.assert_allclose(m[p], b[p] + 0.25 * (f1[p] - b[p]) + 0.5 * (f2[p] - b[p]), rtol=1e-5, atol=1e-6)
    # coefficient 1 on a single vector gives back the fine-tuned model
    np.testing.assert_allclose(tv.combine(base, [t1], [1.0])["layers"][1]["w"], ft1["layers"][1]["w"], atol=1e-6)


def test_bf16_in_bf16_out_accumulates_in_float32():
    base, ft = _tree(0, jnp.bfloat16), _tree(1, jnp.bfloat16)
    tau = tv.task_vector(ft, base)
    assert tau["layers"][0]["w"].dtype == jnp.bfloat16
    tau32 = tv.task_vector(ft, base, dtype=jnp.float32)
    assert tau32["layers"][0]["w"].dtype == jnp.float32
    merged = tv.combine(base, [tau32, tau32], [0.3, 0.4])
    assert merged["layers"][0]["w"].dtype == jnp.bfloat16
    b = np.asarray(base["layers"][0]["w"], np.float32)
    t = np.asarray(tau32["layers"][0]["w"])
    expected = ((b + np.float32(0.3) * t) + np.float32(0.4) * t).astype(jnp.bfloat16)  # f32 accumulation, one rounding
    np.testing.assert_array_equal(np.asarray(merged["layers"][0]["w"]), expected)


def test_errors_name_the_first_differing_path():
    base = _tree(0)
    other = _tree(1)
    other["layers"][1]["w"] = jnp.zeros((3, 5))
    with pytest.raises(tv.TreeMismatchError, match=r"shape differs at 'layers/1/w': finetuned \(3, 5\) vs base \(3, 4\)"):
        tv.task_vector(other, base)
    other = _tree(1)
    other["layers"][0]["b"] = other["layers"][0]["b"].astype(jnp.float16)
    with pytest.raises(tv.TreeMismatchError, match=r"dtype differs at 'layers/0/b'"):
        tv.task_vector(other, base)
    other = _tree(1)
    del other["layers"][1]["b"]
    with pytest.raises(tv.TreeMismatchError, match=r"'layers/1/b' is in base but not in finetuned"):
        tv.task_vector(other, base)
    with pytest.raises(ValueError, match="2 task vectors but 1 coeffs"):
        tv.combine(base, [base, base], [1.0])


def test_filter_and_exclude_select_paths():
    base, ft = _tree(0), _tree(1)
    tau = tv.task_vector(ft, base, filter=r"/w$")
    assert float(jnp.abs(tau["layers"][0]["b"]).max()) == 0.0
    assert float(jnp.abs(tau["layers"][0]["w"]).max()) > 0.0
    full = tv.task_vector(ft, base)
    merged = tv.combine(base, [full], [1.0], exclude=lambda p: p.startswith("head"))
    np.testing.assert_array_equal(merged["head"][0], base["head"][0])  # excluded: base value
    np.testing.assert_allclose(merged["layers"][0]["w"], ft["layers"][0]["w"], atol=1e-6)
    sel = make_selector(r"layers", r"/b$")
    assert sel("layers/0/w") and not sel("layers/0/b") and not sel("head/0")


def test_nnx_state_paths_and_algebra():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.RMSNorm(4, rngs=rngs)

    _, base = nnx.split(Tiny(nnx.Rngs(0)))
    _, ft = nnx.split(Tiny(nnx.Rngs(1)))
    paths = [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(base)[0]]
    assert paths == ["norm/scale", "proj/bias", "proj/kernel"]  # ".value" of nnx.Variable dropped
    tau = tv.task_vector(ft, base, exclude="norm")
    assert isinstance(tau, nnx.State)
    merged = tv.combine(base, [tau], [0.5])
    np.testing.assert_allclose(
        merged["proj"]["kernel"].get_value(),
        np.asarray(base["proj"]["kernel"].get_value()) + 0.5 * (np.asarray(ft["proj"]["kernel"].get_value()) - np.asarray(base["proj"]["kernel"].get_value())),
        rtol=1e-6, atol=1e-7,
    )
    np.testing.assert_array_equal(merged["norm"]["scale"].get_value(), base["norm"]["scale"].get_value())


def test_equinox_module_non_array_leaves_pass_through():
    base = eqx.nn.MLP(3, 2, 5, 1, key=jax.random.key(0))
    ft = eqx.nn.MLP(3, 2, 5, 1, key=jax.random.key(1))
    tau = tv.task_vector(ft, base)
    merged = tv.combine(base, [tau, tau], [0.5, 0.5])
    assert merged.activation is base.activation
    np.testing.assert_allclose(merged.layers[1].weight, ft.layers[1].weight, atol=1e-6)
    x = jnp.ones(3)
    np.testing.assert_allclose(merged(x), ft(x), atol=1e-5)


def test_combine_is_jittable_and_matches_eager():
    base, ft1, ft2 = _tree(0), _tree(1), _tree(2)
    taus = [tv.task_vector(ft1, base), tv.task_vector(ft2, base)]
    eager = tv.combine(base, taus, [0.7, -0.2])
    jitted = jax.jit(tv.combine)(base, taus, jnp.asarray([0.7, -0.2]))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    jitted_tv = jax.jit(tv.task_vector)(ft1, base)
    np.testing.assert_array_equal(jitted_tv["layers"][0]["w"], taus[0]["layers"][0]["w"])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.layers.3.self_attn.q_proj.weight", ("q", 3)),
        ("model.layers.3.self_attn.k_proj.bias", ("k", 3)),
        ("model.layers.0.self_attn.v_proj.weight", ("v", 0)),
        ("model.layers.12.self_attn.o_proj.weight", ("o", 12)),
        ("model.layers.1.mlp.gate_proj.weight", ("gate", 1)),
        ("model.layers.1.mlp.up_proj.weight", ("up", 1)),
        ("model.layers.1.mlp.down_proj.weight", ("down", 1)),
        ("model.layers.1.input_layernorm.weight", ("norm", 1)),
        ("model.layers.1.self_attn.q_norm.weight", ("norm", 1)),
        ("model.norm.weight", ("norm", None)),
        ("model.embed_tokens.weight", ("embed", None)),
        ("lm_head.weight", ("lm_head", None)),
        ("layers/2/attn/q_proj/kernel", ("q", 2)),
        ("something.else", ("other", None)),
    ],
)
def test_classify_param(name, expected):
    assert classify_param(name) == expected
