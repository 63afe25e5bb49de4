"""Model Breadcrumbs (Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks", ECCV).

Rule: merged = base + sum_i c_i band(tau_i); along each row of the last axis (`axis="last"`, the authors' code) or
over the whole tensor, drop the floor(top_remove * m) largest |x|, keep the next floor(density * m), zero the rest.
No rescale. Ranks come from a stable sort, so ties are taken in index order and exactly that many are kept.
"""
from __future__ import annotations

from dataclasses import dataclass

from merging.methods.base import SparsifyThenAdd
from merging.sparsify import Breadcrumbs as BreadcrumbsSparsifier
from merging.sparsify import Sparsifier

__all__ = ["BreadcrumbsMerge"]


@dataclass(frozen=True, kw_only=True)
class BreadcrumbsMerge(SparsifyThenAdd):
    """base + sum_i c_i band_{top_remove, density}(tau_i)."""

    name = "breadcrumbs"
    paper = "Davari & Belilovsky 2024, Model Breadcrumbs (ECCV)"
    rule = "base + sum_i c_i band(tau_i): drop top `top_remove`, keep next `density` per row"

    density: float = 0.1
    top_remove: float = 0.01
    axis: str = "last"

    def __post_init__(self) -> None:
        super().__post_init__()
        BreadcrumbsSparsifier(self.density, self.top_remove, self.axis)  # validates all three

    def sparsifier(self, i: int) -> Sparsifier:
        return BreadcrumbsSparsifier(self.density, self.top_remove, self.axis)
