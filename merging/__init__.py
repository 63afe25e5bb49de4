"""Task-vector arithmetic, DoTS analysis, sparsification and streaming merges of HF checkpoints.

The core (task_vectors, sparsify, analysis, methods) is pure functions on pytrees and imports nothing from
jax_cat but its light low layer (`jax_cat.io`, `jax_cat.extras`: standard library, numpy, safetensors), so it can be
used from any JAX codebase; `stream` reads and writes HF safetensors checkpoints tensor by tensor (through
`jax_cat.io.safetensors`). The DoTS search (`merging.dots_config.DotsConfig`, `merging.dots_run.run_dots`, the
objectives on jax_cat's sampler) is not imported here. See docs/merging.md for every method's source and exact rule. In-memory merges of whole models:
`from merging.methods import merge` with a method's settings (`DotsMerge(density=0.3)`, or by name
`method_settings("dots", density=0.3)`).

>>> import jax.numpy as jnp
>>> from merging import task_vector, combine, dots_sparsify
>>> base, sft, rl = {"w": jnp.zeros(4)}, {"w": jnp.array([1.0, 0, 0, 0])}, {"w": jnp.array([0, 0, 0, 0.1])}
>>> taus = [dots_sparsify(task_vector(ft, base), density=0.25) for ft in (sft, rl)]
>>> combine(base, taus, [0.5, 1.0])["w"].tolist()
[0.5, 0.0, 0.0, 0.10000000149011612]

Checkpoints on disk, tensor by tensor (also `python -m merging.merge ...`)::

    from merging import DotsMerge, merge_checkpoints
    merge_checkpoints("base/", ["sft/", "rl/"], DotsMerge(coefficients=(0.5, 0.5), density=0.3), "merged/")
"""
from merging.analysis import Comparison, compare, cosine_similarity, magnitude_ratio, module_mass, sign_conflict
from merging._checks import NonFiniteError
from merging.lora_adapter import LoRAAdapter
from merging.methods import (
    METHODS, BreadcrumbsMerge, DareMerge, DotsMerge, MergeMethod, RamMerge, RamPlusMerge,
    TaskArithmeticMerge, TiesMerge, method_settings,
)
from merging.methods.ram import ram
from merging.methods.ties import ties
from merging.sparsify import (
    Breadcrumbs, Dare, Rescale, TopK, breadcrumbs, dare, dots_sparsify, global_norm, rescale_to_norm, topk,
)
from merging.stream import CheckpointMismatchError, PrecisionWarning, analyze_checkpoints, merge_checkpoints
from merging.task_vectors import TreeMismatchError, add, combine, scale, task_vector

__all__ = [
    "task_vector", "add", "scale", "combine", "TreeMismatchError",
    "topk", "dots_sparsify", "dare", "breadcrumbs", "ties", "ram", "rescale_to_norm", "global_norm",
    "TopK", "Dare", "Breadcrumbs", "Rescale",
    "compare", "Comparison", "magnitude_ratio", "sign_conflict", "cosine_similarity", "module_mass",
    "METHODS", "merge_checkpoints", "analyze_checkpoints", "CheckpointMismatchError",
    "method_settings", "MergeMethod", "TaskArithmeticMerge", "DotsMerge", "DareMerge", "BreadcrumbsMerge",
    "TiesMerge", "RamMerge", "RamPlusMerge", "NonFiniteError", "PrecisionWarning", "LoRAAdapter",
]
# Not re-exported: `merging.methods.merge` and `merging.sparsify.sparsify` share their names with submodules
# (`merging.merge` is the CLI), and a package attribute cannot be both.
