"""The prefill: every prompt token but the last through the model, filling a KV cache the decode loop continues.

The n sample rows of one prompt share its prefill: the distinct prompts are prefilled once each and their caches
copied to their sample rows (`group_ids`). Traced inside `jax_cat.sampling.decode._sample_core`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_cat.models.decoder import positions_from_mask


class _Prompts(NamedTuple):
    """What the decode loop needs from the prefill, one entry per sample row."""

    cache: Any  # the model's KV cache after the prompt tokens but the last
    kv_mask: jax.Array  # [B, max_len] bool: which cache slots hold real prompt tokens
    num_tokens: jax.Array  # [B] int32: real prompt tokens per row
    last: jax.Array  # [B] int32: each prompt's last token (the first input of the decode loop)


def _prefill(model: Any, prompt_ids: jax.Array, attention_mask: jax.Array, group_ids: jax.Array | None,
             max_len: int, cache_dtype: Any) -> _Prompts:
    """Run every prompt token but the last through the model, then give each sample row its prompt's cache.

    The last prompt token's logits would be unused, so it is left to the decode loop (which needs them), and the
    prefill computes no vocabulary projection (the [U, P, V] logits would cost as much as the rest of it). Models
    with a `prefill` method (CausalLM) attend over the prompt only, in query blocks: the [U, H, P, max_len] scores of
    attending over the whole cache were the sampler's peak memory at long context.
    """
    num_prompts, prompt_len = prompt_ids.shape
    slots = jnp.arange(max_len, dtype=jnp.int32)
    kv_mask = jnp.zeros((num_prompts, max_len), bool).at[:, :prompt_len].set(attention_mask)
    cache = model.init_cache(num_prompts, max_len, cache_dtype)
    if prompt_len > 1:
        positions = positions_from_mask(attention_mask)
        if hasattr(model, "prefill"):  # attends over the prompt only, in query blocks (the long-context peak)
            cache = model.prefill(prompt_ids[:, :-1], positions[:, :-1], cache, attention_mask[:, :-1])
        else:
            _, cache = model.forward_cached(
                prompt_ids[:, :-1], positions[:, :-1], cache, jnp.int32(0), kv_mask & (slots < prompt_len - 1)
            )
    prompts = _Prompts(cache, kv_mask, jnp.sum(attention_mask.astype(jnp.int32), axis=-1), prompt_ids[:, -1])
    if group_ids is None:
        return prompts
    return jax.tree.map(lambda x: jnp.take(x, group_ids, axis=0), prompts)  # n samples share one prefill
