"""The sampler's fast paths against the plain ones (issue 12): the blocked prompt prefill (`CausalLM.prefill`) and
the two-reduction greedy argmax (`argmax_last`).

References: the full forward of the model (itself checked against transformers in tests/models/test_parity.py),
the plain `forward_cached` prefill over the whole cache, and `jnp.argmax`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import load_hf
from jax_cat.sampling.logits_processing import argmax_last
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens


@pytest.fixture(scope="module")
def checkpoints(tiny_hf_checkpoint):
    """Qwen3 with a sliding layer (window 3 < the prefill blocks' reach) and Qwen2 (q/k/v bias)."""
    return {
        "qwen3_sliding": tiny_hf_checkpoint(
            "qwen3", use_sliding_window=True, sliding_window=3, max_window_layers=1,
            layer_types=["full_attention", "sliding_attention"],
        ),
        "qwen2": tiny_hf_checkpoint("qwen2"),
    }


@pytest.mark.parametrize("name, scan_layers", [("qwen3_sliding", False), ("qwen3_sliding", True), ("qwen2", False)])
def test_blocked_prefill_then_decode_equals_full_forward(checkpoints, name, scan_layers):
    """prefill in blocks of 2 tokens (a ragged last block, left padding inside the first) then cached decode steps
    give the full forward's logits, and the same cache as the plain whole-cache prefill on every real slot."""
    model = load_hf(checkpoints[name], scan_layers=scan_layers)
    ids, mask = left_padded_batch(128, lengths=(10, 6), seed=3)
    graphdef, state = nnx.split(model)
    full = np.asarray(jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, ids, mask))
    total, prompt_len = ids.shape[1], 7
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
    kv_mask = np.zeros((ids.shape[0], total + 2), bool)
    kv_mask[:, :prompt_len] = mask[:, :prompt_len]
    cache = model.init_cache(ids.shape[0], total + 2)

    prefill = jax.jit(lambda s, *a: nnx.merge(graphdef, s).prefill(*a, chunk_size=2))
    blocked = prefill(state, ids[:, :prompt_len], positions[:, :prompt_len], cache, mask[:, :prompt_len])
    step = jax.jit(lambda s, *a: nnx.merge(graphdef, s).forward_cached(*a))
    _, plain = step(state, ids[:, :prompt_len], positions[:, :prompt_len], cache, jnp.int32(0), kv_mask)
    slots = np.zeros(kv_mask.shape, bool)
    slots[:, :prompt_len] = mask[:, :prompt_len]
    for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(plain)):
        got, want = np.asarray(got), np.asarray(want)
        if scan_layers:  # [B, L, K, S, D] -> [B, S, L, K, D]
            got, want = got.transpose(0, 3, 1, 2, 4), want.transpose(0, 3, 1, 2, 4)
        else:  # [B, K, S, D] -> [B, S, K, D]
            got, want = got.transpose(0, 2, 1, 3), want.transpose(0, 2, 1, 3)
        assert np.abs(got[slots] - want[slots]).max() <= 1e-5

    cache, got = blocked, []
    for t in range(prompt_len, total):
        kv_mask[:, t] = mask[:, t]
        logits, cache = step(state, ids[:, t : t + 1], positions[:, t : t + 1], cache, jnp.int32(t), kv_mask)
        got.append(np.asarray(logits))
    tail = mask.copy()
    tail[:, :prompt_len] = 0
    full_tail = full[:, prompt_len:]
    assert max_abs_diff_on_real_tokens(np.concatenate(got, axis=1), full_tail, tail[:, prompt_len:]) <= 1e-5


def test_prefill_refuses_a_prompt_longer_than_the_cache(checkpoints):
    model = load_hf(checkpoints["qwen2"])
    ids, mask = left_padded_batch(128, lengths=(5,))
    with pytest.raises(ValueError, match="5 prompt tokens do not fit a KV cache of 4 slots"):
        model.prefill(ids, mask, model.init_cache(1, 4), mask)


def test_argmax_last_equals_jnp_argmax_on_ties_infinities_and_nan():
    """First index of the maximum, as jnp.argmax: ties, -inf rows, +inf, NaN (argmax returns the first NaN)."""
    rows = np.array([
        [0.5, 2.0, 2.0, -1.0, 2.0],  # tie: first index
        [-np.inf] * 5,  # all -inf: index 0
        [1.0, np.inf, 3.0, np.inf, 0.0],
        [1.0, 7.0, np.nan, 9.0, np.nan],  # NaN: first NaN
        [-3.0, -2.0, -2.5, -9.0, -2.0],
    ], np.float32)
    random = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32)
    for logits in (rows, random, np.round(random, 1)):  # rounding makes many near-top ties
        got = np.asarray(jax.jit(argmax_last)(logits))
        np.testing.assert_array_equal(got, np.asarray(jnp.argmax(logits, axis=-1)))
        assert got.dtype == np.int32


def test_argmax_last_reduces_the_last_axis_of_any_rank():
    """[B, S, V] logits (V != S): argmax over the last axis, as jnp.argmax(axis=-1), int32."""
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    logits = logits.at[1, 2].set(jnp.array([0.0, 4.0, 4.0, -1.0, 2.0]))  # a tie: the first index wins
    got = argmax_last(logits)
    assert got.dtype == jnp.int32 and got.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(logits, axis=-1)))
    assert int(got[1, 2]) == 1
