"""The jitted sampler: prefill, then a `lax.while_loop` of decode steps over a typed carry -> `SampleOutput`.

Shapes are static inside one call: the KV cache holds prompt_bucket + max_new_tokens slots, allocated inside the
jitted function so XLA updates it in place through the loop (nothing to donate, nothing copied back to the host).
The loop ends as soon as every row has produced an EOS token. Rows that are done keep running (static shapes) but
their outputs are masked to `pad_token_id` / 0. Row r's step-t token draws from fold_in(row_keys[r], t).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.sampling.logits_processing import sample_from_logits
from jax_cat.sampling.prefill import _prefill, _Prompts


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Arrays from `sample_tokens`, one row per sample row (names as in docs/glossary.md).

    tokens [B, N] int32 (pad_token_id after the end), logprobs [B, N] policy log-probs at temperature 1 (0 after the
    end), sample_logprobs [B, N] log-probs under the sampling distribution, lengths [B] int32 (generated tokens, EOS
    included), ended_with_eos [B] bool, group_ids [B] int32 (the prompt row each row continues), sample_mask [B] bool
    (False for filler rows). `mask` [B, N] is the loss mask over the generated tokens.
    """

    tokens: jax.Array
    logprobs: jax.Array
    sample_logprobs: jax.Array
    lengths: jax.Array
    ended_with_eos: jax.Array
    group_ids: jax.Array | None = None
    sample_mask: jax.Array | None = None

    @property
    def mask(self) -> jax.Array:
        """[B, N] int32 loss mask: 1 on generated tokens (EOS included), 0 after the end and on filler rows."""
        steps = jnp.arange(self.tokens.shape[-1], dtype=jnp.int32)
        return (steps[None, :] < jnp.asarray(self.lengths)[:, None]).astype(jnp.int32)


jax.tree_util.register_dataclass(
    SampleOutput,
    data_fields=["tokens", "logprobs", "sample_logprobs", "lengths", "ended_with_eos", "group_ids", "sample_mask"],
    meta_fields=[],
)


class _DecodeState(NamedTuple):
    """The `lax.while_loop` carry (a pytree)."""

    step: jax.Array  # int32 scalar: tokens generated so far
    cache: Any
    last: jax.Array  # [B] int32: the token fed in at this step
    done: jax.Array  # [B] bool: finished (EOS) or filler
    ended_eos: jax.Array  # [B] bool
    lengths: jax.Array  # [B] int32
    tokens: jax.Array  # [B, N] int32
    logprobs: jax.Array  # [B, N] float32
    sample_logprobs: jax.Array  # [B, N] float32


class _Picker(NamedTuple):
    """How a decode step picks the next token of every row (static settings + traced values)."""

    row_keys: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    greedy: bool
    top_k: int
    use_top_p: bool

    def __call__(self, step: jax.Array, last_logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.row_keys, step)
        return sample_from_logits(
            keys, last_logits, greedy=self.greedy, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p if self.use_top_p else None,
        )


def _decode_step(model: Any, prompts: _Prompts, pick: _Picker, prompt_len: int, eos: jax.Array, pad_token_id: int,
                 state: _DecodeState) -> _DecodeState:
    """Feed each row's last token, sample the next one, and record it for the rows still running."""
    step = state.step
    slot = prompt_len - 1 + step  # the cache slot of the token fed in now (the one sampled last step)
    slots = jnp.arange(prompts.kv_mask.shape[-1], dtype=jnp.int32)
    kv_mask = prompts.kv_mask | ((slots >= prompt_len) & (slots <= slot))[None, :]
    positions = (prompts.num_tokens - 1 + step)[:, None]
    logits, cache = model.forward_cached(state.last[:, None], positions, state.cache, slot, kv_mask)
    token, logprob, sample_logprob = pick(step, logits[:, -1])
    live = ~state.done
    is_eos = jnp.isin(token, eos) & live
    return _DecodeState(
        step=step + 1, cache=cache, last=token, done=state.done | is_eos, ended_eos=state.ended_eos | is_eos,
        lengths=state.lengths + live.astype(jnp.int32),
        tokens=state.tokens.at[:, step].set(jnp.where(live, token, pad_token_id)),
        logprobs=state.logprobs.at[:, step].set(jnp.where(live, logprob, 0.0)),
        sample_logprobs=state.sample_logprobs.at[:, step].set(jnp.where(live, sample_logprob, 0.0)),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef", "max_new_tokens", "greedy", "top_k", "use_top_p", "eos_token_ids", "pad_token_id", "cache_dtype",
    ),
)
def _sample_core(
    graphdef: Any,
    state: Any,
    prompt_ids: jax.Array,
    attention_mask: jax.Array,
    row_keys: jax.Array,
    inactive: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    group_ids: jax.Array | None = None,
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    eos_token_ids: tuple[int, ...],
    pad_token_id: int,
    cache_dtype: Any,
) -> SampleOutput:
    """Prefill the left-padded prompts, then decode up to max_new_tokens tokens per row (see module docstring).

    With `group_ids` [B], the U prompt rows are prefilled once each and row r continues prompt group_ids[r]
    (its KV cache is copied from that prompt's); without it, row r continues prompt r.
    """
    model = nnx.merge(graphdef, state)
    num_prompts, prompt_len = prompt_ids.shape
    batch = num_prompts if group_ids is None else group_ids.shape[0]
    prompts = _prefill(model, prompt_ids, attention_mask.astype(bool), group_ids, prompt_len + max_new_tokens,
                       cache_dtype)
    pick = _Picker(row_keys, temperature, top_p, greedy, top_k, use_top_p)
    eos = jnp.asarray(eos_token_ids if eos_token_ids else (-1,), jnp.int32)
    start = _DecodeState(
        step=jnp.int32(0), cache=prompts.cache, last=prompts.last, done=inactive,
        ended_eos=jnp.zeros((batch,), bool), lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        sample_logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
    )
    final = jax.lax.while_loop(
        lambda s: (s.step < max_new_tokens) & ~jnp.all(s.done),
        functools.partial(_decode_step, model, prompts, pick, prompt_len, eos, pad_token_id),
        start,
    )
    return SampleOutput(
        tokens=final.tokens, logprobs=final.logprobs, sample_logprobs=final.sample_logprobs, lengths=final.lengths,
        ended_with_eos=final.ended_eos,
        group_ids=jnp.arange(batch, dtype=jnp.int32) if group_ids is None else group_ids,
        sample_mask=~inactive,
    )
