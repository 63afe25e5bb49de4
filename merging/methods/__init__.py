"""Merge methods, one module each, in a small registry (in the manner of mergekit's merge methods).

Each method is a frozen settings dataclass holding only the settings its rule uses, with its source paper and exact
rule in its module docstring (and in docs/merging.md):

    task_arithmetic  TaskArithmeticMerge  base + sum c_i tau_i
    dots             DotsMerge            base + sum c_i rescale(topk(tau_i))
    dare             DareMerge            base + sum c_i DARE(tau_i)
    breadcrumbs      BreadcrumbsMerge     base + sum c_i band(tau_i)
    ties             TiesMerge            base + scale * disjoint_mean(elect(topk(c_i tau_i)))
    ram / ram_plus   RamMerge / RamPlusMerge   base + RAM({c_i tau_i})

`merge(base, finetuned, settings)` merges pytrees in memory; `merging.stream.merge_checkpoints` merges HF
checkpoints on disk with the same engine (bit-identical). `method_settings("dots", density=0.3)` builds a method's
settings by name and refuses settings that method does not use.
A new method: subclass `MergeMethod` (or `SparsifyThenAdd`) in its own module and `register` it.

Imports nothing from jax_cat.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from merging.methods.base import MergeMethod, SparsifyThenAdd
from merging.methods.breadcrumbs import BreadcrumbsMerge
from merging.methods.dare import DareMerge
from merging.methods.dots import DotsMerge
from merging.methods.engine import merge, merge_tensors
from merging.methods.ram import RamMerge, RamPlusMerge
from merging.methods.task_arithmetic import TaskArithmeticMerge
from merging.methods.ties import TiesMerge

__all__ = [
    "METHODS", "REGISTRY", "DEFAULT_DENSITY", "register", "method_settings", "merge", "merge_tensors",
    "MergeMethod", "SparsifyThenAdd", "TaskArithmeticMerge", "DotsMerge", "DareMerge", "BreadcrumbsMerge",
    "TiesMerge", "RamMerge", "RamPlusMerge",
]

REGISTRY: dict[str, type[MergeMethod]] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Add a method's settings class to the registry under `cls.name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, MergeMethod)) or not cls.name:
        raise TypeError(f"register needs a MergeMethod subclass with a `name`, got {cls!r}")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (TaskArithmeticMerge, DotsMerge, TiesMerge, DareMerge, BreadcrumbsMerge, RamMerge, RamPlusMerge):
    register(_cls)

METHODS: tuple[str, ...] = tuple(REGISTRY)  # the built-in methods ("task_arithmetic", "dots", ...)
DEFAULT_DENSITY = {
    name: f.default for name, cls in REGISTRY.items() for f in dataclasses.fields(cls) if f.name == "density"
}
# Keywords of the old catch-all MergeSpec, removed in 0.1.0 (CHANGELOG.md): named in the refusal, never accepted.
_RENAMED = {"coeffs": "coefficients", "weights": "coefficients", "lam": "scale", "scope": "rescale_scope",
            "dare_rescale": "rescale", "ram_threshold": "threshold", "ram_rescale": "rescale_factor",
            "ram_scope": "count_scope"}


def method_settings(method: str, **settings: Any) -> MergeMethod:
    """The settings object of the registered method `method`, from keywords (None values mean "default").

    A setting the method does not use is a ValueError naming it (and, for the old MergeSpec keywords such as
    `coeffs` or `lam`, the setting's name now).
    """
    if method not in REGISTRY:
        raise ValueError(f"unknown merge method: method must be one of {tuple(REGISTRY)}, got {method!r}")
    cls = REGISTRY[method]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if key not in fields:
            renamed = _RENAMED.get(key)
            if renamed in fields:
                raise ValueError(f"{key} is now called {renamed} (method {method!r}; CHANGELOG.md, 0.1.0)")
            raise ValueError(
                f"{key} has no effect with method {method!r}: it does not use that setting; its settings are "
                f"{', '.join(sorted(fields))} (see docs/merging.md)"
            )
        kwargs[key] = tuple(value) if key == "coefficients" else value
    return cls(**kwargs)
