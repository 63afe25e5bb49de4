"""Cases that pin down what mutation testing found loose in merging/methods/*.py (docs/testing.md): every method
through `merge` on hand-checkable tensors (task arithmetic, DoTS, DARE, breadcrumbs, TIES trim/elect/disjoint mean,
RAM/RAM+), the settings checks and their messages, the registry, and the engine's dtype and input checks."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from merging import methods
from merging._checks import NonFiniteError
from merging.methods import REGISTRY, method_settings
from merging.methods.base import MergeMethod, check_choice, refuse_unused
from merging.methods.engine import tau_dtype
from merging.methods.ram import ram, ram_rescales
from merging.methods.ties import ties

# TIES hand example (Yadav et al.: trim, elect, disjoint merge), worked in tests/merging/test_sparsify.py
T1 = np.asarray([[4.0, -1.0, 2.0, 0.5], [-3.0, 6.0, -0.2, 1.0], [5.0, -1.5, 0.1, -7.0]], np.float32)
T2 = np.asarray([[-1.0, 3.0, -4.0, 2.0], [2.5, -5.0, 1.0, 0.3], [-6.0, 0.4, 8.0, -0.5]], np.float32)
T3 = np.asarray([[2.0, 0.5, -1.0, -3.5], [1.0, 4.0, -2.2, 0.2], [3.0, -0.1, 6.0, 5.0]], np.float32)
TIES_05 = np.asarray([[4, 3, -4, -3.5], [-3, 5, -2.2, 0], [4, 0, 7, -7]], np.float32)


def _models(*taus, base=None):
    base = np.ones_like(taus[0]) if base is None else base
    return {"w": jnp.asarray(base), "step": jnp.int32(3)}, [{"w": jnp.asarray(base + t), "step": jnp.int32(9)}
                                                            for t in taus]


def test_task_arithmetic_and_dots_through_merge():
    base, fts = _models(np.asarray([3.0, 1.0, 4.0, 0.0], np.float32), np.asarray([0.0, 2.0, 0.0, -8.0], np.float32))
    out = methods.merge(base, fts, methods.TaskArithmeticMerge(coefficients=(0.5, 0.25)))
    assert np.asarray(out["w"]).tolist() == [2.5, 2.0, 3.0, -1.0] and int(out["step"]) == 3
    out = methods.merge(base, fts, methods.TaskArithmeticMerge())  # default: 1 each
    assert np.asarray(out["w"]).tolist() == [4.0, 4.0, 5.0, -7.0]
    # DoTS density 0.5: tau1 keeps 3, 4 and is rescaled by sqrt(26)/5; tau2 keeps 2, -8 (nothing dropped)
    out = methods.merge(base, fts, methods.DotsMerge(density=0.5))
    f = np.sqrt(26.0) / 5.0
    np.testing.assert_allclose(np.asarray(out["w"]), [1 + 3 * f, 3.0, 1 + 4 * f, -7.0], rtol=1e-6)
    out = methods.merge(base, fts, methods.DotsMerge(density=0.5, norm="l1", rescale_scope="tensor"))
    np.testing.assert_allclose(np.asarray(out["w"]), [1 + 3 * 8 / 7, 3.0, 1 + 4 * 8 / 7, -7.0], rtol=1e-6)
    out = methods.merge(base, fts, methods.DotsMerge(density=0.25, rescale=False, topk_scope="global"))
    assert np.asarray(out["w"]).tolist() == [1.0, 1.0, 5.0, -7.0]  # k = 1 of each vector's 4 entries: 4 and -8
    out = methods.merge(base, fts, methods.DotsMerge(density=0.5, rescale=False, tie_break="keep_all"))
    assert np.asarray(out["w"]).tolist() == [4.0, 3.0, 5.0, -7.0]


def test_dare_through_merge():
    x = np.arange(1, 401, dtype=np.float32).reshape(20, 20)
    base, fts = _models(x, x, base=np.zeros_like(x))
    out = np.asarray(methods.merge(base, fts, methods.DareMerge(density=1.0))["w"])
    np.testing.assert_array_equal(out, 2 * x)  # density 1: nothing dropped, factor 1
    out = np.asarray(methods.merge(base, fts[:1], methods.DareMerge(density=0.25, seed=5))["w"])
    kept = out != 0
    assert 56 < kept.sum() < 144  # Bernoulli(0.25) x 400: mean 100, sd 8.7
    np.testing.assert_array_equal(out[kept], x[kept] * 4)  # 1 / (1 - p) = 4
    two = np.asarray(methods.merge(base, fts, methods.DareMerge(density=0.25, seed=5))["w"])
    # model 1 draws with seed 6, another mask: entries kept by one model are 4x, by both 8x
    assert set(np.unique(two[two != 0] / x[two != 0]).tolist()) == {4.0, 8.0}
    np.testing.assert_array_equal(np.where(kept, two, 0) != 0, kept)  # model 0's survivors are still there
    assert not np.array_equal(two != 0, kept)
    out = methods.merge(base, fts[:1], methods.DareMerge(density=0.25, seed=5, rescale="norm", norm="l1"))
    assert float(jnp.abs(out["w"]).sum()) == pytest.approx(float(x.sum()), rel=1e-6)
    out = methods.merge(base, fts[:1], methods.DareMerge(density=0.25, seed=5, rescale="norm",
                                                         rescale_scope="tensor"))
    assert float(jnp.sqrt((out["w"] ** 2).sum())) == pytest.approx(float(np.sqrt((x.astype(np.float64) ** 2).sum())),
                                                                   rel=1e-6)


def test_breadcrumbs_through_merge():
    tau = np.asarray([[5.0, -1.0, 3.0, -4.0, 2.0], [0.1, -0.5, 0.3, 0.2, -0.4]], np.float32)
    base, fts = _models(tau, base=np.zeros_like(tau))
    out = methods.merge(base, fts, methods.BreadcrumbsMerge(density=0.4, top_remove=0.2))
    np.testing.assert_array_equal(out["w"], np.asarray([[0, 0, 3.0, -4.0, 0], [0, 0, 0.3, 0, -0.4]], np.float32))
    out = methods.merge(base, fts, methods.BreadcrumbsMerge(density=0.4, top_remove=0.2, axis="tensor"))
    np.testing.assert_array_equal(out["w"], np.asarray([[0, -1.0, 3.0, 0, 2.0], [0, -0.5, 0, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="axis must be 'last' or 'tensor'"):
        methods.BreadcrumbsMerge(axis="row")


def test_ties_through_merge_and_pytree_function():
    base, fts = _models(T1, T2, T3)
    out = methods.merge(base, fts, methods.TiesMerge(density=0.5))
    np.testing.assert_allclose(np.asarray(out["w"]), 1 + TIES_05, rtol=1e-6)
    assert int(out["step"]) == 3
    out = methods.merge(base, fts, methods.TiesMerge(density=0.5, scale=0.5))
    np.testing.assert_allclose(np.asarray(out["w"]), 1 + 0.5 * TIES_05, rtol=1e-6)
    # coefficients multiply before the election: 2 * t2 flips (1, 0) to +5 (only 2 * 2.5 agrees)
    out = methods.merge(base, fts, methods.TiesMerge(density=0.5, coefficients=(1.0, 2.0, 1.0)))
    assert float(out["w"][1, 0]) == pytest.approx(6.0)
    # density 1: no trim; entry (0,0): 4 - 1 + 2 = 5 > 0, mean of 4 and 2 = 3
    out = methods.merge(base, fts, methods.TiesMerge(density=1.0))
    assert float(out["w"][0, 0]) == pytest.approx(4.0)
    # topk_scope="global": trim over the whole vector (here one tensor: the same as per tensor)
    out = methods.merge(base, fts, methods.TiesMerge(density=0.5, topk_scope="global"))
    np.testing.assert_allclose(np.asarray(out["w"]), 1 + TIES_05, rtol=1e-6)
    taus = [{"w": jnp.asarray(t), "b": jnp.asarray([1.0, 2.0]), "n": jnp.int32(i)} for i, t in enumerate((T1, T2, T3))]
    m = ties(taus, 0.5, exclude="b")
    np.testing.assert_allclose(np.asarray(m["w"]), TIES_05, rtol=1e-6)
    assert np.asarray(m["b"]).tolist() == [0.0, 0.0]  # unselected leaves are zero in the merged task vector
    assert int(m["n"]) == 0  # passengers from the first vector
    assert np.asarray(ties(taus, 0.5)["b"]).tolist() == [0.0, 2.0]
    np.testing.assert_allclose(np.asarray(ties(taus, 0.5, scope="global", filter="w")["w"]), TIES_05, rtol=1e-6)
    with pytest.raises(ValueError, match="^ties needs at least one task vector$"):
        ties([])
    with pytest.raises(ValueError, match="got 3 task vectors but 2 coefficients"):
        ties(taus, coefficients=[1.0, 1.0])
    spec = methods.TiesMerge(scale=2)
    assert isinstance(spec.scale, float) and spec.scale == 2.0


# RAM hand example: "changed" = |tau| > 1e-5; unique changes kept, shared ones averaged (test_sparsify.py)
R1 = np.asarray([1, 0, 2, -1, 0, 3, 7, 8], np.float32)
R2 = np.asarray([0, 4, -2, 1e-7, 5, 1, 0, 0], np.float32)


def test_ram_through_merge():
    base = {"a": jnp.zeros(4), "b": jnp.zeros(4)}
    fts = [{"a": jnp.asarray(t[:4]), "b": jnp.asarray(t[4:])} for t in (R1, R2)]
    cat = lambda o: np.concatenate([np.asarray(o["a"]), np.asarray(o["b"])])  # noqa: E731
    np.testing.assert_allclose(cat(methods.merge(base, fts, methods.RamMerge())), [1, 4, 0, -1, 5, 2, 7, 8], rtol=1e-6)
    plus = [1.1, 4.8, 0, -1.1, 6, 2, 7.7, 8.8]  # factors 1.1 (rho 2/4) and 1.2 (rho 2/2)
    np.testing.assert_allclose(cat(methods.merge(base, fts, methods.RamPlusMerge())), plus, rtol=1e-6)
    # per tensor: "a": v1 changed 3 (1 shared) -> 1 + 0.2 * 1/2; v2 changed 2 (1 shared) -> 1 + 0.2 * 1/1
    #             "b": v1 changed 3 (1 shared) -> 1.1; v2 changed 2 (1 shared) -> 1.2 (same ratios here)
    out = methods.merge(base, fts, methods.RamPlusMerge(count_scope="tensor"))
    np.testing.assert_allclose(cat(out), plus, rtol=1e-6)
    # coefficients scale each vector after the masks: 2 * v1, 0.5 * v2
    out = methods.merge(base, fts, methods.RamMerge(coefficients=(2.0, 0.5)))
    np.testing.assert_allclose(cat(out), [2, 2, (4 - 1) / 2, -2, 2.5, (6 + 0.5) / 2, 14, 16], rtol=1e-6)
    # a higher threshold: |x| <= 1 counts as unchanged
    out = methods.merge(base, fts, methods.RamMerge(threshold=1.0))
    np.testing.assert_allclose(cat(out), [0, 4, 0, 0, 5, 3, 7, 8], rtol=1e-6)
    # per tensor with different ratios: only "a" shares an entry for v2 in this variant
    fts2 = [{"a": jnp.asarray([1.0, 1.0, 0.0, 0.0]), "b": jnp.asarray([1.0, 1.0, 1.0, 0.0])},
            {"a": jnp.asarray([1.0, 0.0, 1.0, 0.0]), "b": jnp.asarray([0.0, 0.0, 0.0, 1.0])}]
    out = methods.merge(base, fts2, methods.RamPlusMerge(count_scope="tensor", rescale_factor=2.0))
    # "a": v1 changed 2, shared 1 -> rho 1 -> 2; v2 changed 2, shared 1 -> 2; "b": no sharing -> factor 1
    np.testing.assert_allclose(cat(out), [1, 2, 2, 0, 1, 1, 1, 1], rtol=1e-6)
    out = methods.merge(base, fts2, methods.RamPlusMerge(rescale_factor=2.0))
    # global: v1 changed 5, shared 1 -> rho 1/4 -> 1.25; v2 changed 3, shared 1 -> rho 1/2 -> 1.5
    np.testing.assert_allclose(cat(out), [1, 1.25, 1.5, 0, 1.25, 1.25, 1.25, 1.5], rtol=1e-6)


def test_ram_pytree_function_and_rescales():
    a = [{"a": jnp.asarray(t[:4]), "b": jnp.asarray(t[4:]), "n": jnp.int32(i)} for i, t in enumerate((R1, R2))]
    out = ram(a, rescale_factor=1.2, exclude="a")  # counts over "b" only: v1 3 changed 1 shared, v2 2 / 1
    np.testing.assert_allclose(np.asarray(out["b"]), [6, 2, 7.7, 8.8], rtol=1e-6)
    assert np.asarray(out["a"]).tolist() == [0.0] * 4 and int(out["n"]) == 0
    # global counts differ from per-tensor ones here (see test_ram_through_merge)
    fts2 = [{"a": jnp.asarray([1.0, 1.0, 0.0, 0.0]), "b": jnp.asarray([1.0, 1.0, 1.0, 0.0])},
            {"a": jnp.asarray([1.0, 0.0, 1.0, 0.0]), "b": jnp.asarray([0.0, 0.0, 0.0, 1.0])}]
    out = ram(fts2, rescale_factor=2.0)
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), [1, 1.25, 1.5, 0, 1.25, 1.25, 1.25, 1.5])
    out = ram(fts2, rescale_factor=2.0, scope="tensor")
    np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), [1, 2, 2, 0, 1, 1, 1, 1])
    out = ram(a, rescale_factor=1.2, scope="tensor", coefficients=[1.0, 2.0])
    np.testing.assert_allclose(np.asarray(out["b"]), [10 * 1.2, (3 + 2) / 2, 7 * 1.1, 8 * 1.1], rtol=1e-6)
    # per-tensor counts under jit (summed on device)
    import jax

    jitted = jax.jit(lambda t: ram(t, rescale_factor=1.2, scope="tensor", coefficients=[1.0, 2.0]))(a)
    np.testing.assert_allclose(np.asarray(jitted["b"]), [10 * 1.2, (3 + 2) / 2, 7 * 1.1, 8 * 1.1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted["a"]), [1.1, 8 * 1.2, (2 - 4) / 2, -1.1], rtol=1e-6)
    with pytest.raises(ValueError, match="^ram needs at least one task vector$"):
        ram([])
    with pytest.raises(ValueError, match=r"scope must be one of \('tensor', 'global'\), got 'row'"):
        ram(a, scope="row")
    with pytest.raises(ValueError, match="got 2 task vectors but 3 coefficients"):
        ram(a, coefficients=[1.0, 1.0, 1.0])
    # 1 + (r - 1) * min(1, shared / unique); unique 0: rho = inf if shared else 0; r <= 1 is plain RAM
    np.testing.assert_allclose(ram_rescales([6, 4, 3, 0, 5], [2, 2, 3, 0, 0], 1.5), [1.25, 1.5, 1.5, 1.0, 1.0])
    np.testing.assert_allclose(ram_rescales([6, 1, 1], [5, 0, 1], 1.2), [1.2, 1.0, 1.2])
    r = ram_rescales([4], [1], 1.3)  # host path in float64: exactly 1 + 0.3 * (1/3), not a float32 ratio
    assert r.dtype == np.float64 and r.tolist() == [1.0 + (1.3 - 1.0) * (1 / 3)]
    np.testing.assert_allclose(ram_rescales([6, 4], [2, 2], 0.5), [1.0, 1.0])
    np.testing.assert_allclose(np.asarray(ram_rescales(jnp.asarray([6.0, 3.0]), jnp.asarray([2.0, 3.0]), 2.0, xp=jnp)),
                               [1.5, 2.0])
    spec = methods.RamMerge(rescale_factor=2)
    assert isinstance(spec.rescale_factor, float)
    with pytest.raises(ValueError, match="threshold must be >= 0, got -1"):
        methods.RamMerge(threshold=-1)
    methods.RamMerge(threshold=0)
    with pytest.raises(ValueError, match=r"count_scope must be one of \('tensor', 'global'\), got 'row'"):
        methods.RamMerge(count_scope="row")


BAD_SETTINGS = [  # (settings, the words the error must contain)
    (lambda: methods.DotsMerge(density=0), r"density must be in \(0, 1\], got 0"),
    (lambda: methods.DotsMerge(topk_scope="row"), r"topk_scope must be one of \('tensor', 'global'\), got 'row'"),
    (lambda: methods.DotsMerge(tie_break="x"), r"tie_break must be one of \('index', 'keep_all'\), got 'x'"),
    (lambda: methods.DotsMerge(norm="l3"), "norm must be one of"),
    (lambda: methods.DotsMerge(rescale_scope="row"), "scope must be one of"),
    (lambda: methods.DotsMerge(rescale=False, norm="l2"), "dots with rescale=False: norm has no effect here"),
    (lambda: methods.DotsMerge(rescale=False, norm="l2", rescale_scope="global"),
     "dots with rescale=False: norm, rescale_scope have no effect here"),
    (lambda: methods.DareMerge(density=1.5), r"density must be in \(0, 1\], got 1.5"),
    (lambda: methods.DareMerge(rescale="l2"), r"rescale must be one of \('inverse', 'norm'\), got 'l2'"),
    (lambda: methods.DareMerge(rescale="norm", norm="l3"), "norm must be one of"),
    (lambda: methods.DareMerge(rescale_scope="tensor"), "dare with rescale='inverse': rescale_scope has no effect here"),
    (lambda: methods.TiesMerge(density=0), r"density must be in \(0, 1\], got 0"),
    (lambda: methods.TiesMerge(topk_scope="row"), "topk_scope must be one of"),
    (lambda: methods.TiesMerge(tie_break="x"), "tie_break must be one of"),
]


def test_settings_checks_and_messages():
    for make, words in BAD_SETTINGS:
        with pytest.raises(ValueError, match=words):
            make()
    methods.DotsMerge(rescale=False)
    with pytest.raises(ValueError, match=r"coefficients must be a sequence of numbers, got 3"):
        methods.TaskArithmeticMerge(coefficients=3)
    spec = methods.TaskArithmeticMerge(coefficients=[1, 2])
    assert spec.coefficients == (1.0, 2.0) and all(isinstance(c, float) for c in spec.coefficients)
    assert spec.resolved_coefficients(2) == (1.0, 2.0)
    assert methods.TaskArithmeticMerge().resolved_coefficients(3) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"got 3 models but 2 coefficients"):
        spec.resolved_coefficients(3)
    with pytest.raises(ValueError, match=r"color must be one of \('red', 'blue'\), got 'green'"):
        check_choice("color", "green", iter(["red", "blue"]))
    check_choice("color", "red", iter(["red", "blue"]))
    refuse_unused("m", a=None)
    with pytest.raises(ValueError, match="^m: b has no effect here$"):
        refuse_unused("m", a=None, b=0)


def test_describe_and_sparsifier_hooks():
    pred = lambda p: True  # noqa: E731
    d = methods.DotsMerge(coefficients=(1, 2), filter=pred, exclude="lm_head").describe()
    assert d["method"] == "dots" and d["density"] == 0.3 and d["coefficients"] == (1.0, 2.0)
    assert d["filter"] == repr(pred) and d["exclude"] == "lm_head" and d["rescale"] is True
    assert methods.TaskArithmeticMerge().describe() == {"method": "task_arithmetic", "coefficients": None,
                                                        "filter": None, "exclude": None}
    assert methods.TaskArithmeticMerge().sparsifier(0) is None
    assert methods.TaskArithmeticMerge().statistics(["w"], lambda n: [], 1, lambda it, d, t: it) is None
    s = methods.DotsMerge(density=0.4, norm="l1", rescale_scope="tensor", topk_scope="global",
                          tie_break="keep_all").sparsifier(0)
    assert (s.density, s.scope, s.rescale.norm, s.rescale.scope, s.tie_break) == (0.4, "global", "l1", "tensor",
                                                                                  "keep_all")
    s = methods.DotsMerge().sparsifier(1)
    assert (s.scope, s.rescale.norm, s.rescale.scope, s.tie_break) == ("tensor", "l2", "global", "index")
    assert methods.DotsMerge(rescale=False).sparsifier(0).rescale is None
    s = methods.DareMerge(density=0.2, seed=7).sparsifier(2)
    assert (s.drop_rate, s.seed, s.rescale) == (pytest.approx(0.8), 9, "inverse")
    s = methods.DareMerge(rescale="norm").sparsifier(0)
    assert (s.rescale.norm, s.rescale.scope) == ("l2", "global")
    s = methods.BreadcrumbsMerge(density=0.3, top_remove=0.05, axis="tensor").sparsifier(0)
    assert (s.density, s.top_remove, s.axis, s.rescale) == (0.3, 0.05, "tensor", None)
    s = methods.TiesMerge(density=0.4, topk_scope="global", tie_break="keep_all").sparsifier(1)
    assert (s.density, s.scope, s.rescale, s.tie_break) == (0.4, "global", None, "keep_all")
    with pytest.raises(NotImplementedError):
        MergeMethod().merge_leaf(jnp.zeros(1), (), None, jnp.ones(1))


def test_registry_and_method_settings():
    with pytest.raises(TypeError, match="register needs a MergeMethod subclass with a `name`, got 3"):
        methods.register(3)
    with pytest.raises(TypeError, match="register needs a MergeMethod subclass"):
        methods.register(MergeMethod)  # no name
    with pytest.raises(TypeError, match="register needs a MergeMethod subclass"):
        methods.register(dict)
    assert methods.DEFAULT_DENSITY == {"dots": 0.3, "ties": 0.2, "dare": 0.1, "breadcrumbs": 0.1}
    spec = method_settings("dots", density=0.5, norm=None, coefficients=[1, 2])  # None means default
    assert spec == methods.DotsMerge(density=0.5, coefficients=(1.0, 2.0)) and spec.norm is None
    assert isinstance(method_settings("task_arithmetic", coefficients=[1.0]).coefficients, tuple)
    with pytest.raises(ValueError, match=r"density has no effect with method 'ram': .* its settings are "
                                         r"coefficients, count_scope, exclude, filter, rescale_factor, threshold"):
        method_settings("ram", density=0.3)
    assert REGISTRY["ram_plus"] is methods.RamPlusMerge


def test_engine_dtypes_and_input_checks():
    assert tau_dtype(jnp.bfloat16, [jnp.bfloat16]) == jnp.float32
    assert tau_dtype(jnp.bfloat16, []) == jnp.float32
    import jax

    with jax.enable_x64(True):
        assert tau_dtype(jnp.float32, [jnp.float64, jnp.bfloat16]) == jnp.float64
        assert tau_dtype(jnp.float64, [jnp.float32]) == jnp.float64
    # bf16 base, float32 fine-tuned: the task vector is taken in float32, the result is written in bf16
    base = {"w": jnp.asarray([1.0, 1.0], jnp.bfloat16)}
    ft = {"w": jnp.asarray([1.0 + 2.0**-9, 1.5], jnp.float32)}
    out = methods.merge(base, [ft, ft], methods.TaskArithmeticMerge())
    assert out["w"].dtype == jnp.bfloat16
    # 1 + 2 * 2^-9 = 1 + 2^-8 (a bf16 tie, rounds to even: 1.0); 1 + 2 * 0.5 = 2
    assert np.asarray(out["w"], np.float32).tolist() == [1.0, 2.0]
    out = methods.merge(base, [ft, ft, ft], methods.TaskArithmeticMerge())  # 1 + 3 * 2^-9 -> 1 + 2^-7
    assert np.asarray(out["w"], np.float32).tolist() == [1.0078125, 2.5]
    with pytest.raises(ValueError, match="^merge needs at least one fine-tuned model$"):
        methods.merge(base, [], methods.TaskArithmeticMerge())
    with pytest.raises(TypeError, match=r"spec must be a merge method's settings .*got 'dots'"):
        methods.merge(base, [ft], "dots")
    bad = {"w": jnp.asarray([1.0, jnp.nan])}
    with pytest.raises(NonFiniteError, match=r"finetuned\[1\]"):
        methods.merge(base, [ft, bad], methods.TaskArithmeticMerge())
    with pytest.raises(NonFiniteError, match=r"^tensor 'w' of base holds 1 Inf of 2 entries"):
        methods.merge({"w": jnp.asarray([jnp.inf, 0.0])}, [ft], methods.TaskArithmeticMerge())
    # float64 inputs without x64 are refused up front, naming the tensor and the input
    with pytest.raises(ValueError, match=r"^tensor 'w' of finetuned\[0\] is float64, but JAX runs in 32-bit mode"):
        methods.merge({"w": np.ones(2, np.float32)}, [{"w": np.ones(2, np.float64)}], methods.TaskArithmeticMerge())
    out = methods.merge(base, [bad], methods.TaskArithmeticMerge(), allow_nonfinite=True)
    assert np.isnan(np.asarray(out["w"], np.float32)[1])
    # unselected tensors keep the base (and are still checked for NaN/Inf)
    two = {"a": jnp.asarray([1.0]), "b": jnp.asarray([2.0])}
    ft2 = {"a": jnp.asarray([5.0]), "b": jnp.asarray([7.0])}
    # a passenger that is not an array (a Python int, a function) rides along from the base
    out = methods.merge({**two, "n": 3, "f": len}, [{**ft2, "n": 4, "f": len}], methods.TaskArithmeticMerge())
    assert out["n"] == 3 and out["f"] is len and float(out["b"][0]) == 7.0
    out = methods.merge(two, [ft2], methods.TaskArithmeticMerge(exclude="b"))
    assert float(out["a"][0]) == 5.0 and float(out["b"][0]) == 2.0
    out = methods.merge(two, [ft2], methods.TaskArithmeticMerge(filter="b"))
    assert float(out["a"][0]) == 1.0 and float(out["b"][0]) == 7.0
    with pytest.raises(NonFiniteError, match="'b'"):
        methods.merge({"a": jnp.asarray([1.0]), "b": jnp.asarray([jnp.nan])}, [ft2],
                      methods.TaskArithmeticMerge(exclude="b"))


def test_ram_statistics_pass_reports_progress():
    from merging.methods.engine import merge_tensors

    calls = []

    def progress(it, desc, total):
        calls.append((desc, total))
        return it

    t = {"a": np.asarray([1.0, 0.0]), "b": np.asarray([0.0, 2.0])}
    out = dict(merge_tensors(["a", "b"], {"a": (2,), "b": (2,)}, lambda n: np.zeros(2, np.float32),
                             lambda i, n: t[n].astype(np.float32), 1, methods.RamMerge(), progress=progress))
    assert np.asarray(out["a"]).tolist() == [1.0, 0.0] and np.asarray(out["b"]).tolist() == [0.0, 2.0]
    assert calls == [("stats pass (RAM overlap counts)", 2), ("merging", 2)]
    # called directly: NaN/Inf checked by default, inputs named "base" / "models[i]" unless labels are given
    t["b"] = np.asarray([0.0, np.nan])
    args = (["a", "b"], {"a": (2,), "b": (2,)}, lambda n: np.zeros(2, np.float32), lambda i, n: t[n].astype(np.float32), 1,
            methods.TaskArithmeticMerge())
    with pytest.raises(NonFiniteError, match=r"^tensor 'b' of models\[0\] holds 1 NaN of 2 entries"):
        dict(merge_tensors(*args))
    with pytest.raises(NonFiniteError, match=r"^tensor 'b' of tuned holds 1 NaN"):
        dict(merge_tensors(*args, labels=["orig", "tuned"]))


# --- the jitted kernels (mutable only under scripts/mutation_prepare.py's jit unwrapping; docs/testing.md) ------------
def test_ram_counts_per_vector_and_row_by_hand():
    """|tau| > 0.1 (strict: an entry equal to the threshold is unchanged), counted per row of the last axis, for a
    2-D tensor and the same entries as a [2, 1, 3] tensor (rows = every axis but the last)."""
    from merging.methods.ram import ram_counts_leaf

    t1 = np.array([[0.5, 0.0, 0.2], [0.1, 0.0, 0.9]], np.float32)
    t2 = np.array([[0.4, 0.3, 0.0], [0.0, 0.0, -0.05]], np.float32)
    # changed: t1 rows [2, 1] (0.1 is not > 0.1), t2 rows [2, 0]; shared (changed by both): entry (0, 0) only
    for shape in [(2, 3), (2, 1, 3)]:
        changed, shared = ram_counts_leaf((jnp.asarray(t1.reshape(shape)), jnp.asarray(t2.reshape(shape))),
                                          jnp.asarray(0.1, jnp.float32))
        assert changed.dtype == jnp.int32 and shared.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(changed), [[2, 1], [2, 0]])
        np.testing.assert_array_equal(np.asarray(shared), [[1, 0], [1, 0]])


def test_ram_leaf_with_three_vectors_by_hand():
    """Entry changed by 2 of 3 vectors: the mean of those two w_i tau_i (the third adds nothing); by one: w tau r;
    by none: 0 (RAM, arXiv 2025, and the authors' arm code)."""
    from merging.methods.ram import ram_leaf

    taus = (np.array([1.0, 2.0, 0.0, 0.05], np.float32), np.array([3.0, 0.0, 0.0, 0.0], np.float32),
            np.array([0.0, 0.0, 0.0, 0.0], np.float32))
    out = ram_leaf(tuple(jnp.asarray(t) for t in taus), jnp.asarray([1.0, 1.0, 1.0], jnp.float32),
                   jnp.asarray([1.5, 1.0, 1.0], jnp.float32), jnp.asarray(0.1, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), [2.0, 3.0, 0.0, 0.0], rtol=1e-7)


def test_ties_leaf_counts_a_weighted_value_of_exactly_one():
    """TIES disjoint mean over the agreeing non-zero entries: values 1 and 3 (both +) -> 2; 1, -3, 0 -> elected -,
    mean of -3 alone."""
    from merging.methods.ties import ties_leaf

    trimmed = (jnp.asarray([1.0, 1.0], jnp.float32), jnp.asarray([3.0, -3.0], jnp.float32),
               jnp.asarray([0.0, 0.0], jnp.float32))
    out = ties_leaf(trimmed, jnp.asarray([1.0, 1.0, 1.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(out), [2.0, -3.0], rtol=1e-7)
