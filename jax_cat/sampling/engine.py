"""Batched autoregressive generation for the NNX decoders: the two entry points, `sample_tokens` and `generate`.

Two levels:
- `sample_tokens(model, prompt_ids, attention_mask, *, key, ...)`: token arrays in, token arrays out (tokens, policy
  log-probs, sampling log-probs, lengths, group_ids, sample_mask); no text, no host round trip per token. For RL
  rollouts: its outputs are the losses' inputs (names as in docs/glossary.md).
- `generate(model, tokenizer, prompts, *, n, max_new_tokens, ...)`: strings in, `Completion`s out. Tokenises, left-pads,
  repeats each prompt n times, groups rows into static-shape buckets (batch and prompt length rounded up to powers of
  two), so XLA compiles once per bucket, then decodes text and applies stop strings. The distinct prompts of a
  batch are prefilled once each and their KV caches copied to their n sample rows.

This module checks the arguments and runs the steps; each step is its own module of `jax_cat.sampling`:
- `params`: `SamplingParams` (temperature, top-p, top-k) and the loose keywords' resolution;
- `keys`: one PRNG key per row from (seed, prompt index, sample index), so batching never changes a draw;
- `prefill` and `decode`: the jitted core, one prefill + a `lax.while_loop` of decode steps on a KV cache ->
  `SampleOutput`; `host_memory`: the compiler's freed memory given back before a new program's first run;
- `prompts`: tokenisation and the prompt checks; `batching`: rows cut into static-shape buckets;
- `stop_strings`: stop strings applied after decoding (the device loop only knows token ids), rows -> `Completion`.
The public names those modules hold (and `_sample_core`, `_sampling_params`) stay importable from here.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cat.data.padding import left_pad, resolve_eos_token_ids, resolve_pad_token_id
from jax_cat.sampling.batching import _Batch, _data_parallel_size, _next_pow2, _plan_batches, _round_up
from jax_cat.sampling.completion import Completion
from jax_cat.sampling.decode import SampleOutput, _sample_core
from jax_cat.sampling.host_memory import _trimming_compiles
from jax_cat.sampling.keys import _row_keys, row_keys_for
from jax_cat.sampling.params import SamplingParams, _sampling_params
from jax_cat.sampling.prompts import _tokenize_checked, tokenize_prompts
from jax_cat.sampling.stop_strings import _to_completion

__all__ = [
    "SampleOutput",
    "SamplingParams",
    "generate",
    "left_pad",
    "resolve_eos_token_ids",
    "resolve_pad_token_id",
    "row_keys_for",
    "sample_tokens",
    "tokenize_prompts",
]


# ----------------------------------------------------------------------------------------------------------------
# Token-level API
# ----------------------------------------------------------------------------------------------------------------


def _token_inputs(prompt_ids: Any, attention_mask: Any, group_ids: Any, inactive: Any):
    """`sample_tokens`' arrays checked and converted: (prompt_ids int32, attention_mask bool, group_ids int32 or None,
    inactive [B] bool); every active row's prompt must end with a real token (left padding)."""
    if attention_mask is None:
        raise TypeError("sample_tokens: give attention_mask [batch, prompt_len] (1 = real token, prompts left-padded)")
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    if prompt_ids.ndim != 2 or attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_ids and attention_mask must both be [batch, prompt_len]; got {prompt_ids.shape} and "
            f"{attention_mask.shape}"
        )
    if group_ids is not None:
        group_ids = jnp.asarray(group_ids, jnp.int32)
        if group_ids.ndim != 1 or group_ids.shape[0] < 1:
            raise ValueError(f"group_ids must be a non-empty [batch] index vector, got shape {group_ids.shape}")
        if not bool(jnp.all((group_ids >= 0) & (group_ids < prompt_ids.shape[0]))):
            raise ValueError(f"group_ids indices must lie in [0, {prompt_ids.shape[0]}) (the prompt rows)")
    batch = prompt_ids.shape[0] if group_ids is None else group_ids.shape[0]
    inactive = jnp.zeros((batch,), bool) if inactive is None else jnp.asarray(inactive, bool)
    if inactive.shape != (batch,):
        raise ValueError(f"sample_mask must be [batch={batch}], got shape {inactive.shape}")
    last_is_real = attention_mask[:, -1] if group_ids is None else attention_mask[group_ids, -1]
    if not bool(jnp.all(last_is_real | inactive)):
        raise ValueError("attention_mask: every active row must end with a real token (prompts are left-padded)")
    return prompt_ids, attention_mask, group_ids, inactive


