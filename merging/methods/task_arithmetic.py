"""Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR).

Rule: merged = base + sum_i c_i * tau_i, tau_i = finetuned_i - base (float32, cast back to the base's dtype).
No sparsification, no tie rule.
"""
from __future__ import annotations

from dataclasses import dataclass

from merging.methods.base import SparsifyThenAdd

__all__ = ["TaskArithmeticMerge"]


@dataclass(frozen=True, kw_only=True)
class TaskArithmeticMerge(SparsifyThenAdd):
    """base + sum_i c_i tau_i. Settings: coefficients, filter, exclude."""

    name = "task_arithmetic"
    paper = "Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)"
    rule = "base + sum_i c_i tau_i"
