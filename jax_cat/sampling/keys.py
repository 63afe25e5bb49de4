"""Randomness of the sampler: one PRNG key per row, so a completion never depends on how rows were batched.

Row r draws with `fold_in(fold_in(PRNGKey(seed), prompt_index), sample_index)` (`row_keys_for`), folded again with
the step number in the decode loop, so a completion depends only on (seed, prompt index, sample index) and not on
how rows were batched (up to float round-off differences between batch shapes). `sample_tokens` also accepts one
`key`, from which row r gets fold_in(key, r) (`_row_keys`); there is no default key.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def row_keys_for(seed: int | jax.Array, prompt_indices: Sequence[int] | np.ndarray, sample_indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One PRNG key per row from (seed, prompt index, sample index), independent of batch composition."""
    base = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    p = jnp.asarray(prompt_indices, jnp.uint32)
    s = jnp.asarray(sample_indices, jnp.uint32)
    return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(p, s)


def _row_keys(key: Any, row_keys: Any, batch: int) -> jax.Array:
    """[B] keys from an explicit `key` (row r gets fold_in(key, r)) or `row_keys`; a missing key is an error."""
    if key is not None and row_keys is not None:
        raise TypeError("sample_tokens: give key= or row_keys=, not both")
    if row_keys is None:
        if key is None:
            raise TypeError(
                "sample_tokens: no key given; pass key=jax.random.key(seed) (or row_keys=, one key per row). "
                "There is no default key: it would repeat the same samples on every call"
            )
        if isinstance(key, (int, np.integer)):
            raise TypeError(f"sample_tokens: key must be a PRNG key, got the int {key}; pass key=jax.random.key({key})")
        row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(batch, dtype=jnp.uint32))
    if row_keys.shape[0] != batch:
        raise ValueError(f"row_keys has {row_keys.shape[0]} rows, the batch has {batch}")
    return row_keys