def sample_tokens(
    model: nnx.Module,
    prompt_ids: jax.Array | np.ndarray,
    attention_mask: jax.Array | np.ndarray | None = None,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    row_keys: jax.Array | None = None,
    sampling_params: SamplingParams | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    sample_mask: jax.Array | np.ndarray | None = None,
    cache_dtype: Any = None,
    group_ids: jax.Array | np.ndarray | None = None,
) -> SampleOutput:
    """Sample continuations of LEFT-padded token prompts [B, P] (`attention_mask` 1 = real token) in one jitted call.

    A PRNG key is required: `key` (row r draws from fold_in(key, r)) or `row_keys` [B]. Settings come from
    `sampling_params` or the `temperature` / `top_p` / `top_k` keywords (defaults 1.0, 1.0, 0; not both).
    Compiles once per (B, P, max_new_tokens, top_k, greedy-or-not, top_p-or-not, eos ids); temperature and top_p
    values are traced, so changing them does not recompile. `sample_mask` [B] (default all True) marks the real
    rows; filler rows produce nothing and never block the early exit. `group_ids` [B] (optional): prompt_ids then
    holds U distinct prompts [U, P], each prefilled once, and output row r continues prompt group_ids[r] (n samples
    of a prompt share one prefill instead of n). The output carries `group_ids` and `sample_mask`, ready for the
    losses.
    """
    where = "sample_tokens"
    params = _sampling_params(sampling_params, temperature, top_p, top_k, where)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt_ids, attention_mask, group_ids, inactive = _token_inputs(
        prompt_ids, attention_mask, group_ids, None if sample_mask is None else ~jnp.asarray(sample_mask).astype(bool),
    )
    batch = inactive.shape[0]
    row_keys = _row_keys(key, row_keys, batch)
    graphdef, state = nnx.split(model)
    with _trimming_compiles():
        return _sample_core(
            graphdef, state, prompt_ids, attention_mask, row_keys, inactive,
            jnp.float32(max(params.temperature, 1e-30)), jnp.float32(params.top_p), group_ids,
            max_new_tokens=int(max_new_tokens), greedy=params.greedy, top_k=params.top_k,
            use_top_p=params.top_p < 1.0, eos_token_ids=tuple(int(e) for e in eos_token_ids),
            pad_token_id=int(pad_token_id), cache_dtype=cache_dtype,
        )


# ----------------------------------------------------------------------------------------------------------------
# Text-level API
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """`generate`'s validated settings."""

    params: SamplingParams
    max_new_tokens: int
    stops: tuple[str, ...]
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    cache_dtype: Any


def _settings(model: Any, tokenizer: Any, *, n: int, max_new_tokens: int, batch_size: int, params: SamplingParams,
              stop: str | Sequence[str] | None, eos_token_ids: Sequence[int] | None, pad_token_id: int | None,
              cache_dtype: Any) -> _Settings:
    """Step 1 of `generate`: check the arguments and resolve the stop strings, EOS ids and pad id."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not s for s in stops):
        raise ValueError(f"stop strings must be non-empty, got {list(stops)!r}")
    eos = tuple(int(e) for e in eos_token_ids) if eos_token_ids is not None else resolve_eos_token_ids(model, tokenizer)
    if eos_token_ids is None and not eos:  # completions could never end early, and padding would fall back to id 0
        raise ValueError(
            "generate: neither the tokenizer nor the model config has an eos_token_id; pass eos_token_ids=[...] "
            "(or eos_token_ids=() to always generate max_new_tokens tokens)"
        )
    pad = int(pad_token_id) if pad_token_id is not None else resolve_pad_token_id(model, tokenizer, eos)
    return _Settings(params, int(max_new_tokens), stops, eos, pad, cache_dtype)


def _decode_batch(model: Any, batch: _Batch, token_lists: list[list[int]], settings: _Settings, base_key: jax.Array,
                  min_prompt_bucket: int, dp: int, data_sharding: Any) -> SampleOutput:
    """Step 4: left-pad one batch's distinct prompts (each prefilled once), shard the rows, run `sample_tokens`."""
    rows = batch.rows + [batch.rows[0]] * (batch.size - len(batch.rows))  # filler rows repeat a real one, masked
    prompt_bucket = _next_pow2(max(len(token_lists[i]) for i, _ in batch.rows), minimum=min_prompt_bucket)
    distinct = list(dict.fromkeys(i for i, _ in batch.rows))
    prompt_rows = _round_up(min(_next_pow2(len(distinct)), batch.size), dp)
    group_ids = None
    if prompt_rows < batch.size:
        position = {i: r for r, i in enumerate(distinct)}
        group_ids = jnp.asarray([position[i] for i, _ in rows], jnp.int32)
        prompt_lists = [token_lists[i] for i in distinct + [distinct[0]] * (prompt_rows - len(distinct))]
    else:
        prompt_lists = [token_lists[i] for i, _ in rows]
    ids, mask = left_pad(prompt_lists, prompt_bucket, settings.pad_token_id)
    sample_mask = np.arange(batch.size) < len(batch.rows)
    keys = row_keys_for(base_key, [i for i, _ in rows], [j for _, j in rows])
    arrays = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(sample_mask), keys)
    if data_sharding is not None:
        arrays = jax.device_put(arrays, data_sharding)
        if group_ids is not None:
            group_ids = jax.device_put(group_ids, data_sharding)
    ids_j, mask_j, sample_mask_j, keys = arrays
    return sample_tokens(
        model, ids_j, mask_j, max_new_tokens=settings.max_new_tokens, row_keys=keys,
        sampling_params=settings.params, eos_token_ids=settings.eos_token_ids, pad_token_id=settings.pad_token_id,
        sample_mask=sample_mask_j, cache_dtype=settings.cache_dtype, group_ids=group_ids,
    )


