"""Batched autoregressive generation for the NNX decoders: one jitted prefill + `lax.while_loop` decode on a KV cache.

Two levels:
- `sample_tokens(model, prompt_ids, attention_mask, *, key, ...)`: token arrays in, token arrays out (tokens, policy
  log-probs, sampling log-probs, lengths, group_ids, sample_mask); no text, no host round trip per token. For RL
  rollouts: its outputs are the losses' inputs (names as in docs/glossary.md).
- `generate(model, tokenizer, prompts, *, n, max_new_tokens, ...)`: strings in, `Completion`s out. Tokenises, left-pads,
  repeats each prompt n times, groups rows into static-shape buckets (batch and prompt length rounded up to powers of
  two), so XLA compiles once per bucket, then decodes text and applies stop strings. The distinct prompts of a
  batch are prefilled once each and their KV caches copied to their n sample rows.

Shapes are static inside one call: the KV cache holds prompt_bucket + max_new_tokens slots, allocated inside the
jitted function so XLA updates it in place through the loop (nothing to donate, nothing copied back to the host).
The loop ends as soon as every row has produced an EOS token. Rows that are done keep running (static shapes) but
their outputs are masked to `pad_token_id` / 0.

Randomness: row r draws with `fold_in(fold_in(PRNGKey(seed), prompt_index), sample_index)` folded again with the
step number, so a completion depends only on (seed, prompt index, sample index) and not on how rows were batched
(up to float round-off differences between batch shapes).

Stop strings are applied after decoding (the device loop only knows token ids): generation of a row continues to
EOS or max_new_tokens, then text, tokens and log-probs are cut at the first stop string (see `Completion`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cat.data.padding import left_pad, resolve_eos_token_ids, resolve_pad_token_id
from jax_cat.models.decoder import positions_from_mask
from jax_cat.sampling.completion import Completion, FinishReason
from jax_cat.sampling.logits_processing import sample_from_logits

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
# Settings and outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each token: temperature 0 is greedy; top_k 0 and top_p 1 disable those filters.

    Accepted by `sample_tokens`, `generate` and `jax_cat.evaluate.evaluate` as `sampling_params=`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or not np.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _sampling_params(
    sampling_params: SamplingParams | None, temperature: float | None, top_p: float | None, top_k: int | None, where: str
) -> SamplingParams:
    """One `SamplingParams` from either the object or the loose keywords (defaults 1.0 / 1.0 / 0), never both."""
    loose = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    given = [name for name, value in loose.items() if value is not None]
    if sampling_params is not None:
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"{where}: sampling_params must be a SamplingParams, got {type(sampling_params).__name__}")
        if given:
            raise ValueError(
                f"{where}: got sampling_params and {', '.join(given)}=; put every setting in the SamplingParams"
            )
        return sampling_params
    return SamplingParams(
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=0 if top_k is None else int(top_k),
    )


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


# ----------------------------------------------------------------------------------------------------------------
# The jitted core: prefill, then a while loop of decode steps over a typed carry
# ----------------------------------------------------------------------------------------------------------------


class _Prompts(NamedTuple):
    """What the decode loop needs from the prefill, one entry per sample row."""

    cache: Any  # the model's KV cache after the prompt tokens but the last
    kv_mask: jax.Array  # [B, max_len] bool: which cache slots hold real prompt tokens
    num_tokens: jax.Array  # [B] int32: real prompt tokens per row
    last: jax.Array  # [B] int32: each prompt's last token (the first input of the decode loop)


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


# ----------------------------------------------------------------------------------------------------------------
# Host memory: give the compiler's freed memory back before the first run of a new program
# ----------------------------------------------------------------------------------------------------------------

_TRIM = {"active": False, "registered": False}


def _after_backend_compile(event: str, duration: float, **_: Any) -> None:
    """After XLA compiled a program for `sample_tokens`, hand the memory the compiler freed back to the OS.

    glibc keeps freed heap pages mapped: at a 768-token prompt (B = 8) compiling the sampler left ~200 MiB of freed
    memory in the process, on top of which the first run allocated its cache and activations, so the compiler's
    garbage counted in the sampler's peak RSS (docs/benchmarks.md, "Sampling"). `malloc_trim(0)` takes ~ms.
    """
    if _TRIM["active"] and event == "/jax/core/compile/backend_compile_duration":
        _malloc_trim()


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@contextlib.contextmanager
def _trimming_compiles():
    """While active, every backend compile is followed by `_malloc_trim` (see above)."""
    if not _TRIM["registered"]:
        jax.monitoring.register_event_duration_secs_listener(_after_backend_compile)
        _TRIM["registered"] = True
    previous, _TRIM["active"] = _TRIM["active"], sys.platform.startswith("linux")
    try:
        yield
    finally:
        _TRIM["active"] = previous


# ----------------------------------------------------------------------------------------------------------------
# Token-level API
# ----------------------------------------------------------------------------------------------------------------


def row_keys_for(seed: int | jax.Array, prompt_indices: Sequence[int] | np.ndarray, sample_indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One PRNG key per row from (seed, prompt index, sample index), independent of batch composition."""
    base = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    p = jnp.asarray(prompt_indices, jnp.uint32)
    s = jnp.asarray(sample_indices, jnp.uint32)
    return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(p, s)


