"""ModelConfig parsing agrees with transformers' own config classes, for both config.json spellings."""
from __future__ import annotations

import copy

import pytest
import transformers

from jax_cat.models import ModelConfig

BASE = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)

CASES = [
    dict(model_type="llama"),  # defaults: kv heads, head_dim, rope_theta, bos/eos
    dict(model_type="llama", num_key_value_heads=None, rope_theta=500000.0, attention_bias=True, mlp_bias=True,
         rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}, torch_dtype="bfloat16", max_position_embeddings=131072),
    dict(model_type="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=True),
    dict(model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6},
         max_position_embeddings=4096),
    dict(model_type="mistral"),  # default window 4096 on every layer
    dict(model_type="mistral", sliding_window=None, head_dim=32, eos_token_id=[2, 5]),
    dict(model_type="qwen2", rope_theta=1e6, sliding_window=131072, use_sliding_window=False, max_window_layers=2),
    dict(model_type="qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1),
    dict(model_type="qwen2", rope_parameters={"rope_theta": 1e6, "rope_type": "default"}, dtype="float32"),
    dict(model_type="qwen3", head_dim=16, attention_bias=True, use_sliding_window=True, sliding_window=8,
         layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    dict(model_type="qwen3", rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
]


def _reference(d):
    d = copy.deepcopy(d)
    return ModelConfig.from_hf(transformers.AutoConfig.for_model(d.pop("model_type"), **d))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["model_type"])
def test_from_hf_dict_agrees_with_transformers_config(case):
    d = dict(BASE, **case)
    ours = ModelConfig.from_hf(d)
    assert ours == _reference(d)
    # and to_hf_dict is read back identically by transformers and by us
    written = ours.to_hf_dict()
    assert ModelConfig.from_hf(written) == ours
    assert _reference(written) == ours


def test_semantics_spelled_out():
    qwen2 = ModelConfig.from_hf(dict(BASE, model_type="qwen2", use_sliding_window=True, sliding_window=16,
                                     max_window_layers=1))
    assert [qwen2.layer_window(i) for i in range(3)] == [None, 16, 16]
    assert qwen2.attention_bias and not qwen2.o_proj_bias
    mistral = ModelConfig.from_hf(dict(BASE, model_type="mistral"))
    assert [mistral.layer_window(i) for i in range(3)] == [4096] * 3
    llama = ModelConfig.from_hf(dict(BASE, model_type="llama", rope_scaling={"type": "llama3", "factor": 8.0,
                                                                              "low_freq_factor": 1.0,
                                                                              "high_freq_factor": 4.0}))
    assert llama.rope_type == "llama3" and llama.rope_scaling["original_max_position_embeddings"] == 2048
    assert llama.head_dim == 16 and llama.bos_token_id == 1
    assert hash(llama) == hash(ModelConfig.from_hf(llama.to_hf_dict()))  # hashable: can live in a graphdef
    assert ModelConfig.from_hf(dict(BASE, model_type="mistral", eos_token_id=[2, 5])).eos_token_ids == (2, 5)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="unsupported model_type 'gemma'; supported: llama, mistral, qwen2, qwen3"):
        ModelConfig.from_hf(dict(BASE, model_type="gemma"))
    with pytest.raises(ValueError, match="unsupported rope_type 'longrope'"):
        ModelConfig.from_hf(dict(BASE, model_type="llama", rope_scaling={"rope_type": "longrope", "short_factor": [1],
                                                                         "long_factor": [1]}))
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_hf(dict(BASE, model_type="llama", hidden_act="gelu"))
    with pytest.raises(ValueError, match="not a multiple"):
        ModelConfig.from_hf(dict(BASE, model_type="llama", num_key_value_heads=3))
