"""`jax_cat.sampling.host_memory.trimming_compiles`: a backend compile inside it is followed by one `malloc_trim`
call, a compile outside it by none, and nesting restores the outer setting (what the trainer's step loop and
`sample_tokens` rely on). Counts calls only; memory is measured in benchmarks/grpo_peers.py."""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import pytest

from jax_cat.sampling import host_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="trimming is glibc-only")
def test_compiles_inside_are_trimmed_outside_not(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: calls.append(1))
    with host_memory.trimming_compiles():
        jax.jit(lambda x: x * 3 + 1)(jnp.arange(5.0)).block_until_ready()  # a fresh program: one compile
        inside = len(calls)
        with host_memory.trimming_compiles():
            pass
        jax.jit(lambda x: x * 5 - 2)(jnp.arange(6.0)).block_until_ready()  # still active after the nested exit
        after_nested = len(calls)
    jax.jit(lambda x: x * 7 + 4)(jnp.arange(7.0)).block_until_ready()
    assert inside >= 1 and after_nested > inside
    assert len(calls) == after_nested
