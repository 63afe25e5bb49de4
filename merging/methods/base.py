"""The settings every merge method shares, and the hooks the merge engine calls on each method.

A method is a frozen dataclass (one per module in `merging.methods`) that holds ONLY the settings its rule uses:
an unknown keyword is a TypeError at construction, and `merging.methods.method_settings` turns it into a clear
ValueError naming the setting. Every method takes `coefficients` (one per
fine-tuned model, default 1.0 each) and `filter` / `exclude` (regexes or predicates on tensor names; unselected
tensors keep the base value).

Imports nothing from jax_cat.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax

from merging._paths import PathSelector
from merging.sparsify import ProgressFn, Sparsifier
from merging.task_vectors import combine_leaf

__all__ = ["MergeMethod", "SparsifyThenAdd"]


@dataclass(frozen=True, kw_only=True)
class MergeMethod:
    """Base of the per-method settings: `coefficients` (one per fine-tuned model), `filter`, `exclude`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    rule: ClassVar[str] = ""

    coefficients: tuple[float, ...] | None = None
    filter: PathSelector = field(default=None, compare=False)
    exclude: PathSelector = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.coefficients is not None:
            try:
                coeffs = tuple(float(c) for c in self.coefficients)
            except TypeError:
                raise ValueError(f"coefficients must be a sequence of numbers, got {self.coefficients!r}") from None
            object.__setattr__(self, "coefficients", coeffs)

    def resolved_coefficients(self, n_models: int) -> tuple[float, ...]:
        """One coefficient per model (default 1.0 each); ValueError naming both counts when they differ."""
        coeffs = self.coefficients if self.coefficients is not None else (1.0,) * n_models
        if len(coeffs) != n_models:
            raise ValueError(
                f"got {n_models} models but {len(coeffs)} coefficients; give one coefficient per "
                f"fine-tuned model"
            )
        return coeffs

    # --- hooks the engine calls ---------------------------------------------------------------------------------
    @property
    def blockable(self) -> bool:
        """Whether `merge_leaf` (with `statistics`) may be applied to row blocks of a tensor: true for rules that
        are elementwise given the sparsified vectors (conservative default: False for methods defined elsewhere)."""
        return False

    def sparsifier(self, i: int) -> Sparsifier | None:
        """The sparsifier applied to model i's task vector before `merge_leaf` (None: the raw task vector)."""
        return None

    def statistics(
        self, names: Sequence[str], taus: Callable[[str], list[Any]], n_models: int, progress: ProgressFn
    ) -> Any:
        """Whole-model statistics the rule needs beyond the sparsifiers' (computed in a pass before merging)."""
        return None

    def merge_leaf(self, base: jax.Array, taus: tuple[jax.Array, ...], stats: Any, coeffs: jax.Array) -> jax.Array:
        """The merged tensor from the base tensor and the (sparsified) task vectors of every model."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the recipe (written next to merged checkpoints as merge_info.json)."""
        out: dict[str, Any] = {"method": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("filter", "exclude") and not isinstance(value, (str, type(None))):
                value = repr(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class SparsifyThenAdd(MergeMethod):
    """Methods of the form base + sum_i c_i S_i(tau_i) (DoTS, DARE, breadcrumbs; task arithmetic with S = id)."""

    @property
    def blockable(self) -> bool:
        return True

    def merge_leaf(self, base: jax.Array, taus: tuple[jax.Array, ...], stats: Any, coeffs: jax.Array) -> jax.Array:
        return combine_leaf(base, taus, coeffs)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """ValueError naming the setting and its allowed values."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def refuse_unused(method: str, **unused: Any) -> None:
    """ValueError for settings given (not None) that this configuration of `method` does not use."""
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise ValueError(f"{method}: {', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect here")
