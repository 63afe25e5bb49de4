"""DoTS merge (Yuan et al. 2026, "Decouple before Integration": sparsify each task vector, then add).

Rule: merged = base + sum_i c_i S(tau_i); S keeps the top `density` entries of tau_i by |x| per tensor
(`topk_scope="tensor"`, the authors' code) or over the whole vector ("global"), then (`rescale=True`) multiplies
the kept entries by ONE factor per task vector (`rescale_scope="global"`, or one per tensor) so the chosen `norm`
of the sparse vector equals the dense one's. The authors' shipped configs turn the rescale off.
Top-k keeps exactly k entries (ties at the threshold in index order) unless `tie_break="keep_all"`, the authors'
`keep_top_k_abs` (every entry tied with the k-th largest |x|).
"""
from __future__ import annotations

from dataclasses import dataclass

from merging.methods.base import SparsifyThenAdd, check_choice, refuse_unused
from merging.sparsify import Rescale, Sparsifier, TopK, _check_fraction

__all__ = ["DotsMerge"]


@dataclass(frozen=True, kw_only=True)
class DotsMerge(SparsifyThenAdd):
    """base + sum_i c_i S(tau_i), S = top-`density` (exactly k) + norm-preserving rescale (one global L2 factor)."""

    name = "dots"
    paper = "Yuan et al. 2026, Decouple before Integration (DoTS)"
    rule = "base + sum_i c_i rescale(topk_density(tau_i))"

    density: float = 0.3
    topk_scope: str = "tensor"
    tie_break: str = "index"
    rescale: bool = True
    norm: str | None = None  # default "l2" when rescale
    rescale_scope: str | None = None  # default "global" when rescale

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("density", self.density)
        check_choice("topk_scope", self.topk_scope, ("tensor", "global"))
        check_choice("tie_break", self.tie_break, ("index", "keep_all"))
        if self.rescale:
            Rescale(self.norm or "l2", self.rescale_scope or "global")  # validates both
        else:
            refuse_unused("dots with rescale=False", norm=self.norm, rescale_scope=self.rescale_scope)

    def sparsifier(self, i: int) -> Sparsifier:
        rescale = Rescale(self.norm or "l2", self.rescale_scope or "global") if self.rescale else None
        return TopK(self.density, self.topk_scope, rescale, self.tie_break)
