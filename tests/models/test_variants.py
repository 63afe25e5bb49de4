"""Rope scaling variants, sliding windows, tied embeddings and biases: each checked against transformers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from jax_cat.models import ModelConfig, load_hf
from jax_cat.models.rope import rope_inv_freq
from tests.hf_fixtures import TINY_HF_CONFIG
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits

ROPE_CASES = {
    "linear": {"rope_type": "linear", "factor": 3.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "mscale": 0.8,
        "mscale_all_dim": 0.5,
        "beta_fast": 16,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


@pytest.mark.parametrize("case", ["default", *ROPE_CASES])
def test_rope_frequencies_match_transformers_init(case):
    rope = {"rope_theta": 500000.0, **ROPE_CASES.get(case, {"rope_type": "default"})}
    hf = transformers.LlamaConfig(**dict(TINY_HF_CONFIG, rope_parameters=dict(rope)))
    ours, ours_scale = rope_inv_freq(ModelConfig.from_hf(hf))
    if case == "default":
        ref = 1.0 / (500000.0 ** (np.arange(0, hf.head_dim, 2, dtype=np.float32) / hf.head_dim))
        ref_scale = 1.0
    else:
        ref, ref_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
        ref = ref.numpy()
    np.testing.assert_allclose(ours, ref, rtol=2e-6)
    assert ours_scale == pytest.approx(ref_scale, rel=1e-6)
    if case != "default" and case != "dynamic":
        assert not np.allclose(ours, rope_inv_freq(ModelConfig.from_hf(transformers.LlamaConfig(
            **dict(TINY_HF_CONFIG, rope_parameters={"rope_theta": 500000.0}))))[0])


def _parity(tiny_hf_checkpoint, model_type, lengths=(11, 7, 1), **overrides):
    path = tiny_hf_checkpoint(model_type, **overrides)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    model = load_hf(path)
    ids, mask = left_padded_batch(model.config.vocab_size, lengths=lengths)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(torch_model, ids, mask)
    return model, max_abs_diff_on_real_tokens(ours, ref, mask)


@pytest.mark.parametrize(
    "model_type,case",
    [("llama", "linear"), ("llama", "llama3"), ("qwen3", "yarn_mscale"), ("mistral", "dynamic")],
)
def test_logits_match_with_rope_scaling(tiny_hf_checkpoint, model_type, case):
    rope = {"rope_theta": 10000.0, **ROPE_CASES[case]}
    # dynamic only differs from default past max_position_embeddings: make the sequence longer than that
    extra = {"max_position_embeddings": 8} if case == "dynamic" else {}
    model, diff = _parity(tiny_hf_checkpoint, model_type, rope_parameters=rope, **extra)
    assert model.config.rope_type == ROPE_CASES[case]["rope_type"]
    assert diff <= 1e-4


@pytest.mark.parametrize(
    "model_type,overrides,windows",
    [
        # qwen2/qwen3: only layers >= max_window_layers slide, and only when use_sliding_window is set
        ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), [None, 4]),
        ("qwen3", dict(use_sliding_window=False, sliding_window=4), [None, None]),
        ("mistral", dict(sliding_window=3), [3, 3]),  # mistral: every layer slides
    ],
)
def test_sliding_window_semantics_and_logits(tiny_hf_checkpoint, model_type, overrides, windows):
    model, diff = _parity(tiny_hf_checkpoint, model_type, lengths=(12, 9, 2), **overrides)
    assert [layer.sliding_window for layer in model.layers] == windows
    assert diff <= 1e-4


def test_sliding_window_changes_logits_and_cached_decode_matches(tiny_hf_checkpoint):
    windowed = load_hf(tiny_hf_checkpoint("mistral", sliding_window=3))
    full = load_hf(tiny_hf_checkpoint("mistral"))
    ids, mask = left_padded_batch(windowed.config.vocab_size, lengths=(10, 6), seed=3)
    logits_w = np.asarray(windowed(jnp.asarray(ids), jnp.asarray(mask)))
    logits_f = np.asarray(full(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    # the first 3 tokens of each row see the same keys with or without the window; later ones do not
    first3 = real & (np.cumsum(mask, axis=-1) <= 3)
    np.testing.assert_allclose(logits_w[first3], logits_f[first3], atol=1e-5)
    assert np.abs(logits_w[real & ~first3] - logits_f[real & ~first3]).max() > 1e-2

    graphdef, state = nnx.split(windowed)
    step = jax.jit(lambda s, *a: nnx.merge(graphdef, s).forward_cached(*a))
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)
    cache = windowed.init_cache(ids.shape[0], ids.shape[1])
    kv_mask = np.zeros(ids.shape, bool)
    outs = []
    for t in range(ids.shape[1]):
        kv_mask[:, t] = mask[:, t]
        logits, cache = step(state, ids[:, t : t + 1], positions[:, t : t + 1], cache, jnp.int32(t), kv_mask)
        outs.append(np.asarray(logits))
    assert max_abs_diff_on_real_tokens(np.concatenate(outs, axis=1), logits_w, mask) <= 1e-5


def test_tied_embeddings(tiny_hf_checkpoint):
    model, diff = _parity(tiny_hf_checkpoint, "qwen3", tie_word_embeddings=True)
    assert model.lm_head is None and model.config.tie_word_embeddings
    assert diff <= 1e-4


def test_llama_attention_and_mlp_bias(tiny_hf_checkpoint):
    model, diff = _parity(tiny_hf_checkpoint, "llama", attention_bias=True, mlp_bias=True)
    assert model.layers[0].self_attn.o_bias is not None and model.layers[0].mlp.down_bias is not None
    assert diff <= 1e-4
