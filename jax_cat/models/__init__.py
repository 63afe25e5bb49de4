"""Flax NNX decoders of the Llama / Mistral / Qwen2 / Qwen3 family, loaded from and saved to HF safetensors."""
from jax_cat.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from jax_cat.models.decoder import CausalLM, KVCache, positions_from_mask
from jax_cat.models.hf import CheckpointError, hf_key_table, load_hf, save_hf
from jax_cat.models.lora import LoRAConfig, merge_lora
from jax_cat.models.peft import load_peft, save_peft

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "CausalLM",
    "CheckpointError",
    "KVCache",
    "LoRAConfig",
    "ModelConfig",
    "hf_key_table",
    "load_hf",
    "load_peft",
    "merge_lora",
    "positions_from_mask",
    "save_hf",
    "save_peft",
]
