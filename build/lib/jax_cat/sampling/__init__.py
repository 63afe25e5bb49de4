"""Batched sampling for the NNX decoders: `generate` (text in, `Completion`s out) and `sample_tokens` (token arrays)."""
from jax_cat.sampling.completion import Completion, group_ids
from jax_cat.sampling.engine import (
    SampleOutput,
    SamplingParams,
    generate,
    left_pad,
    resolve_eos_token_ids,
    resolve_pad_token_id,
    row_keys_for,
    sample_tokens,
)
from jax_cat.sampling.logits_processing import (
    apply_temperature,
    process_logits,
    sample_from_logits,
    top_k_mask,
    top_p_mask,
)

__all__ = [
    "Completion",
    "SampleOutput",
    "SamplingParams",
    "apply_temperature",
    "generate",
    "group_ids",
    "left_pad",
    "process_logits",
    "resolve_eos_token_ids",
    "resolve_pad_token_id",
    "row_keys_for",
    "sample_from_logits",
    "sample_tokens",
    "top_k_mask",
    "top_p_mask",
]