def _row_keys(key: Any, row_keys: Any, batch: int) -> jax.Array:
    """[B] keys from an explicit `key` (row r gets fold_in(key, r)) or `row_keys`; a missing key is an error."""
    if key is not None and row_keys is not None:
        raise TypeError("sample_tokens: give key= or row_keys=, not both")
    if row_keys is None:
        if key is None:
            raise TypeError(
                "sample_tokens: no key given; pass key=jax.random.key(seed) (or row_keys=, one key per row). "
                "There is no default key: it would repeat the same samples on every call"
            )
        if isinstance(key, (int, np.integer)):
            raise TypeError(f"sample_tokens: key must be a PRNG key, got the int {key}; pass key=jax.random.key({key})")
        row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(batch, dtype=jnp.uint32))
    if row_keys.shape[0] != batch:
        raise ValueError(f"row_keys has {row_keys.shape[0]} rows, the batch has {batch}")
    return row_keys


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


def _next_pow2(x: int, minimum: int = 1) -> int:
    x = max(int(x), minimum)
    return 1 << (x - 1).bit_length()


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[int]], *, add_special_tokens: bool = True) -> list[list[int]]:
    """Prompt strings -> token id lists (lists of ints pass through unchanged)."""
    if len(prompts) == 0:
        return []
    if all(isinstance(p, str) for p in prompts):
        return [list(map(int, ids)) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise TypeError(f"prompts mixes strings and token lists (prompt {i} is a string)")
        out.append([int(t) for t in p])
    return out


def _cut_at_stop(tokenizer: Any, tokens: np.ndarray, stop: Sequence[str]) -> tuple[int, str] | None:
    """If the decoded tokens contain a stop string: (number of tokens up to and including the one that completes the
    first stop string, text before it). Else None."""

    def first_stop(text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        return min(hits) if hits else None

    full = tokenizer.decode(tokens, skip_special_tokens=True)
    if first_stop(full) is None:
        return None
    lo, hi = 1, len(tokens)  # smallest prefix whose text contains a stop string (monotone in the prefix length)
    while lo < hi:
        mid = (lo + hi) // 2
        if first_stop(tokenizer.decode(tokens[:mid], skip_special_tokens=True)) is None:
            lo = mid + 1
        else:
            hi = mid
    text = tokenizer.decode(tokens[:lo], skip_special_tokens=True)
    return lo, text[: first_stop(text)]


def _to_completion(tokenizer: Any, tokens: np.ndarray, logprobs: np.ndarray, sample_logprobs: np.ndarray,
                   ended_eos: bool, stop: Sequence[str], prompt_index: int, sample_index: int) -> Completion:
    text_tokens = tokens[:-1] if ended_eos else tokens
    finish: FinishReason = "eos" if ended_eos else "length"
    cut = _cut_at_stop(tokenizer, text_tokens, stop) if stop else None
    if cut is not None:
        keep, text = cut
        tokens, logprobs, sample_logprobs, finish = tokens[:keep], logprobs[:keep], sample_logprobs[:keep], "stop"
    else:
        text = tokenizer.decode(text_tokens, skip_special_tokens=True)
    return Completion(
        text=text, tokens=np.asarray(tokens, np.int32), logprobs=np.asarray(logprobs, np.float32),
        sample_logprobs=np.asarray(sample_logprobs, np.float32), finish_reason=finish,
        prompt_index=prompt_index, sample_index=sample_index,
    )


def _data_parallel_size(mesh: Any) -> int:
    if mesh is None:
        return 1
    return int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))


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


def _tokenize_checked(model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int,
                      add_special_tokens: bool) -> list[list[int]]:
    """Step 2: tokenise; refuse empty prompts and prompts that would outgrow the model's positions."""
    token_lists = tokenize_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens)
    for i, toks in enumerate(token_lists):
        if not toks:
            raise ValueError(f"prompt {i} is empty after tokenisation; give at least one token (e.g. a BOS)")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions:
        too_long = [i for i, t in enumerate(token_lists) if len(t) + max_new_tokens > max_positions]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"prompt {i} has {len(token_lists[i])} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                f"model's max_position_embeddings={max_positions} ({len(too_long)} prompt(s) too long)"
            )
    return token_lists


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One static-shape decode batch: its (prompt, sample) rows padded with filler rows to `size`."""

    rows: list[tuple[int, int]]  # the real rows
    size: int  # rows incl. filler (a power of two, capped by batch_size, a multiple of the data-parallel size)


def _plan_batches(token_lists: list[list[int]], draws: int, batch_size: int, dp: int) -> list[_Batch]:
    """Step 3: rows = (prompt, sample) pairs, longest prompts first so each batch pads little, cut into buckets."""
    rows = [(i, j) for i in range(len(token_lists)) for j in range(draws)]
    rows.sort(key=lambda r: -len(token_lists[r[0]]))
    size = _round_up(min(_next_pow2(len(rows)), batch_size), dp)  # a power of two never exceeds the cap
    return [_Batch(rows[s: s + size], size) for s in range(0, len(rows), size)]


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
