"""Batched autoregressive generation for the NNX decoders: one jitted prefill + `lax.while_loop` decode on a KV cache.

Two levels:
- `sample_tokens(model, prompt_ids, prompt_mask, ...)`: token arrays in, token arrays out (tokens, policy log-probs,
  sampling log-probs, lengths); no text, no host round trip per token. For RL rollouts.
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

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cat.sampling.completion import Completion, FinishReason
from jax_cat.sampling.logits_processing import sample_from_logits


# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each token: temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

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


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Arrays from `sample_tokens`, one row per prompt row.

    tokens [B, N] int32 (pad_token_id after the end), logprobs [B, N] policy log-probs at temperature 1 (0 after the
    end), sample_logprobs [B, N] log-probs under the sampling distribution, lengths [B] int32 (generated tokens, EOS
    included), ended_with_eos [B] bool.
    """

    tokens: jax.Array
    logprobs: jax.Array
    sample_logprobs: jax.Array
    lengths: jax.Array
    ended_with_eos: jax.Array


jax.tree_util.register_dataclass(
    SampleOutput,
    data_fields=["tokens", "logprobs", "sample_logprobs", "lengths", "ended_with_eos"],
    meta_fields=[],
)


# ----------------------------------------------------------------------------------------------------------------
# The jitted core
# ----------------------------------------------------------------------------------------------------------------


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
    prompt_mask: jax.Array,
    row_keys: jax.Array,
    inactive: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    row_prompt: jax.Array | None = None,
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

    With `row_prompt` [B], the U prompt rows are prefilled once each and row r continues prompt row_prompt[r]
    (its KV cache is copied from that prompt's); without it, row r continues prompt r.
    """
    model = nnx.merge(graphdef, state)
    num_prompts, prompt_len = prompt_ids.shape
    batch = num_prompts if row_prompt is None else row_prompt.shape[0]
    max_len = prompt_len + max_new_tokens
    prompt_mask = prompt_mask.astype(bool)
    eos = jnp.asarray(eos_token_ids if eos_token_ids else (-1,), jnp.int32)
    slots = jnp.arange(max_len, dtype=jnp.int32)
    prompt_mask_full = jnp.zeros((num_prompts, max_len), bool).at[:, :prompt_len].set(prompt_mask)

    def pick(step, last_logits):
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        return sample_from_logits(
            keys, last_logits, greedy=greedy, temperature=temperature, top_k=top_k,
            top_p=top_p if use_top_p else None,
        )

    # Prefill every prompt token but the last; its logits are unused, so XLA drops the vocabulary projection
    # (the [B, P, V] logits would cost as much as the rest of the prefill). The last prompt token (always real:
    # prompts are left-padded) is then the first input of the decode loop, which samples one token per step.
    cache = model.init_cache(num_prompts, max_len, cache_dtype)
    num_prompt_tokens = jnp.sum(prompt_mask.astype(jnp.int32), axis=-1)
    if prompt_len > 1:
        positions = jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=-1) - 1, 0)
        _, cache = model.forward_cached(
            prompt_ids[:, :-1], positions[:, :-1], cache, jnp.int32(0), prompt_mask_full & (slots < prompt_len - 1)
        )
    last = prompt_ids[:, -1]
    if row_prompt is not None:  # every sample of a prompt starts from that prompt's one prefill
        take = lambda x: jnp.take(x, row_prompt, axis=0)
        cache = jax.tree.map(take, cache)
        prompt_mask_full, num_prompt_tokens, last = take(prompt_mask_full), take(num_prompt_tokens), take(last)

    carry = dict(
        step=jnp.int32(0), cache=cache, last=last, done=inactive, ended_eos=jnp.zeros((batch,), bool),
        lengths=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.full((batch, max_new_tokens), pad_token_id, jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        sample_lps=jnp.zeros((batch, max_new_tokens), jnp.float32),
    )

    def cond(c):
        return (c["step"] < max_new_tokens) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        slot = prompt_len - 1 + step  # the cache slot of the token fed in now (the one sampled last step)
        kv_mask = prompt_mask_full | ((slots >= prompt_len) & (slots <= slot))[None, :]
        pos = (num_prompt_tokens - 1 + step)[:, None]
        step_logits, cache = model.forward_cached(c["last"][:, None], pos, c["cache"], slot, kv_mask)
        tok, lp, slp = pick(step, step_logits[:, -1])
        live = ~c["done"]
        is_eos = jnp.isin(tok, eos) & live
        return dict(
            step=step + 1, cache=cache, last=tok, done=c["done"] | is_eos, ended_eos=c["ended_eos"] | is_eos,
            lengths=c["lengths"] + live.astype(jnp.int32),
            tokens=c["tokens"].at[:, step].set(jnp.where(live, tok, pad_token_id)),
            logprobs=c["logprobs"].at[:, step].set(jnp.where(live, lp, 0.0)),
            sample_lps=c["sample_lps"].at[:, step].set(jnp.where(live, slp, 0.0)),
        )

    c = jax.lax.while_loop(cond, body, carry)
    return SampleOutput(c["tokens"], c["logprobs"], c["sample_lps"], c["lengths"], c["ended_eos"])


# ----------------------------------------------------------------------------------------------------------------
# Token-level API
# ----------------------------------------------------------------------------------------------------------------


def row_keys_for(seed: int | jax.Array, prompt_indices: Sequence[int] | np.ndarray, sample_indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One PRNG key per row from (seed, prompt index, sample index), independent of batch composition."""
    base = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    p = jnp.asarray(prompt_indices, jnp.uint32)
    s = jnp.asarray(sample_indices, jnp.uint32)
    return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(p, s)


def sample_tokens(
    model: nnx.Module,
    prompt_ids: jax.Array | np.ndarray,
    prompt_mask: jax.Array | np.ndarray,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    row_keys: jax.Array | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    inactive: jax.Array | np.ndarray | None = None,
    cache_dtype: Any = None,
    row_prompt: jax.Array | np.ndarray | None = None,
) -> SampleOutput:
    """Sample continuations of LEFT-padded token prompts [B, P] (mask 1 = real token) in one jitted call.

    Compiles once per (B, P, max_new_tokens, top_k, greedy-or-not, top_p-or-not, eos ids); temperature and top_p
    values are traced, so changing them does not recompile. Give either `key` (row r gets fold_in(key, r)) or
    `row_keys` [B]. `inactive` [B] marks filler rows (no output, never block the early exit).
    `row_prompt` [B] (optional): prompt_ids then holds U distinct prompts [U, P], each prefilled once, and output row
    r continues prompt row_prompt[r] (n samples of a prompt share one prefill instead of n).
    """
    params = SamplingParams(float(temperature), float(top_p), int(top_k))
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_ids and prompt_mask must both be [batch, prompt_len]; got {prompt_ids.shape} and {prompt_mask.shape}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if row_prompt is not None:
        row_prompt = jnp.asarray(row_prompt, jnp.int32)
        if row_prompt.ndim != 1 or row_prompt.shape[0] < 1:
            raise ValueError(f"row_prompt must be a non-empty [batch] index vector, got shape {row_prompt.shape}")
        if not bool(jnp.all((row_prompt >= 0) & (row_prompt < prompt_ids.shape[0]))):
            raise ValueError(f"row_prompt indices must lie in [0, {prompt_ids.shape[0]}) (the prompt rows)")
    batch = prompt_ids.shape[0] if row_prompt is None else row_prompt.shape[0]
    if row_keys is None:
        if key is None:
            key = jax.random.key(0)
        row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(batch, dtype=jnp.uint32))
    if row_keys.shape[0] != batch:
        raise ValueError(f"row_keys has {row_keys.shape[0]} rows, prompt_ids has {batch}")
    inactive = jnp.zeros((batch,), bool) if inactive is None else jnp.asarray(inactive, bool)
    last_is_real = prompt_mask[:, -1] if row_prompt is None else prompt_mask[row_prompt, -1]
    if not bool(jnp.all(last_is_real | inactive)):
        raise ValueError("prompt_mask: every active row must end with a real token (prompts are left-padded)")
    graphdef, state = nnx.split(model)
    return _sample_core(
        graphdef, state, prompt_ids, prompt_mask, row_keys, inactive,
        jnp.float32(max(params.temperature, 1e-30)), jnp.float32(params.top_p), row_prompt,
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


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]


