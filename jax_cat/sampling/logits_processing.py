"""Logits processing for sampling: temperature, top-k and top-p (nucleus) as pure functions on arrays.

Every function takes logits of shape [..., V] (float32) and returns logits of the same shape, with the removed
tokens set to -inf, so they compose and the result can be fed to `jax.random.categorical` or `jax.nn.log_softmax`.
Conventions (the same as transformers' `TopKLogitsWarper` / `TopPLogitsWarper`):

- top-k keeps every token whose logit is >= the k-th largest logit (ties at the boundary are all kept); k <= 0 or
  k >= V disables it.
- top-p keeps the smallest set of most likely tokens whose cumulative probability reaches `top_p`; the most likely
  token is always kept (so top_p -> 0 is greedy); tokens tied with the least likely kept token are kept too;
  top_p >= 1 disables it.
- temperature divides the logits; temperature 0 means greedy (handled by `sample_from_logits`, since dividing by
  0 has no meaning).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
    """Divide logits by a positive temperature (T < 1 sharpens, T > 1 flattens)."""
    return logits / jnp.asarray(temperature, dtype=logits.dtype)


def top_k_mask(logits: jax.Array, top_k: int) -> jax.Array:
    """Keep the `top_k` largest logits per row (plus ties with the k-th), set the rest to -inf; top_k <= 0 is a no-op.

    `top_k` must be a Python int: it fixes the shape of `lax.top_k`, so it is a compile-time constant.
    """
    if not isinstance(top_k, int):
        raise TypeError(f"top_k must be a Python int (a compile-time constant), got {type(top_k).__name__}")
    vocab = logits.shape[-1]
    if top_k <= 0 or top_k >= vocab:
        return logits
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits < kth_largest, NEG_INF, logits)


def top_p_mask(logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """Nucleus filtering: keep the smallest most-likely set with cumulative probability >= top_p, -inf elsewhere.

    `top_p` may be traced. The argmax is always kept. Cost: one sort of the vocabulary per row.
    """
    top_p = jnp.asarray(top_p, dtype=jnp.float32)
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    sorted_probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    # Probability mass strictly before each token (in descending order): keep the token while that is < top_p.
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)  # the argmax survives any top_p, including 0
    # The smallest kept logit is the threshold; mapping back by value avoids a scatter (ties with it are kept).
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where(logits < threshold, NEG_INF, logits)
    return jnp.where(top_p >= 1.0, logits, filtered)


def process_logits(
    logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array | None = None,
) -> jax.Array:
    """Temperature, then top-k, then top-p (transformers' order); the logits of the sampling distribution.

    `temperature` must be > 0 here (greedy is `sample_from_logits(..., greedy=True)`); `top_p=None` skips the sort.
    """
    out = apply_temperature(logits.astype(jnp.float32), temperature)
    out = top_k_mask(out, top_k)
    if top_p is not None:
        out = top_p_mask(out, top_p)
    return out


def argmax_last(logits: jax.Array) -> jax.Array:
    """`jnp.argmax(logits, axis=-1)` (the first index of the maximum) as two plain reductions, int32.

    XLA:CPU lowers argmax to one variadic (value, index) reduction that does not vectorise: 1.4-1.7 ms a decode step
    on [8, 16384] logits, ~10 % of the step (docs/benchmarks.md, "Sampling"); a max then a min over the indices
    holding it costs ~0.1 ms. Rows containing NaN give the first NaN's index, as argmax does.
    """
    vocab = logits.shape[-1]
    nan = jnp.isnan(logits)
    top = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == top) | nan
    index = jnp.arange(vocab, dtype=jnp.int32)
    return jnp.min(jnp.where(hit, index, vocab), axis=-1).astype(jnp.int32)


def sample_from_logits(
    key: jax.Array,
    logits: jax.Array,
    *,
    greedy: bool = False,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw one token per row of `logits` [B, V] with its log-probabilities.

    Returns (tokens [B] int32, model_logprobs [B], sample_logprobs [B]): `model_logprobs` is log softmax of the raw
    logits at the chosen token (the policy's log-probability at temperature 1, what RL losses and log-prob scorers
    need); `sample_logprobs` is the log-probability under the distribution actually sampled from (after temperature,
    top-k and top-p; 0 for greedy). `key` is one PRNG key per row ([B] typed keys or [B, 2] raw keys), so a row's
    draw does not depend on the other rows of the batch. `greedy` (a Python bool) takes the argmax.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        tokens = argmax_last(logits)
        sample_logprobs = jnp.zeros(tokens.shape, jnp.float32)
    else:
        processed = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tokens = jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, processed).astype(jnp.int32)
        sample_logprobs_all = jax.nn.log_softmax(processed, axis=-1)
        sample_logprobs = jnp.take_along_axis(sample_logprobs_all, tokens[:, None], axis=-1)[:, 0]
    model_logprobs_all = jax.nn.log_softmax(logits, axis=-1)
    model_logprobs = jnp.take_along_axis(model_logprobs_all, tokens[:, None], axis=-1)[:, 0]
    return tokens, model_logprobs, sample_logprobs
