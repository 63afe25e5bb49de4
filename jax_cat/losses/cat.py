"""Compute-aligned SFT and RL objectives (CAT): pure JAX on arrays, jit-able, shardable over a batch axis.

Shapes: B sequences (completions), T tokens. Per-token arrays are [B, T] with a {0,1} ``mask``; per-sequence
arrays are [B]; ``group_ids`` [B] are arbitrary ints marking the completions of one prompt (groups may have
different sizes). Nothing here knows about models: pass logits or per-token log-probabilities.
See docs/losses.md for the formulas and conventions.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Hashable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cat.losses.config import NORMALIZE_MODES, CATLossConfig, resolve_config
from jax_cat.losses.reduce import (LossDenominator, Reduction, as_denominator, canonical_reduction, local_denominator,
                                   reduce_sequences)
from jax_cat.losses.reduce import loss_denominator as _loss_denominator
from jax_cat.losses.state import CATState, history_append, history_quantiles, running_scale
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN, Strategy

__all__ = [
    "token_logprobs",
    "group_index",
    "success_from_logprobs",
    "success_from_group",
    "group_quantiles",
    "dynamic_consensus_threshold",
    "consensus_threshold",
    "estimate_success",
    "group_advantages",
    "cat_weights",
    "cat_advantages",
    "cat_sft_loss",
    "cat_rl_loss",
]


# ----------------------------------------------------------------------------------------------------------
# small pieces
# ----------------------------------------------------------------------------------------------------------
def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[targets] per token: [B, T, V], [B, T] -> [B, T] (float32 or wider)."""
    logits = jnp.asarray(logits)
    if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"token_logprobs: logits {logits.shape} must be targets {targets.shape} + [V]")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    # logit[target] - logsumexp(logits): no second [B, T, V] array of log-probs (matters at 150k vocabularies)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def group_index(group_ids: jax.Array) -> jax.Array:
    """Dense group index in [0, B) for arbitrary int group ids (jit-able: fixed size B)."""
    group_ids = jnp.asarray(group_ids)
    if group_ids.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [B], got shape {group_ids.shape}")
    _, inverse = jnp.unique(group_ids, return_inverse=True, size=group_ids.shape[0])
    return inverse.reshape(-1)


def _segment_sum(x: jax.Array, seg: jax.Array) -> jax.Array:
    """Per-sample sum over its group, broadcast back to the samples."""
    return jax.ops.segment_sum(x, seg, num_segments=seg.shape[0])[seg]


def _check_1d(name: str, x: jax.Array, b: int) -> None:
    if x.shape != (b,):
        raise ValueError(f"{name} must have shape [B]=({b},), got {x.shape}")


def _masked_seq_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0), axis=-1)


# ----------------------------------------------------------------------------------------------------------
# success estimates
# ----------------------------------------------------------------------------------------------------------
@jax.jit
def success_from_logprobs(old_logprobs: jax.Array, mask: jax.Array, *, logp_floor: float = -50.0) -> jax.Array:
    """p per completion = exp(clip(sum of token log-probs under the rollout policy, logp_floor, 0)) -> [B].

    The floor (the paper's Appendix J uses -50) keeps p away from exact 0 for long completions.
    """
    seq = _masked_seq_sum(jnp.asarray(old_logprobs), jnp.asarray(mask).astype(bool))
    return jnp.exp(jnp.clip(seq, logp_floor, 0.0))


