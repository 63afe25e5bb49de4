"""`CATState`: the small pytree a trainer carries across RL steps (running weight normaliser, BoN reward history).

Both parts are pure functions over fixed-size arrays, so a step that threads the state stays jit-able:

- running normaliser: an exponential mean of the batch mean CAT weight, m_t = d m_{t-1} + (1-d) w̄_t, read
  bias-corrected as m_t / (1 - d^t) (so the first step divides by w̄_1 exactly, like ``normalize="batch"``);
- reward history (the reference's unconditional best-of-N): a FIFO of the last ``capacity`` rewards (4000 in the
  reference); a reward r has quantile (#history < r + 1) / (len + 2), clamped to [0.001, 0.999], queried BEFORE
  the current batch is appended (no leakage from the batch into its own ranks).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["CATState", "init_cat_state", "history_quantiles", "history_append", "running_scale",
           "HISTORY_CAPACITY", "HISTORY_CLAMP"]

HISTORY_CAPACITY = 4000
HISTORY_CLAMP = (0.001, 0.999)


class CATState(NamedTuple):
    """Carried across RL steps. norm_mean/norm_steps: the running normaliser's (biased) exponential mean and its
    number of updates; history [capacity]: ring buffer of past rewards, history_len valid entries, history_pos the
    next write slot."""

    norm_mean: jax.Array
    norm_steps: jax.Array
    history: jax.Array
    history_len: jax.Array
    history_pos: jax.Array


def init_cat_state(history_capacity: int = HISTORY_CAPACITY) -> CATState:
    """A fresh state: no normaliser updates yet, an empty reward history of ``history_capacity`` slots."""
    if isinstance(history_capacity, bool) or not isinstance(history_capacity, int) or history_capacity < 1:
        raise ValueError(f"history_capacity must be a positive int, got {history_capacity!r}")
    return CATState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((history_capacity,), jnp.float32),
                    jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


@jax.jit
def history_quantiles(state: CATState, rewards: jax.Array) -> jax.Array:
    """Quantile of each reward against the history: (#{h < r} + 1) / (len + 2), clamped to [0.001, 0.999] -> [B]."""
    rewards = jnp.asarray(rewards, jnp.float32)
    cap = state.history.shape[0]
    valid = jnp.arange(cap) < state.history_len
    below = jnp.sum(valid[None, :] & (state.history[None, :] < rewards[:, None]), axis=1)
    q = (below + 1).astype(jnp.float32) / (state.history_len + 2).astype(jnp.float32)
    return jnp.clip(q, *HISTORY_CLAMP)


@jax.jit
def history_append(state: CATState, rewards: jax.Array, sample_mask: jax.Array | None = None) -> CATState:
    """Append the (valid) rewards in order, dropping the oldest beyond capacity (FIFO) -> new state."""
    rewards = jnp.asarray(rewards, jnp.float32).reshape(-1)
    cap = state.history.shape[0]
    valid = jnp.ones(rewards.shape, bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool).reshape(-1)
    order = jnp.cumsum(valid) - 1  # position of each valid reward among the valid ones
    count = jnp.sum(valid).astype(jnp.int32)
    keep = valid & (order >= count - cap)  # only the last `cap` survive; no slot is written twice
    slot = jnp.where(keep, (state.history_pos + order) % cap, cap)  # cap = out of range -> dropped
    history = state.history.at[slot].set(rewards, mode="drop")
    return state._replace(history=history, history_len=jnp.minimum(state.history_len + count, cap),
                          history_pos=((state.history_pos + count) % cap).astype(jnp.int32))


def running_scale(state: CATState, batch_mean: jax.Array, decay: float) -> tuple[jax.Array, CATState]:
    """Update the running normaliser with this batch's mean weight (skipped when it is not > 0) -> (scale, state).

    scale = bias-corrected exponential mean including this batch (1 while no batch has updated it).
    """
    batch_mean = jnp.asarray(batch_mean, jnp.float32)
    ok = jnp.isfinite(batch_mean) & (batch_mean > 0)
    mean = jnp.where(ok, decay * state.norm_mean + (1.0 - decay) * batch_mean, state.norm_mean)
    steps = state.norm_steps + ok.astype(jnp.int32)
    debias = 1.0 - jnp.asarray(decay, jnp.float32) ** steps.astype(jnp.float32)
    scale = jnp.where(steps > 0, mean / jnp.where(steps > 0, debias, 1.0), 1.0)
    return scale, state._replace(norm_mean=mean, norm_steps=steps)
