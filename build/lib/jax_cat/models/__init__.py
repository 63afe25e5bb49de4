"""Flax NNX decoders of the Llama / Mistral / Qwen2 / Qwen3 family, loaded from and saved to HF safetensors."""
from jax_cat.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from jax_cat.models.decoder import CausalLM, KVCache, positions_from_mask
from jax_cat.models.hf import CheckpointError, hf_key_table, load_hf, save_hf

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "CausalLM",
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "hf_key_table",
    "load_hf",
    "positions_from_mask",
    "save_hf",
]
