"""Logits parity with transformers (torch, float32) for each supported model type, full and cached forward."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from jax_cat.models import load_hf
from tests.hf_fixtures import MODEL_TYPES
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits

TOL = 1e-4


@pytest.fixture(scope="module")
def loaded(tiny_hf_checkpoint):
    cache = {}

    def get(model_type):
        if model_type not in cache:
            path = tiny_hf_checkpoint(model_type)
            torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
            cache[model_type] = (load_hf(path), torch_model)
        return cache[model_type]

    return get


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_logits_match_transformers_left_padded(loaded, model_type):
    model, torch_model = loaded(model_type)
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(torch_model, ids, mask)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ref).max() > 0.5  # the random model produces non-trivial logits, so the bound means something
    assert max_abs_diff_on_real_tokens(ours, ref, mask) <= TOL


def test_padding_does_not_change_real_token_logits(loaded):
    model, _ = loaded("qwen2")
    ids, mask = left_padded_batch(model.config.vocab_size, lengths=(9, 5))
    batched = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    alone = np.asarray(model(jnp.asarray(ids[1:, -5:])))
    np.testing.assert_allclose(batched[1, -5:], alone[0], atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen3", "mistral"])
def test_forward_cached_prefill_then_decode_matches_full_forward(loaded, model_type):
    model, _ = loaded(model_type)
    ids, mask = left_padded_batch(model.config.vocab_size, lengths=(10, 6, 3), seed=1)
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    prompt_len, total = 4, ids.shape[1]
    max_len = total + 2  # spare slots stay masked out
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, positions, cache, index, kv_mask):
        return nnx.merge(graphdef, state).forward_cached(tokens, positions, cache, index, kv_mask)

    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
    kv_mask = np.zeros((ids.shape[0], max_len), bool)
    kv_mask[:, :prompt_len] = mask[:, :prompt_len]
    cache = model.init_cache(ids.shape[0], max_len)
    logits, cache = step(state, ids[:, :prompt_len], positions[:, :prompt_len], cache, 0, kv_mask)
    got = [np.asarray(logits)]
    for t in range(prompt_len, total):
        kv_mask[:, t] = mask[:, t]
        logits, cache = step(state, ids[:, t : t + 1], positions[:, t : t + 1], cache, jnp.int32(t), kv_mask)
        got.append(np.asarray(logits))
    cached = np.concatenate(got, axis=1)
    assert cache.k[0].shape == (ids.shape[0], model.config.num_key_value_heads, max_len, model.config.head_dim)
    assert (cache.batch_size, cache.max_len) == (ids.shape[0], max_len)
    assert max_abs_diff_on_real_tokens(cached, full, mask) <= 1e-5


def test_remat_layers_give_identical_gradients(loaded):
    model, _ = loaded("qwen3")
    ids, mask = left_padded_batch(model.config.vocab_size, lengths=(6, 4))

    def grads(remat: bool):
        model.remat = remat
        try:
            graphdef, state = nnx.split(model)
        finally:
            model.remat = False
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(jnp.asarray(ids), jnp.asarray(mask)) * mask[..., None])
        text = str(jax.make_jaxpr(loss)(state))
        return jax.jit(jax.grad(loss))(state), text

    plain, plain_text = grads(False)
    remat, remat_text = grads(True)
    assert "remat" not in plain_text and remat_text.count("remat") == model.config.num_hidden_layers
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