def resolve_eos_token_ids(model: nnx.Module, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids: the tokenizer's eos_token_id plus the model config's eos_token_id (an int or a list), deduplicated."""
    ids = _as_id_list(getattr(tokenizer, "eos_token_id", None))
    ids += _as_id_list(getattr(getattr(model, "config", None), "eos_token_id", None))
    return tuple(dict.fromkeys(ids))


def resolve_pad_token_id(model: nnx.Module, tokenizer: Any, eos_token_ids: Sequence[int]) -> int:
    """Pad id: the tokenizer's, else the model config's, else the first EOS, else 0."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(getattr(model, "config", None), "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return int(eos_token_ids[0]) if eos_token_ids else 0


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


def left_pad(token_lists: Sequence[Sequence[int]], length: int, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to `length`: (ids [B, length] int32, mask [B, length] bool)."""
    ids = np.full((len(token_lists), length), pad_token_id, np.int32)
    mask = np.zeros((len(token_lists), length), bool)
    for r, toks in enumerate(token_lists):
        if len(toks) > length:
            raise ValueError(f"prompt row {r} has {len(toks)} tokens, more than the bucket length {length}")
        if len(toks):
            ids[r, length - len(toks):] = toks
            mask[r, length - len(toks):] = True
    return ids, mask


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


def _to_completion(tokenizer: Any, tokens: np.ndarray, logprobs: np.ndarray, sample_lps: np.ndarray,
                   ended_eos: bool, stop: Sequence[str], prompt_index: int, sample_index: int) -> Completion:
    text_tokens = tokens[:-1] if ended_eos else tokens
    finish: FinishReason = "eos" if ended_eos else "length"
    cut = _cut_at_stop(tokenizer, text_tokens, stop) if stop else None
    if cut is not None:
        keep, text = cut
        tokens, logprobs, sample_lps, finish = tokens[:keep], logprobs[:keep], sample_lps[:keep], "stop"
    else:
        text = tokenizer.decode(text_tokens, skip_special_tokens=True)
    return Completion(
        text=text, tokens=np.asarray(tokens, np.int32), logprobs=np.asarray(logprobs, np.float32),
        sample_logprobs=np.asarray(sample_lps, np.float32), finish_reason=finish,
        prompt_index=prompt_index, sample_index=sample_index,
    )


def _data_parallel_size(mesh: Any) -> int:
    if mesh is None:
        return 1
    return int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))


def generate(
    model: nnx.Module,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    n: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
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

    `temperature=0` is greedy (then the n completions are identical). `prompts` are strings (tokenised with
    `add_special_tokens`) or token id lists. `stop`: strings that end a completion (applied after decoding; the text
    excludes them, the tokens include those that spelled them). `eos_token_ids` defaults to the tokenizer's plus the
    model config's EOS ids. `batch_size` caps the rows decoded together (rows = prompts x n); `mesh` (from
    `jax_cat.sharding.make_mesh`) shards the rows over its data and fsdp axes (parameters may be sharded already).
    `progress`: a tqdm bar over batches (default: when stderr is a terminal).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = SamplingParams(float(temperature), float(top_p), int(top_k))  # validates
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not s for s in stops):
        raise ValueError(f"stop strings must be non-empty, got {stops!r}")
    eos = tuple(int(e) for e in eos_token_ids) if eos_token_ids is not None else resolve_eos_token_ids(model, tokenizer)
    pad = int(pad_token_id) if pad_token_id is not None else resolve_pad_token_id(model, tokenizer, eos)

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

    # Rows = (prompt, sample) pairs, longest prompts first so each batch pads little. Greedy decoding gives n equal
    # samples: decode one row per prompt and copy it.
    draws = 1 if params.greedy else n
    rows = [(i, j) for i in range(len(token_lists)) for j in range(draws)]
    rows.sort(key=lambda r: -len(token_lists[r[0]]))
    dp = _data_parallel_size(mesh)
    batch_bucket = min(_next_pow2(len(rows)), batch_size)  # padding to a power of two never exceeds the cap
    batch_bucket = -(-batch_bucket // dp) * dp
    base_key = jax.random.key(seed)
    data_sharding = None
    if mesh is not None:
        from jax_cat.sharding import batch_sharding

        data_sharding = batch_sharding(mesh)

    results: list[list[Completion | None]] = [[None] * draws for _ in token_lists]
    chunks = [rows[s: s + batch_bucket] for s in range(0, len(rows), batch_bucket)]
    if progress is None:
        progress = sys.stderr.isatty()
    iterator: Any = chunks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chunks, desc="sampling", unit="batch")
    for chunk in iterator:
        filler = batch_bucket - len(chunk)
        chunk_rows = chunk + [chunk[0]] * filler  # filler rows repeat a real one and are marked inactive
        prompt_bucket = _next_pow2(max(len(token_lists[i]) for i, _ in chunk), minimum=min_prompt_bucket)
        # Prefill each distinct prompt of the chunk once (its n samples share it), in a bucket of its own.
        distinct = list(dict.fromkeys(i for i, _ in chunk))
        prompt_rows = min(_next_pow2(len(distinct)), batch_bucket)
        prompt_rows = -(-prompt_rows // dp) * dp
        row_prompt = None
        if prompt_rows < batch_bucket:
            position = {i: r for r, i in enumerate(distinct)}
            row_prompt = jnp.asarray([position[i] for i, _ in chunk_rows], jnp.int32)
            prompt_lists = [token_lists[i] for i in distinct + [distinct[0]] * (prompt_rows - len(distinct))]
        else:
            prompt_lists = [token_lists[i] for i, _ in chunk_rows]
        ids, mask = left_pad(prompt_lists, prompt_bucket, pad)
        inactive = np.arange(batch_bucket) >= len(chunk)
        keys = row_keys_for(base_key, [i for i, _ in chunk_rows], [j for _, j in chunk_rows])
        ids_j, mask_j, inactive_j = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(inactive)
        if data_sharding is not None:
            ids_j, mask_j, inactive_j, keys = jax.device_put((ids_j, mask_j, inactive_j, keys), data_sharding)
            if row_prompt is not None:
                row_prompt = jax.device_put(row_prompt, data_sharding)
        out = sample_tokens(
            model, ids_j, mask_j, max_new_tokens=max_new_tokens, row_keys=keys,
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            eos_token_ids=eos, pad_token_id=pad, inactive=inactive_j, cache_dtype=cache_dtype, row_prompt=row_prompt,
        )
        out = jax.device_get(out)
        for r, (i, j) in enumerate(chunk):
            length = int(out.lengths[r])
            results[i][j] = _to_completion(
                tokenizer, out.tokens[r, :length], out.logprobs[r, :length], out.sample_logprobs[r, :length],
                bool(out.ended_with_eos[r]), stops, i, j,
            )
    if draws < n:
        results = [[dataclasses.replace(row[0], sample_index=j) for j in range(n)] for row in results]
    return results  # type: ignore[return-value]
