"""Tiny random transformers (torch) checkpoints for tests: the reference side of every parity check.

Parameters are drawn wider than transformers' default init (std 0.1, norm weights around 1, non-zero biases), so
that every tensor -- including biases and norm scales that HF initialises to constants -- moves the logits and a
wrong mapping cannot hide.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_HF_CONFIG: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
_DEFAULTS_BY_TYPE: dict[str, dict[str, Any]] = {
    "llama": dict(rope_theta=10000.0, attention_bias=False),
    "qwen2": dict(rope_theta=1000000.0),
    "qwen3": dict(rope_theta=1000000.0),
    "mistral": dict(rope_theta=10000.0, sliding_window=None),
}


def make_hf_torch_model(model_type: str, *, seed: int = 0, **overrides: Any):
    """A randomly initialised transformers CausalLM of `model_type` (float32, eval mode)."""
    import torch
    import transformers

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    fields = dict(TINY_HF_CONFIG, **_DEFAULTS_BY_TYPE[model_type])
    fields.update(overrides)
    config = transformers.AutoConfig.for_model(model_type, **fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def make_tiny_hf_checkpoint(model_type: str, out_dir: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Builds a tiny random transformers model of `model_type` and save_pretrained's it with the char tokenizer."""
    from jax_cat.models.tiny import build_char_tokenizer

    out_dir = Path(out_dir)
    model = make_hf_torch_model(model_type, seed=seed, **overrides)
    model.save_pretrained(out_dir)
    build_char_tokenizer().save_pretrained(out_dir)
    return out_dir
