"""Task-vector arithmetic, DoTS analysis, sparsification and streaming merges of HF checkpoints.

The core (task_vectors, sparsify, analysis, methods) is pure functions on pytrees and imports nothing from
jax_cat, so it can be used from any JAX codebase; `stream` reads and writes HF safetensors checkpoints tensor by
tensor. See docs/merging.md for every method's source and exact rule. In-memory merges of whole models:
`from merging.methods import MergeSpec, merge`.
"""
from merging.analysis import Comparison, compare, cosine_similarity, magnitude_ratio, module_mass, sign_conflict
from merging.methods import METHODS, MergeSpec
from merging.sparsify import (
    Breadcrumbs, Dare, Rescale, TopK, breadcrumbs, dare, dots_sparsify, global_norm, ram, rescale_to_norm, ties, topk,
)
from merging.task_vectors import TreeMismatchError, add, combine, scale, task_vector

__all__ = [
    "task_vector", "add", "scale", "combine", "TreeMismatchError",
    "topk", "dots_sparsify", "dare", "breadcrumbs", "ties", "ram", "rescale_to_norm", "global_norm",
    "TopK", "Dare", "Breadcrumbs", "Rescale",
    "compare", "Comparison", "magnitude_ratio", "sign_conflict", "cosine_similarity", "module_mass",
    "MergeSpec", "METHODS",
]
# Not re-exported: `merging.methods.merge` and `merging.sparsify.sparsify` share their names with submodules
# (`merging.merge` is the CLI), and a package attribute cannot be both.