def _completions(tokenizer: Any, out: SampleOutput, batch: _Batch, stops: Sequence[str]) -> list[Completion]:
    """Step 5: host arrays -> one `Completion` per real row (text decoded, stop strings applied)."""
    out = jax.device_get(out)
    completions = []
    for r, (i, j) in enumerate(batch.rows):
        length = int(out.lengths[r])
        completions.append(_to_completion(
            tokenizer, out.tokens[r, :length], out.logprobs[r, :length], out.sample_logprobs[r, :length],
            bool(out.ended_with_eos[r]), stops, i, j,
        ))
    return completions


def generate(
    model: nnx.Module,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    n: int = 1,
    max_new_tokens: int,
    sampling_params: SamplingParams | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    stop: str | Sequence[str] | None = None,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 128,
    min_prompt_bucket: int = 16,
    add_special_tokens: bool = True,
    mesh: Any = None,
    cache_dtype: Any = None,
    progress: bool | None = None,
) -> list[list[Completion]]:
    """Sample `n` completions for each prompt; returns one list of n `Completion`s per prompt, in order.

    Settings come from `sampling_params` or the `temperature` / `top_p` / `top_k` keywords (defaults 1.0, 1.0, 0;
    not both); temperature 0 is greedy (then the n completions are identical). Row (i, j) draws from
    `row_keys_for(seed, i, j)`, so the output depends on (seed, prompt, sample) only, not on batching. `prompts` are
    strings (tokenised with `add_special_tokens`) or token id lists. `stop`: strings that end a completion (applied
    after decoding; the text excludes them, the tokens include those that spelled them). `eos_token_ids` defaults to
    the tokenizer's plus the model config's EOS ids. `batch_size` caps the rows decoded together (rows = prompts x n);
    `mesh` (from `jax_cat.sharding.make_mesh`) shards the rows over its data and fsdp axes (parameters may be sharded
    already). `progress`: a tqdm bar over batches (default: when stderr is a terminal).
    `jax_cat.sampling.group_ids(result)` gives the rows' `group_ids` for the losses.
    """
    params = _sampling_params(sampling_params, temperature, top_p, top_k, "generate")
    settings = _settings(model, tokenizer, n=n, max_new_tokens=max_new_tokens, batch_size=batch_size, params=params,
                         stop=stop, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, cache_dtype=cache_dtype)
    token_lists = _tokenize_checked(model, tokenizer, prompts, settings.max_new_tokens, add_special_tokens)
    draws = 1 if params.greedy else n  # greedy: n equal samples, decode one row per prompt and copy it
    dp = _data_parallel_size(mesh)
    batches = _plan_batches(token_lists, draws, batch_size, dp)
    data_sharding = None
    if mesh is not None:
        from jax_cat.sharding import batch_sharding

        data_sharding = batch_sharding(mesh)
    base_key = jax.random.key(seed)
    results: list[list[Completion | None]] = [[None] * draws for _ in token_lists]
    for batch in _progress(batches, progress):
        out = _decode_batch(model, batch, token_lists, settings, base_key, min_prompt_bucket, dp, data_sharding)
        for c in _completions(tokenizer, out, batch, settings.stops):
            results[c.prompt_index][c.sample_index] = c
    if draws < n:
        results = [[dataclasses.replace(row[0], sample_index=j) for j in range(n)] for row in results]
    return results  # type: ignore[return-value]


def _progress(batches: list[_Batch], progress: bool | None) -> Any:
    """The batches, wrapped in a tqdm bar on stderr when asked (default: when stderr is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc="sampling", unit="batch")
