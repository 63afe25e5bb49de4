"""Task-vector arithmetic, DoTS analysis, sparsification and streaming merges of HF checkpoints.

The core (task_vectors, sparsify, analysis) is pure functions on pytrees and imports nothing from jax_cat's
models, sampling or training, so it can be used from any JAX codebase.
"""
