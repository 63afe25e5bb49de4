"""CAT weights (`cat_weights`): the per-sample multiplier of the GRPO advantage, dS/dp (raw) or p S'/S (log).

Evaluated at the success estimate p (PassAtN, MajorityAtN with its threshold k) or the reward quantile q
(BestOfN), clipped, then divided by one scale shared by the whole batch (``normalize``: "batch", "mixed",
"running" or "none"); never renormalised per prompt, which would cancel CAT.
"""
from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from jax_cat.losses.arrays import _check_1d, group_index
from jax_cat.losses.config import NORMALIZE_MODES
from jax_cat.losses.state import CATState, running_scale
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN, Strategy
from jax_cat.losses.success import group_quantiles


def _normalize_mode(normalize: bool | str) -> str:
    if isinstance(normalize, bool):  # the True/False switch went in 0.1.0 (CHANGELOG.md)
        raise ValueError(f"normalize takes a mode: 'batch' (was True) or 'none' (was False), or 'mixed' / 'running'; "
                         f"got {normalize!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    return normalize


def cat_weights(strategy: Strategy, *, rewards: jax.Array, group_ids: jax.Array, form: Literal["raw", "log"] = "raw",
                p: jax.Array | None = None, k: jax.Array | None = None, weight_clip: float | None = None,
                normalize: Literal["batch", "mixed", "none", "running"] = "batch",
                sample_mask: jax.Array | None = None, q: jax.Array | None = None, state: CATState | None = None,
                norm_decay: float = 0.9) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-sample CAT multipliers for the advantages (stop-gradient) -> (w [B], metrics).

    p: the success estimate per sample (PassAtN/MajorityAtN). BestOfN uses the in-group reward quantile, or ``q``
    if given (e.g. `history_quantiles`). form "raw" = rl_weight (dS/dp), "log" = sft_weight (p S'/S).
    k: per-sample MajorityAtN threshold (dynamic). The weight is clipped (w <= weight_clip) first, then divided by
    one scale shared by the whole batch (never renormalised per prompt, which would cancel CAT), per ``normalize``:
    "batch" (default; the reference): the mean weight over all valid samples, so E[w̃] = 1 over the batch; left
    raw when the batch is a single prompt with one weight (it would divide by itself) or all weights are 0.
    "mixed": the mean, over prompts with mixed rewards, of each prompt's mean weight. "none". "running": the
    bias-corrected exponential mean of the batch mean weight carried in ``state`` (returned as metrics["state"]).
    True/False are accepted for "batch"/"none".
    """
    mode = _normalize_mode(normalize)
    if mode == "running" and state is None:
        raise ValueError("cat_weights(normalize='running') needs state= (jax_cat.losses.init_cat_state())")
    w, metrics, new_state = _cat_weights(strategy, form, weight_clip, mode, float(norm_decay), rewards, group_ids,
                                         p, k, sample_mask, q, state if mode == "running" else None)
    if mode == "running":
        metrics["state"] = new_state
    return w, metrics


@partial(jax.jit, static_argnames=("strategy", "form", "weight_clip", "mode", "norm_decay"))
def _cat_weights(strategy, form, weight_clip, mode, norm_decay, rewards, group_ids, p, k, sample_mask, q, state):
    rewards = jnp.asarray(rewards)
    b = rewards.shape[0]
    seg = group_index(group_ids)
    _check_1d("cat_weights: rewards (one per group_ids entry)", rewards, seg.shape[0])
    valid = jnp.ones((b,), bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    _check_1d("cat_weights: sample_mask", valid, b)
    if form not in ("raw", "log"):
        raise ValueError(f"form must be 'raw' (rl_weight) or 'log' (sft_weight), got {form!r}")
    if isinstance(strategy, BestOfN):
        if form != "raw":
            raise ValueError("BestOfN has only the raw rank weight N q^(N-1) in RL (its log form is constant N)")
        x = group_quantiles(rewards, group_ids) if q is None else jnp.asarray(q)
        _check_1d("q", x, b)
        w = strategy.rl_weight(x)
    elif isinstance(strategy, (PassAtN, MajorityAtN)):
        if p is None:
            raise ValueError(f"cat_weights: {strategy.name} needs p (see estimate_success)")
        x = jnp.asarray(p)
        _check_1d("p", x, b)
        if isinstance(strategy, MajorityAtN) and k is not None:
            w = strategy.rl_weight(x, k) if form == "raw" else strategy.sft_weight(x, k)
        else:
            w = strategy.rl_weight(x) if form == "raw" else strategy.sft_weight(x)
    else:
        raise TypeError(f"strategy must be PassAtN, MajorityAtN or BestOfN, got {type(strategy).__name__}")
    w = jax.lax.stop_gradient(w).astype(jnp.float32)
    # mixed groups: rewards not all equal among valid samples
    big = jnp.finfo(jnp.float32).max
    rf = rewards.astype(jnp.float32)
    gmax = jax.ops.segment_max(jnp.where(valid, rf, -big), seg, num_segments=b)[seg]
    gmin = jax.ops.segment_min(jnp.where(valid, rf, big), seg, num_segments=b)[seg]
    mixed = valid & (gmax > gmin)
    if weight_clip is not None:
        clipped = w > weight_clip
        w = jnp.minimum(w, jnp.asarray(weight_clip, w.dtype))
    else:
        clipped = jnp.zeros(w.shape, bool)
    w = jnp.where(valid, w, 0.0)
    # per-group mean weight; each mixed group counts once
    m = jax.ops.segment_sum(valid.astype(w.dtype), seg, num_segments=b)
    gmean = jax.ops.segment_sum(w, seg, num_segments=b) / jnp.maximum(m, 1)
    is_mixed_group = jax.ops.segment_max(mixed.astype(jnp.int32), seg, num_segments=b) > 0
    n_mixed = jnp.sum(is_mixed_group)
    raw_mean = jnp.sum(jnp.where(is_mixed_group, gmean, 0)) / jnp.maximum(n_mixed, 1)
    n_valid = jnp.sum(valid)
    wmax = jnp.max(w)
    # mean over valid samples, computed on w / max (no overflow, tiny weights kept)
    batch_mean = jnp.where(wmax > 0, wmax * jnp.sum(w / jnp.where(wmax > 0, wmax, 1.0)) / jnp.maximum(n_valid, 1), 0.0)
    n_groups = jnp.sum(jax.ops.segment_max(valid.astype(jnp.int32), seg, num_segments=b) > 0)
    new_state = state
    if mode == "mixed":
        scale = jnp.where((n_mixed > 0) & (raw_mean > 0), raw_mean, 1.0)
    elif mode == "batch":
        wmin = jnp.min(jnp.where(valid, w, big))
        self_division = (n_groups < 2) & (wmin == wmax) & (not isinstance(strategy, BestOfN))
        scale = jnp.where((batch_mean > 0) & ~self_division, batch_mean, 1.0)
    elif mode == "running":
        scale, new_state = running_scale(state, batch_mean, norm_decay)
    else:
        scale = jnp.ones((), jnp.float32)
    w = w / scale
    n_mixed_samples = jnp.maximum(jnp.sum(mixed), 1)
    gmean_after = jax.ops.segment_sum(w, seg, num_segments=b) / jnp.maximum(m, 1)
    metrics = {
        "weight_raw_mean": raw_mean,  # mean over mixed prompts of the prompt's mean weight, before normalising
        "weight_mean": jnp.sum(jnp.where(is_mixed_group, gmean_after, 0)) / jnp.maximum(n_mixed, 1),
        "weight_batch_mean": batch_mean,  # mean over all valid samples, before normalising
        "weight_scale": scale,  # the divisor applied (1 = left raw)
        "weight_max": jnp.max(w),
        "weight_frac_clipped": jnp.sum(clipped & mixed) / n_mixed_samples,
        "frac_mixed_groups": n_mixed / jnp.maximum(n_groups, 1),
        "success_mean": jnp.sum(jnp.where(valid, x, 0)) / jnp.maximum(n_valid, 1),
    }
    return w, metrics, new_state