@jax.jit
def success_from_group(correct: jax.Array, group_ids: jax.Array, *, smoothing: float = 1.0,
                       sample_mask: jax.Array | None = None) -> jax.Array:
    """p per prompt, Laplace-smoothed: (c + s) / (M + 2s) with c correct of M completions, broadcast to [B]."""
    correct = jnp.asarray(correct)
    _check_1d("correct", correct, correct.shape[0])
    seg = group_index(group_ids)
    valid = jnp.ones(correct.shape, bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    c = _segment_sum(jnp.where(valid, correct.astype(jnp.float32), 0.0), seg)
    m = _segment_sum(valid.astype(jnp.float32), seg)
    return (c + smoothing) / (m + 2.0 * smoothing)


@jax.jit
def group_quantiles(rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
    """Reward quantile of each sample within its group: q = (#strictly lower + 1) / (M + 1) -> [B].

    Ties share one q (strict-less rank), groups are never mixed; q lies in [1/(M+1), M/(M+1)].
    O(B^2) comparisons (fine for RL batches of a few thousand completions).
    """
    rewards = jnp.asarray(rewards)
    _check_1d("rewards", rewards, rewards.shape[0])
    seg = group_index(group_ids)
    same = seg[:, None] == seg[None, :]
    lower = jnp.sum(same & (rewards[None, :] < rewards[:, None]), axis=1)
    m = jnp.sum(same, axis=1)
    dt = jnp.promote_types(rewards.dtype, jnp.float32) if jnp.issubdtype(rewards.dtype, jnp.floating) else jnp.float32
    return (lower + 1).astype(dt) / (m + 1).astype(dt)


@partial(jax.jit, static_argnames=("n", "min_k", "no_answer"))
def dynamic_consensus_threshold(answer_ids: jax.Array, correct: jax.Array, group_ids: jax.Array, n: int, *,
                                min_k: int = 2, no_answer: Literal["rival", "abstain"] = "rival") -> jax.Array:
    """The paper's dynamic majority threshold (App. K.2) per sample: k = clip(floor(n c_w / M) + 1, min_k, n//2+1).

    c_w is the count of the most common WRONG answer among the M rollouts of the prompt: the correct answer must
    out-vote the strongest rival scaled to n votes. Rollouts without an extracted answer (answer id < 0):
    ``no_answer="rival"`` (default, the authors' reference) counts all of them together as ONE wrong answer;
    ``"abstain"`` lets them cast no vote (as in the test-time plurality vote, where a missing answer never wins).
    M always counts every rollout. Capped at a strict majority; ``min_k=2`` keeps it from degenerating to pass@n.
    """
    answer_ids = jnp.asarray(answer_ids)
    correct = jnp.asarray(correct).astype(bool)
    b = answer_ids.shape[0]
    _check_1d("answer_ids", answer_ids, b)
    _check_1d("correct", correct, b)
    if not 1 <= min_k <= n // 2 + 1:
        raise ValueError(f"min_k must be in [1, n//2+1={n // 2 + 1}], got {min_k}")
    if no_answer not in ("rival", "abstain"):
        raise ValueError(f"no_answer must be 'rival' or 'abstain', got {no_answer!r}")
    seg = group_index(group_ids)
    has_answer = answer_ids >= 0
    key = jnp.where(has_answer, answer_ids, -1)  # every missing answer is the same key
    same_group = seg[:, None] == seg[None, :]
    wrong = ~correct if no_answer == "rival" else (has_answer & ~correct)
    same_wrong = same_group & (key[:, None] == key[None, :]) & wrong[None, :] & wrong[:, None]
    wrong_count = jnp.sum(same_wrong, axis=1)  # votes of sample i's answer if it is a wrong answer, else 0
    strongest = jax.ops.segment_max(wrong_count, seg, num_segments=b)[seg]
    m = jnp.sum(same_group, axis=1)
    k = (n * strongest) // m + 1
    return jnp.clip(k, min_k, n // 2 + 1).astype(jnp.int32)


def consensus_threshold(answers: Sequence[Hashable | None], correct: Sequence[bool], n: int, *, min_k: int = 2,
                        no_answer: Literal["rival", "abstain"] = "rival") -> int:
    """Host version of `dynamic_consensus_threshold` for one prompt (answers hashable, None = no answer)."""
    if len(answers) != len(correct) or not answers:
        raise ValueError("consensus_threshold: answers and correct must be non-empty and of equal length")
    if no_answer not in ("rival", "abstain"):
        raise ValueError(f"no_answer must be 'rival' or 'abstain', got {no_answer!r}")
    counts: dict[Hashable, int] = {}
    for a, c in zip(answers, correct):
        if not c and (a is not None or no_answer == "rival"):
            counts[a] = counts.get(a, 0) + 1
    strongest = max(counts.values(), default=0)
    return int(max(min_k, min(n // 2 + 1, (n * strongest) // len(answers) + 1)))


def estimate_success(*, rewards: jax.Array | None = None, group_ids: jax.Array | None = None,
                     old_logprobs: jax.Array | None = None, mask: jax.Array | None = None,
                     method: Literal["group", "sequence", "quantile"] = "group", correct: jax.Array | None = None,
                     smoothing: float = 1.0, logp_floor: float = -50.0) -> jax.Array:
    """One entry point for the per-sample success estimate the CAT weight is evaluated at -> [B].

    "group": Laplace (c+s)/(M+2s) per prompt from ``correct`` (default rewards > 0);
    "sequence": exp of the clamped rollout-policy sequence log-prob; "quantile": BoN reward quantile in group.
    The majority threshold per prompt is `dynamic_consensus_threshold`.

    >>> import jax.numpy as jnp
    >>> estimate_success(rewards=jnp.array([1.0, 0.0, 0.0, 0.0]), group_ids=jnp.array([0, 0, 0, 0])).tolist()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    if method == "sequence":
        if old_logprobs is None or mask is None:
            raise ValueError("estimate_success(method='sequence') needs old_logprobs and mask")
        return success_from_logprobs(old_logprobs, mask, logp_floor=logp_floor)
    if group_ids is None:
        raise ValueError(f"estimate_success(method={method!r}) needs group_ids")
    if method == "group":
        if correct is None:
            if rewards is None:
                raise ValueError("estimate_success(method='group') needs rewards or correct")
            correct = jnp.asarray(rewards) > 0
        return success_from_group(correct, group_ids, smoothing=smoothing)
    if method == "quantile":
        if rewards is None:
            raise ValueError("estimate_success(method='quantile') needs rewards")
        return group_quantiles(rewards, group_ids)
    raise ValueError(f"estimate_success: method must be 'group', 'sequence' or 'quantile', got {method!r}")


# ----------------------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------------------
def cat_sft_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, strategy: Strategy, *,
                 reduction: Reduction = "token_mean", logprobs: jax.Array | None = None,
                 loss_denominator: LossDenominator | jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Strategy-aligned SFT: -log S(p) per sequence with p = exp(sum of target log-probs) -> (loss, metrics).

    Its gradient is sft_weight(p) x the sequence's cross-entropy gradient (a custom JVP makes this exact).
    reduction (jax_cat.losses.reduce): "token_mean" = sum over sequences / number of target tokens (plain CE SFT's
    normalisation); "token_sum" = mean over sequences of the per-sequence loss (CE summed over each sequence's
    tokens; "sequence_sum" is its deprecated alias); "sequence_mean" = mean over sequences of the per-sequence loss
    divided by the sequence's length. ``PassAtN(1)`` is exactly plain cross-entropy. Pass ``logprobs`` [B, T]
    instead of logits to skip the softmax. Micro-batching: pass ``loss_denominator=loss_denominator(full_mask,
    reduction)`` to every micro-batch; their losses and gradients then sum to the whole batch's.

    >>> import jax, jax.numpy as jnp
    >>> logits, targets, mask = jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
    >>> grads = jax.grad(lambda x: cat_sft_loss(x, targets, mask, PassAtN(16))[0])(logits)
    """
    reduction = canonical_reduction(reduction)
    den = as_denominator(loss_denominator, reduction, "cat_sft_loss")
    return _sft_loss(strategy, reduction, logits, targets, jnp.asarray(mask), logprobs,
                     None if den is None else den.policy)


@partial(jax.jit, static_argnames=("strategy", "reduction"))
def _sft_loss(strategy, reduction, logits, targets, mask, logprobs, policy_den):
    mask = mask.astype(bool)
    if logprobs is None:
        logprobs = token_logprobs(logits, targets)
    if logprobs.shape != mask.shape:
        raise ValueError(f"cat_sft_loss: token log-probs {logprobs.shape} and mask {mask.shape} differ")
    seq_logp = _masked_seq_sum(logprobs, mask)  # [B]
    per_seq = -strategy.log_success_from_logp(seq_logp)
    num_tokens = jnp.sum(mask)
    if policy_den is None:
        policy_den = local_denominator(mask, reduction).policy
    loss = reduce_sequences(per_seq, jnp.sum(mask, axis=-1), reduction, policy_den)
    p = jnp.exp(jax.lax.stop_gradient(seq_logp))
    weight = jax.lax.stop_gradient(strategy.sft_weight(p))
    metrics = {
        "loss": loss,
        "ce_token_mean": -jnp.sum(jnp.where(mask, jax.lax.stop_gradient(logprobs), 0)) / jnp.maximum(num_tokens, 1),
        "seq_logp_mean": jnp.mean(jax.lax.stop_gradient(seq_logp)),
        "p_mean": jnp.mean(p),
        "sft_weight_mean": jnp.mean(weight),
        "sft_weight_max": jnp.max(weight),
    }
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------
# RL: advantages
# ----------------------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("std_ddof", "scale"))
def group_advantages(rewards: jax.Array, group_ids: jax.Array, *, eps: float = 1e-4, std_ddof: int = 1,
                     sample_mask: jax.Array | None = None,
                     scale: Literal["group", "batch", "none"] = "group") -> jax.Array:
    """GRPO advantages A = (r - mean_g) / (std + eps), centred within each group (std with ``std_ddof``; 1 = unbiased).

    ``scale`` (TRL's ``scale_rewards``): "group" = std of the group's rewards (GRPO); "batch" = std of all valid
    rewards of the batch; "none" = A = r - mean_g, no division (Dr. GRPO: the std favours prompts that are nearly
    always or never solved). A group of one (or with all rewards equal) gets A = 0.
    """
    rewards = jnp.asarray(rewards)
    dt = jnp.promote_types(rewards.dtype, jnp.float32)
    r = rewards.astype(dt)
    seg = group_index(group_ids)
    _check_1d("group_advantages: rewards (one per group_ids entry)", r, seg.shape[0])
    valid = jnp.ones(r.shape, bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    _check_1d("group_advantages: sample_mask", valid, seg.shape[0])
    m = _segment_sum(valid.astype(dt), seg)
    mean = _segment_sum(jnp.where(valid, r, 0), seg) / jnp.maximum(m, 1)
    dev = jnp.where(valid, r - mean, 0)
    if scale == "none":
        return dev
    if scale == "batch":
        n = jnp.sum(valid.astype(dt))
        batch_dev = jnp.where(valid, r - jnp.sum(jnp.where(valid, r, 0)) / jnp.maximum(n, 1), 0)
        std = jnp.sqrt(jnp.sum(batch_dev * batch_dev) / jnp.maximum(n - std_ddof, 1))
        return jnp.where(valid, dev / (std + eps), 0)
    var = _segment_sum(dev * dev, seg) / jnp.maximum(m - std_ddof, 1)
    return jnp.where(valid, dev / (jnp.sqrt(var) + eps), 0)


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


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_binary(rewards: Any, sample_mask: Any, strategy: Strategy, why: str) -> None:
    """Eager refusal of non-binary rewards where 0/1 correctness is implied (a traced value cannot raise)."""
    if _is_traced(rewards) or (sample_mask is not None and _is_traced(sample_mask)):
        return
    r = np.asarray(rewards, dtype=np.float64)
    if sample_mask is not None:
        r = r[np.asarray(sample_mask).astype(bool)]
    bad = r[(r != 0) & (r != 1)]
    if bad.size:
        raise ValueError(f"{strategy.name}: rewards must be 0/1 {why} (got e.g. {bad[:3].tolist()}); pass correct= "
                         "(bool [B]) to state correctness explicitly")


def cat_advantages(strategy: Strategy, *, rewards: jax.Array, group_ids: jax.Array, form: Literal["raw", "log"] = "raw",
                   correct: jax.Array | None = None, answer_ids: jax.Array | None = None,
                   old_logprobs: jax.Array | None = None, mask: jax.Array | None = None,
                   sample_mask: jax.Array | None = None, state: CATState | None = None,
                   config: CATLossConfig | None = None, **settings: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CAT-weighted GRPO advantages of one whole logical (rollout) batch, computed once -> (A' [B] float32, metrics).

    A = (r - mean_g)/(std_g + adv_eps) per prompt (the std per ``scale_rewards``: "group", "batch", "none"), minus ``all_wrong_penalty`` on prompts with no correct rollout,
    clipped to ±``advantage_clip``; A' = A · w̃ with w̃ the CAT weight (stop-gradient) at the success estimate:
    p by Laplace per prompt from ``correct`` (p_source="group"; default correct = rewards > 0, and then rewards
    must be 0/1) or from the rollout policy's sequence log-prob (p_source="sequence": ``old_logprobs`` [B, T] and
    ``mask`` [B, T]); MajorityAtN with ``answer_ids`` (int [B], the id of the extracted answer within its prompt,
    -1 = no answer) uses the dynamic threshold k; BestOfN ranks rewards within the prompt, or against the reward
    history in ``state`` (bon_quantile="history"). Then clipped and normalised per ``normalize`` (see
    `cat_weights`). Settings: ``config=`` (`CATLossConfig`) and/or its fields as keywords (e.g. ``normalize=``).

    Feed the result to every micro-batch's `cat_rl_loss(..., advantages=A'[rows], loss_denominator=...)`.
    ``sample_mask`` [B] (False = padding row): such rows get A' = 0 and enter no statistic. ``state``
    (`init_cat_state()`, needed by normalize="running" and bon_quantile="history") is returned updated as
    metrics["state"]; every other metric is a scalar. Under an outer jit, non-binary rewards that should be 0/1
    cannot raise: they give NaN advantages (metrics["rewards_binary"] = 0) instead.

    >>> import jax.numpy as jnp
    >>> rewards = jnp.array([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])  # 4 prompts x 4 rollouts
    >>> adv, m = cat_advantages(PassAtN(16), rewards=rewards, group_ids=jnp.repeat(jnp.arange(4), 4))
    >>> round(float(adv[0]), 4), round(float(m["weight_scale"]), 4)  # A = 1.5, w̃ = 0.0692
    (0.1037, 0.5284)
    """
    cfg = resolve_config(config, form=form, **settings)
    rewards = jnp.asarray(rewards)
    b = rewards.shape[0] if rewards.ndim else -1
    if rewards.ndim != 1:
        raise ValueError(f"cat_advantages: rewards must be [B], got shape {rewards.shape}")
    group_ids = jnp.asarray(group_ids)
    _check_1d("group_ids", group_ids, b)
    for name, x in (("correct", correct), ("answer_ids", answer_ids), ("sample_mask", sample_mask)):
        if x is not None:
            _check_1d(name, jnp.asarray(x), b)
    is_bon = isinstance(strategy, BestOfN)
    if not isinstance(strategy, (PassAtN, MajorityAtN, BestOfN)):
        raise TypeError(f"strategy must be PassAtN, MajorityAtN or BestOfN, got {type(strategy).__name__}")
    need_binary = correct is None and (not is_bon or cfg.all_wrong_penalty > 0)
    if need_binary:
        _check_binary(rewards, sample_mask, strategy,
                      "for the all-wrong penalty" if is_bon else "for pass/majority weights (correct = rewards > 0)")
    seq_p = not is_bon and cfg.p_source == "sequence"
    if seq_p:
        if old_logprobs is None or mask is None:
            raise ValueError("cat_advantages(p_source='sequence') needs old_logprobs [B, T] and mask [B, T]")
        old_logprobs, mask = jnp.asarray(old_logprobs), jnp.asarray(mask)
        if old_logprobs.ndim != 2 or old_logprobs.shape != mask.shape or old_logprobs.shape[0] != b:
            raise ValueError(f"cat_advantages: old_logprobs {old_logprobs.shape} and mask {mask.shape} must be [B, T]")
    needs_state = cfg.normalize == "running" or (is_bon and cfg.bon_quantile == "history")
    if needs_state and state is None:
        raise ValueError("cat_advantages: normalize='running' and bon_quantile='history' need state= "
                         "(jax_cat.losses.init_cat_state()), carried from step to step")
    if isinstance(strategy, MajorityAtN) and answer_ids is not None and not 1 <= cfg.min_k <= strategy.n // 2 + 1:
        raise ValueError(f"min_k must be in [1, n//2+1={strategy.n // 2 + 1}], got {cfg.min_k}")
    adv_cfg = dataclasses.replace(cfg, **_LOSS_SIDE_DEFAULTS)  # loss-side fields play no role: share compiles
    adv, metrics, new_state = _advantages(strategy, adv_cfg, need_binary, rewards, group_ids, correct, answer_ids,
                                          old_logprobs if seq_p else None, mask if seq_p else None, sample_mask, state)
    if state is not None:
        metrics["state"] = new_state
    return adv, metrics


_LOSS_SIDE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CATLossConfig)
                       if f.name in ("surrogate", "clip_eps_low", "clip_eps_high", "beta", "kl", "reduction")}


@partial(jax.jit, static_argnames=("strategy", "cfg", "need_binary"))
def _advantages(strategy, cfg, need_binary, rewards, group_ids, correct, answer_ids, old_logprobs, mask, sample_mask,
                state):
    b = rewards.shape[0]
    valid = jnp.ones((b,), bool) if sample_mask is None else sample_mask.astype(bool)
    rf = rewards.astype(jnp.float32)
    binary = jnp.all(jnp.where(valid, (rf == 0) | (rf == 1), True))
    corr = (rf > 0) if correct is None else jnp.asarray(correct).astype(bool)
    seg = group_index(group_ids)
    adv = group_advantages(rf, group_ids, eps=cfg.adv_eps, std_ddof=cfg.std_ddof, sample_mask=valid,
                           scale=cfg.scale_rewards)
    n_correct = _segment_sum(jnp.where(valid, corr, False).astype(jnp.float32), seg)
    all_wrong = valid & (n_correct == 0)
    if cfg.all_wrong_penalty:
        adv = adv - cfg.all_wrong_penalty * all_wrong.astype(adv.dtype)
    if cfg.advantage_clip is not None:
        adv = jnp.clip(adv, -cfg.advantage_clip, cfg.advantage_clip)
    p = k = q = None
    new_state = state
    if isinstance(strategy, BestOfN):
        if cfg.bon_quantile == "history":
            q = history_quantiles(state, rf)  # query first, then append: no leakage from this batch
            new_state = history_append(state, rf, valid)
    else:
        if cfg.p_source == "group":
            p = success_from_group(corr, group_ids, smoothing=cfg.smoothing, sample_mask=valid)
        else:
            p = success_from_logprobs(old_logprobs, mask, logp_floor=cfg.logp_floor)
        if isinstance(strategy, MajorityAtN) and answer_ids is not None:
            k = dynamic_consensus_threshold(answer_ids, corr, group_ids, strategy.n, min_k=cfg.min_k,
                                            no_answer=cfg.no_answer)
    mode = cfg.normalize
    w, metrics, st = _cat_weights(strategy, cfg.form, cfg.weight_clip, mode, float(cfg.norm_decay), rf, group_ids,
                                  p, k, valid, q, new_state if mode == "running" else None)
    if mode == "running":
        new_state = st
    a = jnp.where(valid, adv * w, 0.0).astype(jnp.float32)
    if need_binary:
        a = jnp.where(binary, a, jnp.nan)
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    metrics.update({
        "adv_abs_mean": jnp.sum(jnp.abs(jnp.where(valid, adv, 0))) / n_valid,
        "weighted_adv_abs_mean": jnp.sum(jnp.abs(a)) / n_valid,
        "reward_mean": jnp.sum(jnp.where(valid, rf, 0)) / n_valid,
        "frac_all_wrong": jnp.sum(all_wrong) / n_valid,
        "rewards_binary": binary.astype(jnp.float32),
    })
    if k is not None:
        metrics["consensus_k_mean"] = jnp.sum(jnp.where(valid, k, 0)).astype(jnp.float32) / n_valid
    return a, metrics, new_state


# ----------------------------------------------------------------------------------------------------------
# RL: loss
# ----------------------------------------------------------------------------------------------------------
def cat_rl_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
                rewards: jax.Array | None, group_ids: jax.Array | None, mask: jax.Array, strategy: Strategy,
                form: Literal["raw", "log"] = "raw", *, correct: jax.Array | None = None,
                answer_ids: jax.Array | None = None, advantages: jax.Array | None = None,
                loss_denominator: LossDenominator | jax.Array | None = None, sample_mask: jax.Array | None = None,
                state: CATState | None = None, config: CATLossConfig | None = None,
                **settings: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO with CAT-weighted advantages -> (loss, metrics).

    logprobs [B, T]: current-policy log-probs of the sampled tokens (differentiated). old_logprobs [B, T]: rollout
    policy (None = on-policy, ratio exp(lp - stop_grad(lp)) = 1). ref_logprobs [B, T]: reference for the k3 KL
    (needed when beta > 0). rewards [B], group_ids [B], mask [B, T].

    Advantages: ``advantages`` [B] precomputed by `cat_advantages` over the whole logical batch (then rewards,
    group_ids, correct, answer_ids are not needed), or computed here from this call's rows by `cat_advantages`.
    Per token (surrogate="token"): -min(ρ_t A', clip(ρ_t, 1-eps_low, 1+eps_high) A'), ρ_t = exp(lp_t - old_t)
    (no clipping when both eps are None: -ρ_t A'); surrogate="sequence": the same with ρ = exp(Σ_t (lp_t - old_t))
    per sequence. KL: kl="sequence_mean" adds β · Σ_b (token-mean k3 of b) / #sequences, kl="token" adds β · k3
    per token, reduced like the policy term; k3 = exp(ref - lp) - (ref - lp) - 1. Reduction and the exact
    micro-batch denominator: jax_cat.losses.reduce (pass ``loss_denominator=loss_denominator(full_mask,
    reduction)`` and the micro-batch's slice of the full batch's advantages; losses and gradients then sum
    exactly to the whole batch's). Settings: ``config=`` (`CATLossConfig`, e.g. REFERENCE_MAJORITY) and/or its
    fields as keywords (p_source, smoothing, logp_floor, min_k, no_answer, weight_clip, normalize, norm_decay,
    bon_quantile, adv_eps, std_ddof, scale_rewards, all_wrong_penalty, advantage_clip, surrogate, clip_eps_low,
    clip_eps_high, beta, kl, reduction). ``PassAtN(1)`` with weight_clip None is plain GRPO.

    >>> import jax.numpy as jnp
    >>> lp, mask = -jnp.ones((4, 3)), jnp.ones((4, 3))
    >>> rewards, group_ids = jnp.array([1.0, 0.0, 0.0, 1.0]), jnp.array([0, 0, 1, 1])
    >>> loss, metrics = cat_rl_loss(lp, lp, None, rewards, group_ids, mask, PassAtN(8), "log", clip_eps_low=0.2)
    """
    cfg = resolve_config(config, form=form, **settings)
    logprobs = jnp.asarray(logprobs)
    mask = jnp.asarray(mask)
    if logprobs.ndim != 2 or mask.shape != logprobs.shape:
        raise ValueError(f"cat_rl_loss: logprobs {logprobs.shape} and mask {mask.shape} must both be [B, T]")
    b = logprobs.shape[0]
    if old_logprobs is not None and jnp.shape(old_logprobs) != logprobs.shape:
        raise ValueError(f"cat_rl_loss: old_logprobs {jnp.shape(old_logprobs)} != logprobs {logprobs.shape}")
    if cfg.beta and ref_logprobs is None:
        raise ValueError("cat_rl_loss: beta > 0 needs ref_logprobs")
    if ref_logprobs is not None and jnp.shape(ref_logprobs) != logprobs.shape:
        raise ValueError(f"cat_rl_loss: ref_logprobs {jnp.shape(ref_logprobs)} != logprobs {logprobs.shape}")
    metrics: dict[str, Any] = {}
    if advantages is None:
        if rewards is None or group_ids is None:
            raise ValueError("cat_rl_loss: pass rewards and group_ids, or precomputed advantages")
        _check_1d("rewards", jnp.asarray(rewards), b)
        old_for_p = logprobs if old_logprobs is None else old_logprobs
        advantages, metrics = cat_advantages(strategy, rewards=rewards, group_ids=group_ids, correct=correct,
                                             answer_ids=answer_ids, old_logprobs=jax.lax.stop_gradient(old_for_p),
                                             mask=mask, sample_mask=sample_mask, state=state, config=cfg)
    else:
        advantages = jnp.asarray(advantages)
        _check_1d("advantages", advantages, b)
        if rewards is not None:
            _check_1d("rewards", jnp.asarray(rewards), b)
    if loss_denominator is None and sample_mask is not None:  # padding rows do not count for "token_sum" either
        loss_denominator = _loss_denominator(mask, cfg.reduction, sample_mask=sample_mask)
    den = as_denominator(loss_denominator, cfg.reduction, "cat_rl_loss")
    if den is not None and den.sequences is None and cfg.beta and cfg.kl == "sequence_mean":
        raise ValueError("cat_rl_loss: with reduction='token_mean' and the per-sequence KL, loss_denominator must "
                         "be loss_denominator(full_mask, reduction) (a scalar does not give the sequence count)")
    loss_cfg = (cfg.surrogate, cfg.clip_eps_low, cfg.clip_eps_high, cfg.beta, cfg.kl, cfg.reduction)
    loss, loss_metrics = _policy_loss(loss_cfg, logprobs, old_logprobs, ref_logprobs, mask, advantages, den)
    metrics.update(loss_metrics)
    return loss, metrics


@partial(jax.jit, static_argnames=("loss_cfg",))
def _policy_loss(loss_cfg, logprobs, old_logprobs, ref_logprobs, mask, advantages, den):
    surrogate, clip_eps_low, clip_eps_high, beta, kl, reduction = loss_cfg
    mask = mask.astype(bool)
    if den is None:
        den = local_denominator(mask, reduction)
    old = jax.lax.stop_gradient(logprobs if old_logprobs is None else jnp.asarray(old_logprobs))
    a = jax.lax.stop_gradient(advantages.astype(logprobs.dtype))[:, None]  # [B, 1]
    lengths = jnp.sum(mask, axis=-1)
    num_tokens = jnp.maximum(jnp.sum(mask), 1)
    clip = clip_eps_low is not None or clip_eps_high is not None
    if clip:
        lo = 1.0 - (clip_eps_low if clip_eps_low is not None else clip_eps_high)
        hi = 1.0 + (clip_eps_high if clip_eps_high is not None else clip_eps_low)
    log_ratio = jnp.where(mask, logprobs - old, 0.0)
    if surrogate == "token":
        ratio = jnp.exp(log_ratio)
        if clip:
            unclipped, clipped = ratio * a, jnp.clip(ratio, lo, hi) * a
            pg_tok = -jnp.minimum(unclipped, clipped)
            clip_frac = jnp.sum((clipped < unclipped) & mask) / num_tokens
        else:
            pg_tok = -ratio * a
            clip_frac = jnp.zeros((), jnp.float32)
        pg_seq = _masked_seq_sum(pg_tok, mask)  # [B]
        ratio_mean = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(ratio), 0)) / num_tokens
    else:
        ratio = jnp.exp(jnp.sum(log_ratio, axis=-1))  # [B]
        a1 = a[:, 0]
        if clip:
            unclipped, clipped = ratio * a1, jnp.clip(ratio, lo, hi) * a1
            pg_seq = -jnp.minimum(unclipped, clipped)
            clip_frac = jnp.sum((clipped < unclipped) & (lengths > 0)) / jnp.maximum(jnp.sum(lengths > 0), 1)
        else:
            pg_seq = -ratio * a1
            clip_frac = jnp.zeros((), jnp.float32)
        pg_seq = jnp.where(lengths > 0, pg_seq, 0.0)
        ratio_mean = jnp.sum(jnp.where(lengths > 0, jax.lax.stop_gradient(ratio), 0)) / jnp.maximum(
            jnp.sum(lengths > 0), 1)
    pg = reduce_sequences(pg_seq, lengths, reduction, den.policy)
    loss = pg
    if ref_logprobs is not None:
        delta = jax.lax.stop_gradient(jnp.asarray(ref_logprobs)) - logprobs
        k3 = jnp.where(mask, jnp.expm1(delta) - delta, 0.0)
        kl_mean = jnp.sum(jax.lax.stop_gradient(k3)) / num_tokens
        if beta:
            if kl == "token":
                loss = loss + beta * reduce_sequences(jnp.sum(k3, axis=-1), lengths, reduction, den.policy)
            else:
                seq_kl = jnp.sum(k3, axis=-1) / jnp.maximum(lengths, 1)
                loss = loss + beta * jnp.sum(seq_kl) / den.sequences
    else:
        kl_mean = jnp.zeros((), jnp.float32)
    metrics = {
        "loss": loss,
        "pg_loss": jax.lax.stop_gradient(pg),
        "kl": kl_mean,
        "ppo_clip_frac": clip_frac,
        "ratio_mean": ratio_mean,
    }
    return loss, metrics
