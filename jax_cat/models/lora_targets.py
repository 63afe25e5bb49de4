"""The projections LoRA can adapt: HF module name -> where its kernel lives in our decoder layer.

A table of its own so that the quantized base (`quant.py`) and the adapters (`lora.py`) both read it without
importing each other.
"""
from __future__ import annotations

# HF module name -> (the decoder-layer submodule holding it, the kernel attribute, how many leading kernel dims are
# the input). Order matters only for the dropout streams (each target folds in its index).
TARGETS: dict[str, tuple[str, str, int]] = {
    "q_proj": ("self_attn", "q_proj", 1),
    "k_proj": ("self_attn", "k_proj", 1),
    "v_proj": ("self_attn", "v_proj", 1),
    "o_proj": ("self_attn", "o_proj", 2),
    "gate_proj": ("mlp", "gate_proj", 1),
    "up_proj": ("mlp", "up_proj", 1),
    "down_proj": ("mlp", "down_proj", 1),
}
DEFAULT_TARGETS: tuple[str, ...] = tuple(TARGETS)

__all__ = ["DEFAULT_TARGETS", "TARGETS"]
