"""The public API speaks the glossary (docs/glossary.md): walk every jax_cat package's `__all__`.

An old spelling may stay in a signature only as an alias next to its glossary name; each glossary concept has one
home, re-exported (the same object) wherever it is public.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["jax_cat.cli", "jax_cat.data", "jax_cat.evaluate", "jax_cat.losses", "jax_cat.models", "jax_cat.rewards",
            "jax_cat.sampling", "jax_cat.sharding"]

# old spelling -> the glossary name that must sit beside it in the same signature
ALIASES = {
    "pad_id": "pad_token_id",
    "sample_lps": "sample_logprobs",
    "eos_token_id": "eos_token_ids",
}
# old spellings removed in 0.1.0 (CHANGELOG.md): no public signature takes them any more
REMOVED = {"prompt_mask", "row_prompt", "inactive", "arithmetic_seed"}
# HF file formats keep HF's field names (config.json's eos_token_id); these mirror them on purpose.
HF_MIRRORS = {"ModelConfig"}


def _public_objects():
    for name in PACKAGES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:  # a module without __all__: its public functions and classes defined there
            exported = [a for a, v in vars(module).items() if not a.startswith("_") and
                        (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == name]
        for attr in exported:
            yield name, attr, getattr(module, attr)


def _parameters(obj) -> list[str]:
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj)]
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        return list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return []


def test_every_exported_name_exists():
    for module, attr, obj in _public_objects():
        assert obj is not None, f"{module}.{attr}"


def test_signatures_use_glossary_names():
    offenders = []
    for module, attr, obj in _public_objects():
        if not callable(obj) or attr in HF_MIRRORS:
            continue
        params = _parameters(obj)
        for old, new in ALIASES.items():
            if old in params and new not in params:
                offenders.append(f"{module}.{attr}({old}=...) without {new}=")
    assert not offenders, offenders


def test_removed_aliases_stay_removed():
    offenders = [f"{module}.{attr}({old}=...)" for module, attr, obj in _public_objects() if callable(obj)
                 for old in REMOVED & set(_parameters(obj))]
    assert not offenders, offenders


def test_each_concept_has_one_home():
    import jax_cat.data as data
    import jax_cat.data.padding as padding
    import jax_cat.data.pipeline as pipeline
    import jax_cat.evaluate as evaluate
    import jax_cat.models as models
    import jax_cat.rewards as rewards
    import jax_cat.sampling as sampling
    import jax_cat.sampling.decode as decode
    import jax_cat.sampling.engine as engine
    import jax_cat.sampling.prefill as prefill

    for name in ("left_pad", "resolve_pad_token_id", "resolve_eos_token_ids"):
        homes = {id(getattr(m, name)) for m in (data, padding, sampling, engine)}
        assert homes == {id(getattr(padding, name))}, name
    assert data.pad_token_id is pipeline.pad_token_id is padding.pad_token_id
    assert data.left_pad is pipeline.left_pad
    assert evaluate.answer_key is rewards.answer_key
    assert prefill.positions_from_mask is models.positions_from_mask  # the sampler has no copy of its own
    for module in (engine, prefill, decode):  # the positions of the prompt and the decode steps
        assert "cumsum" not in inspect.getsource(module), module.__name__


def test_sampler_outputs_are_the_losses_inputs():
    """The names the sampler produces are the names the losses take."""
    from jax_cat.losses import cat_rl_loss, dynamic_consensus_threshold, group_advantages
    from jax_cat.rewards import answer_ids
    from jax_cat.sampling import SampleOutput, sample_tokens

    fields = {f.name for f in dataclasses.fields(SampleOutput)}
    assert {"tokens", "logprobs", "sample_logprobs", "lengths", "group_ids", "sample_mask"} <= fields
    assert isinstance(SampleOutput.mask, property)
    rl = inspect.signature(cat_rl_loss).parameters
    assert {"logprobs", "group_ids", "mask", "answer_ids"} <= set(rl)
    assert {"group_ids", "sample_mask"} <= set(inspect.signature(group_advantages).parameters)
    assert list(inspect.signature(dynamic_consensus_threshold).parameters)[:3] == ["answer_ids", "correct", "group_ids"]
    assert list(inspect.signature(answer_ids).parameters) == ["answers", "group_ids"]
    params = inspect.signature(sample_tokens).parameters
    assert list(params)[:3] == ["model", "prompt_ids", "attention_mask"]
    assert {"key", "row_keys", "sampling_params", "group_ids", "sample_mask"} <= set(params)


@pytest.mark.parametrize("func", ["jax_cat.sampling.generate", "jax_cat.sampling.sample_tokens",
                                  "jax_cat.evaluate.evaluate"])
def test_sampling_params_accepted(func):
    module, name = func.rsplit(".", 1)
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    assert {"sampling_params", "temperature", "top_p", "top_k"} <= set(params)


def test_glossary_documents_the_exported_names():
    text = (ROOT / "docs" / "glossary.md").read_text()
    documented = {word for code in re.findall(r"`([^`]+)`", text) for word in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", code)}
    for name in ("attention_mask", "mask", "sample_mask", "group_ids", "answer_ids", "pad_token_id", "eos_token_ids",
                 "seed", "key", "data_seed", "sample_logprobs", "SamplingParams", "left_pad", "resolve_pad_token_id",
                 "resolve_eos_token_ids", "positions_from_mask", "JAX_CAT_CACHE", "param_dtype", "dtype"):
        assert name in documented, name
    for old, new in ALIASES.items():
        if old not in ("sample_lps", "eos_token_id"):
            assert old in documented and new in documented, old


def test_pyproject_installs_only_what_exists():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools_cfg = project["tool"]["setuptools"]
    include = setuptools_cfg["packages"]["find"]["include"]
    assert not any(p.startswith("configs") for p in include)  # recipes are read by path, not installed
    assert not (ROOT / "configs" / "__init__.py").exists()
    for package, globs in setuptools_cfg.get("package-data", {}).items():
        for pattern in globs:
            assert list((ROOT / package.replace(".", "/")).glob(pattern)), f"package-data {package}: {pattern}"
