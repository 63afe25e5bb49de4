"""DARE (Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous Models", ICML).

Rule: merged = base + sum_i c_i DARE(tau_i): each entry of tau_i is dropped with probability p = 1 - density
(a Bernoulli mask seeded per tensor by crc32 of its name, seed `seed + i` for model i), survivors multiplied by
1/(1-p) (`rescale="inverse"`, the paper) or rescaled to the dense vector's `norm` (`rescale="norm"`, one factor
per vector or per tensor: `rescale_scope`). Random selection: no top-k, no tie rule.
"""
from __future__ import annotations

from dataclasses import dataclass

from merging.methods.base import SparsifyThenAdd, check_choice, refuse_unused
from merging.sparsify import Dare as DareSparsifier
from merging.sparsify import Rescale, Sparsifier, _check_fraction

__all__ = ["DareMerge"]


@dataclass(frozen=True, kw_only=True)
class DareMerge(SparsifyThenAdd):
    """base + sum_i c_i DARE_{p=1-density, seed+i}(tau_i)."""

    name = "dare"
    paper = "Yu et al. 2024, Language Models are Super Mario (ICML)"
    rule = "base + sum_i c_i mask_p(tau_i) / (1 - p)"

    density: float = 0.1
    seed: int = 0
    rescale: str = "inverse"
    norm: str | None = None  # rescale="norm" only; default "l2"
    rescale_scope: str | None = None  # rescale="norm" only; default "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("density", self.density)
        check_choice("rescale", self.rescale, ("inverse", "norm"))
        if self.rescale == "norm":
            Rescale(self.norm or "l2", self.rescale_scope or "global")
        else:
            refuse_unused("dare with rescale='inverse'", norm=self.norm, rescale_scope=self.rescale_scope)
        DareSparsifier(1.0 - self.density, self.seed)  # validates the drop rate

    def sparsifier(self, i: int) -> Sparsifier:
        rescale = "inverse" if self.rescale == "inverse" else Rescale(self.norm or "l2", self.rescale_scope or "global")
        return DareSparsifier(1.0 - self.density, self.seed + i, rescale)
