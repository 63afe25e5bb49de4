"""The merge-method registry: one settings class per method that refuses settings it does not use, one coefficient
vocabulary (the old MergeSpec keywords are refused, naming the setting), and room for a new method."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import merging
from merging import methods, sparsify as sp, task_vectors as tv
from merging.methods import REGISTRY, method_settings
from merging.methods.base import SparsifyThenAdd


def test_registry_one_module_per_method_with_paper_and_rule():
    assert tuple(REGISTRY) == merging.METHODS == (
        "task_arithmetic", "dots", "ties", "dare", "breadcrumbs", "ram", "ram_plus")
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.paper and cls.rule, name
        assert cls.__module__ == f"merging.methods.{name.replace('_plus', '')}"
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize(
    "method, setting",
    [("task_arithmetic", {"density": 0.3}), ("dots", {"lam": 0.5}), ("ties", {"scope": "global"}),
     ("ram", {"density": 0.2}), ("breadcrumbs", {"seed": 1}), ("dare", {"topk_scope": "global"}),
     ("ram_plus", {"norm": "l2"})],
)
def test_settings_a_method_does_not_use_are_refused(method, setting):
    (key,) = setting
    with pytest.raises(ValueError, match=rf"{key} has no effect with method '{method}': it does not use that setting"):
        method_settings(method, **setting)
    with pytest.raises(TypeError, match="unexpected keyword"):
        REGISTRY[method](**setting)


def test_settings_unused_in_this_configuration_are_refused():
    with pytest.raises(ValueError, match="dare with rescale='inverse': norm has no effect"):
        methods.DareMerge(norm="l1")
    with pytest.raises(ValueError, match="dots with rescale=False: rescale_scope has no effect"):
        methods.DotsMerge(rescale=False, rescale_scope="tensor")
    with pytest.raises(ValueError, match=r"unknown merge method: method must be one of .*, got 'dotz'"):
        method_settings("dotz")
    with pytest.raises(TypeError):
        methods.DotsMerge(0.3)  # keyword-only: no positional guessing


@pytest.mark.parametrize("method, old, value, new", [
    ("ties", "coeffs", (1, 2), "coefficients"), ("dots", "weights", (1,), "coefficients"), ("ties", "lam", 0.9, "scale"),
    ("dots", "scope", "tensor", "rescale_scope"), ("dare", "scope", "tensor", "rescale_scope"),
    ("dare", "dare_rescale", "norm", "rescale"), ("ram_plus", "ram_threshold", 1e-3, "threshold"),
    ("ram_plus", "ram_rescale", 1.5, "rescale_factor"), ("ram", "ram_scope", "tensor", "count_scope"),
])
def test_the_old_mergespec_keywords_are_refused_naming_the_setting(method, old, value, new):
    """Removed in 0.1.0 (CHANGELOG.md): one line naming the setting's name now; the new name gives the merge."""
    with pytest.raises(ValueError, match=rf"^{old} is now called {new} \(method '{method}'; CHANGELOG.md, 0.1.0\)$"):
        method_settings(method, **{old: value})
    extra = {"rescale": "norm"} if (method, new) == ("dare", "rescale_scope") else {}  # applies with norm only
    assert method_settings(method, **{new: value}, **extra) == REGISTRY[method](
        **{new: tuple(float(v) for v in value) if new == "coefficients" else value}, **extra)


def test_the_compatibility_names_are_gone():
    assert not hasattr(methods, "MergeSpec") and not hasattr(merging, "MergeSpec")
    spec = methods.TiesMerge(coefficients=(0.5, 0.5), scale=0.9)
    assert not any(hasattr(spec, old) for old in ("method", "coeffs", "lam", "aliases"))
    for moved in ("ties", "ties_leaf", "ram", "ram_leaf", "ram_counts_leaf", "ram_rescales"):
        assert not hasattr(sp, moved), moved  # merging.sparsify.__getattr__ forwarded these to merging.methods
    taus = [{"w": jnp.asarray([1.0, -2.0, 3.0, 0.5])}]
    for f in (merging.ties, merging.ram):
        with pytest.raises(TypeError, match="weights"):
            f(taus, weights=[1.0])


def test_one_coefficient_vocabulary():
    spec = method_settings("ties", coefficients=(0.5, 0.5), scale=0.9)
    assert spec.describe()["method"] == "ties" and spec.describe()["scale"] == 0.9
    assert methods.RamPlusMerge().rescale_factor == 1.2 and methods.RamMerge().rescale_factor == 1.0
    with pytest.raises(ValueError, match=r"got 2 models but 1 coefficients; give one coefficient per"):
        methods.DotsMerge(coefficients=(1.0,)).resolved_coefficients(2)
    taus = [{"w": jnp.asarray([1.0, -2.0, 3.0, 0.5])}, {"w": jnp.asarray([-1.0, 2.5, 1.0, 0.0])}]
    base = {"w": jnp.zeros(4)}
    np.testing.assert_array_equal(tv.combine(base, taus, coefficients=[0.5, 2.0])["w"],
                                  tv.combine(base, taus, [0.5, 2.0])["w"])


def test_a_new_method_registers_and_runs_on_both_paths(tmp_path):
    """Room for more: a method is a settings dataclass with a rule, registered under its name."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Mean(SparsifyThenAdd):
        name = "mean_of_models"
        paper = "(test)"
        rule = "base + mean_i tau_i"

        def merge_leaf(self, base, taus, stats, coeffs):
            return tv.combine_leaf(base, taus, jnp.full((len(taus),), 1.0 / len(taus), jnp.float32))

    methods.register(Mean)
    try:
        base = {"w": jnp.zeros(3)}
        fts = [{"w": jnp.asarray([1.0, 2.0, 3.0])}, {"w": jnp.asarray([3.0, 2.0, 1.0])}]
        np.testing.assert_array_equal(methods.merge(base, fts, method_settings("mean_of_models"))["w"], [2.0, 2.0, 2.0])
        from safetensors.numpy import save_file

        from merging.stream import merge_checkpoints
        from tests.merging.conftest import load_state

        dirs = []
        for name, tree in (("b", base), ("f0", fts[0]), ("f1", fts[1])):
            (tmp_path / name).mkdir()
            save_file({"w": np.asarray(tree["w"], np.float32)}, str(tmp_path / name / "model.safetensors"))
            dirs.append(tmp_path / name)
        out = merge_checkpoints(dirs[0], dirs[1:], Mean(), tmp_path / "out", progress=False)
        np.testing.assert_array_equal(load_state(out)["w"], [2.0, 2.0, 2.0])
    finally:
        del REGISTRY["mean_of_models"]


def test_dots_rescale_off_is_plain_topk():
    tau = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32)}
    np.testing.assert_array_equal(sp.dots_sparsify(tau, 0.3, rescale=False)["w"], sp.topk(tau, 0.3)["w"])
    base = {"w": jnp.zeros((8, 8))}
    merged = methods.merge(base, [tau], methods.DotsMerge(rescale=False, coefficients=(1.0,)))
    np.testing.assert_array_equal(merged["w"], sp.topk(tau, 0.3)["w"])
