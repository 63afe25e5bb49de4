"""Compute-aligned SFT and RL objectives (CAT): pure JAX on arrays, jit-able, shardable over a batch axis.

Shapes: B sequences (completions), T tokens. Per-token arrays are [B, T] with a {0,1} ``mask``; per-sequence
arrays are [B]; ``group_ids`` [B] are arbitrary ints marking the completions of one prompt (groups may have
different sizes). Nothing here knows about models: pass logits or per-token log-probabilities.
See docs/losses.md for the formulas and conventions.
"""
from __future__ import annotations

from functools import partial
from typing import Hashable, Literal, Sequence

import jax
import jax.numpy as jnp

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
    "cat_sft_loss",
    "cat_rl_loss",
]

Reduction = Literal["token_mean", "sequence_mean", "token_sum"]


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


@partial(jax.jit, static_argnames=("n", "min_k"))
def dynamic_consensus_threshold(answer_ids: jax.Array, correct: jax.Array, group_ids: jax.Array, n: int, *,
                                min_k: int = 2) -> jax.Array:
    """The paper's dynamic majority threshold (App. K.2) per sample: k = clip(floor(n c_w / M) + 1, min_k, n//2+1).

    c_w is the count of the most common WRONG answer among the M rollouts of the prompt: the correct answer must
    out-vote the strongest rival scaled to n votes. Rollouts without an extracted answer (answer id < 0) cast no
    vote (as in the plurality vote at test time, where a missing answer never wins), so they are no rival.
    Capped at a strict majority; ``min_k=2`` keeps it from degenerating to pass@n.
    """
    answer_ids = jnp.asarray(answer_ids)
    correct = jnp.asarray(correct).astype(bool)
    b = answer_ids.shape[0]
    _check_1d("answer_ids", answer_ids, b)
    _check_1d("correct", correct, b)
    if not 1 <= min_k <= n // 2 + 1:
        raise ValueError(f"min_k must be in [1, n//2+1={n // 2 + 1}], got {min_k}")
    seg = group_index(group_ids)
    votes = answer_ids >= 0  # no extracted answer: no vote, never a rival
    same_group = seg[:, None] == seg[None, :]
    wrong = votes & ~correct
    same_wrong = same_group & (answer_ids[:, None] == answer_ids[None, :]) & wrong[None, :] & wrong[:, None]
    wrong_count = jnp.sum(same_wrong, axis=1)  # votes of sample i's answer if it is a wrong answer, else 0
    strongest = jax.ops.segment_max(wrong_count, seg, num_segments=b)[seg]
    m = jnp.sum(same_group, axis=1)
    k = (n * strongest) // m + 1
    return jnp.clip(k, min_k, n // 2 + 1).astype(jnp.int32)


def consensus_threshold(answers: Sequence[Hashable | None], correct: Sequence[bool], n: int, *, min_k: int = 2) -> int:
    """Host version of `dynamic_consensus_threshold` for one prompt (answers hashable, None = no answer, no vote)."""
    if len(answers) != len(correct) or not answers:
        raise ValueError("consensus_threshold: answers and correct must be non-empty and of equal length")
    counts: dict[Hashable, int] = {}
    for a, c in zip(answers, correct):
        if not c and a is not None:
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
@partial(jax.jit, static_argnames=("strategy", "reduction"))
def cat_sft_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, strategy: Strategy, *,
                 reduction: Literal["token_mean", "sequence_sum"] = "token_mean",
                 logprobs: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Strategy-aligned SFT: -log S(p) per sequence with p = exp(sum of target log-probs) -> (loss, metrics).

    Its gradient is sft_weight(p) x the sequence's cross-entropy gradient (a custom JVP makes this exact).
    reduction "token_mean": sum over sequences / number of target tokens (plain CE SFT's normalisation);
    "sequence_sum": mean over sequences of the per-sequence loss (CE summed over each sequence's tokens).
    ``PassAtN(1)`` is exactly plain cross-entropy. Pass ``logprobs`` [B, T] instead of logits to skip the softmax.

    >>> import jax, jax.numpy as jnp
    >>> logits, targets, mask = jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3))
    >>> grads = jax.grad(lambda x: cat_sft_loss(x, targets, mask, PassAtN(16))[0])(logits)
    """
    mask = jnp.asarray(mask).astype(bool)
    if logprobs is None:
        logprobs = token_logprobs(logits, targets)
    if logprobs.shape != mask.shape:
        raise ValueError(f"cat_sft_loss: token log-probs {logprobs.shape} and mask {mask.shape} differ")
    seq_logp = _masked_seq_sum(logprobs, mask)  # [B]
    per_seq = -strategy.log_success_from_logp(seq_logp)
    num_tokens = jnp.sum(mask)
    if reduction == "token_mean":
        loss = jnp.sum(per_seq) / jnp.maximum(num_tokens, 1)
    elif reduction == "sequence_sum":
        loss = jnp.mean(per_seq)
    else:
        raise ValueError(f"cat_sft_loss: reduction must be 'token_mean' or 'sequence_sum', got {reduction!r}")
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
# RL
# ----------------------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("std_ddof",))
def group_advantages(rewards: jax.Array, group_ids: jax.Array, *, eps: float = 1e-4, std_ddof: int = 1,
                     sample_mask: jax.Array | None = None) -> jax.Array:
    """GRPO advantages A = (r - mean_g) / (std_g + eps) within each group (std with ``std_ddof``; 1 = unbiased).

    A group of one (or with all rewards equal) gets A = 0.
    """
    rewards = jnp.asarray(rewards)
    dt = jnp.promote_types(rewards.dtype, jnp.float32)
    r = rewards.astype(dt)
    seg = group_index(group_ids)
    valid = jnp.ones(r.shape, bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    m = _segment_sum(valid.astype(dt), seg)
    mean = _segment_sum(jnp.where(valid, r, 0), seg) / jnp.maximum(m, 1)
    dev = jnp.where(valid, r - mean, 0)
    var = _segment_sum(dev * dev, seg) / jnp.maximum(m - std_ddof, 1)
    return jnp.where(valid, dev / (jnp.sqrt(var) + eps), 0)


@partial(jax.jit, static_argnames=("strategy", "form", "weight_clip", "normalize"))
def cat_weights(strategy: Strategy, *, rewards: jax.Array, group_ids: jax.Array, form: Literal["raw", "log"] = "raw",
                p: jax.Array | None = None, k: jax.Array | None = None, weight_clip: float | None = None,
                normalize: bool = True, sample_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-sample CAT multipliers for the advantages (stop-gradient) -> (w [B], metrics).

    p: the success estimate per sample (for PassAtN/MajorityAtN; q is computed here for BestOfN).
    form "raw" = rl_weight (dS/dp), "log" = sft_weight (p S'/S). k: per-sample MajorityAtN threshold (dynamic).
    Clip (w <= weight_clip) first, then divide by the mean over MIXED groups (rewards not all equal) of each
    group's mean weight, so the multiplier averages 1 over the prompts that carry gradient; the scale is shared
    by all prompts (never renormalised within one). Groups with equal rewards have A = 0 and do not enter the mean.
    """
    rewards = jnp.asarray(rewards)
    b = rewards.shape[0]
    seg = group_index(group_ids)
    valid = jnp.ones((b,), bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    if form not in ("raw", "log"):
        raise ValueError(f"form must be 'raw' (rl_weight) or 'log' (sft_weight), got {form!r}")
    if isinstance(strategy, BestOfN):
        if form != "raw":
            raise ValueError("BestOfN has only the raw rank weight N q^(N-1) in RL (its log form is constant N)")
        x = group_quantiles(rewards, group_ids)
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
    w = jax.lax.stop_gradient(w)
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
    # per-group mean weight; each mixed group counts once
    m = jax.ops.segment_sum(valid.astype(w.dtype), seg, num_segments=b)
    gmean = jax.ops.segment_sum(jnp.where(valid, w, 0), seg, num_segments=b) / jnp.maximum(m, 1)
    is_mixed_group = jax.ops.segment_max(mixed.astype(jnp.int32), seg, num_segments=b) > 0
    n_mixed = jnp.sum(is_mixed_group)
    raw_mean = jnp.sum(jnp.where(is_mixed_group, gmean, 0)) / jnp.maximum(n_mixed, 1)
    if normalize:
        scale = jnp.where((n_mixed > 0) & (raw_mean > 0), raw_mean, jnp.ones_like(raw_mean))
        w = w / scale
    n_mixed_samples = jnp.maximum(jnp.sum(mixed), 1)
    gmean_after = jax.ops.segment_sum(jnp.where(valid, w, 0), seg, num_segments=b) / jnp.maximum(m, 1)
    metrics = {
        "weight_raw_mean": raw_mean,  # mean over mixed prompts of the prompt's mean weight, before normalising
        "weight_mean": jnp.sum(jnp.where(is_mixed_group, gmean_after, 0)) / jnp.maximum(n_mixed, 1),
        "weight_max": jnp.max(jnp.where(valid, w, 0)),
        "weight_frac_clipped": jnp.sum(clipped & mixed) / n_mixed_samples,
        "frac_mixed_groups": n_mixed / jnp.maximum(jnp.sum(jax.ops.segment_max(valid.astype(jnp.int32), seg,
                                                                               num_segments=b) > 0), 1),
        "success_mean": jnp.sum(jnp.where(valid, x, 0)) / jnp.maximum(jnp.sum(valid), 1),
    }
    return w, metrics


def _reduce(per_token: jax.Array, mask: jax.Array, reduction: str, num_seqs: jax.Array) -> jax.Array:
    if reduction == "token_mean":
        return jnp.sum(jnp.where(mask, per_token, 0)) / jnp.maximum(jnp.sum(mask), 1)
    if reduction == "sequence_mean":
        length = jnp.sum(mask, axis=-1)
        per_seq = jnp.sum(jnp.where(mask, per_token, 0), axis=-1) / jnp.maximum(length, 1)
        return jnp.sum(per_seq) / jnp.maximum(jnp.sum(length > 0), 1)
    if reduction == "token_sum":
        return jnp.sum(jnp.where(mask, per_token, 0)) / jnp.maximum(num_seqs, 1)
    raise ValueError(f"reduction must be 'token_mean', 'sequence_mean' or 'token_sum', got {reduction!r}")


_RL_STATIC = ("strategy", "form", "p_source", "smoothing", "logp_floor", "min_k", "weight_clip", "normalize",
              "clip_eps_low", "clip_eps_high", "beta", "reduction", "adv_eps", "std_ddof")


@partial(jax.jit, static_argnames=_RL_STATIC)
def cat_rl_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
                rewards: jax.Array, group_ids: jax.Array, mask: jax.Array, strategy: Strategy,
                form: Literal["raw", "log"] = "raw", *,
                p_source: Literal["group", "sequence"] = "group", correct: jax.Array | None = None,
                smoothing: float = 1.0, logp_floor: float = -50.0,
                answer_ids: jax.Array | None = None, min_k: int = 2,
                weight_clip: float | None = None, normalize: bool = True,
                clip_eps_low: float | None = None, clip_eps_high: float | None = None,
                beta: float = 0.0, reduction: Reduction = "token_mean",
                adv_eps: float = 1e-4, std_ddof: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO with CAT-weighted advantages -> (loss, metrics).

    logprobs [B, T]: current-policy log-probs of the sampled tokens (differentiated). old_logprobs [B, T]: rollout
    policy (None = on-policy, ratio exp(lp - stop_grad(lp)) = 1). ref_logprobs [B, T]: reference for the k3 KL
    (needed when beta > 0). rewards [B], group_ids [B], mask [B, T].

    A = (r - mean_g)/(std_g + adv_eps); A' = A x w with w = stop_grad(CAT weight) from `cat_weights`
    (p per prompt by Laplace from ``correct`` (default rewards > 0), or per sample from old_logprobs when
    p_source="sequence"; BestOfN uses the in-group reward quantile; MajorityAtN with ``answer_ids`` uses the dynamic
    consensus threshold). Per token: -min(rho A', clip(rho, 1-eps_low, 1+eps_high) A') (no clipping when both eps
    are None: -rho A') + beta (exp(ref-lp) - (ref-lp) - 1). ``PassAtN(1)`` with weight_clip None is plain GRPO.

    >>> import jax.numpy as jnp
    >>> lp, mask = -jnp.ones((4, 3)), jnp.ones((4, 3))
    >>> rewards, group_ids = jnp.array([1.0, 0.0, 0.0, 1.0]), jnp.array([0, 0, 1, 1])
    >>> loss, metrics = cat_rl_loss(lp, lp, None, rewards, group_ids, mask, PassAtN(8), "log", clip_eps_low=0.2)
    """
    logprobs = jnp.asarray(logprobs)
    mask = jnp.asarray(mask).astype(bool)
    if logprobs.ndim != 2 or mask.shape != logprobs.shape:
        raise ValueError(f"cat_rl_loss: logprobs {logprobs.shape} and mask {mask.shape} must both be [B, T]")
    b = logprobs.shape[0]
    rewards = jnp.asarray(rewards)
    _check_1d("rewards", rewards, b)
    _check_1d("group_ids", jnp.asarray(group_ids), b)
    old = jax.lax.stop_gradient(logprobs if old_logprobs is None else jnp.asarray(old_logprobs))
    if old.shape != logprobs.shape:
        raise ValueError(f"cat_rl_loss: old_logprobs {old.shape} != logprobs {logprobs.shape}")

    adv = group_advantages(rewards, group_ids, eps=adv_eps, std_ddof=std_ddof)
    p = None
    k = None
    if not isinstance(strategy, BestOfN):
        if p_source == "group":
            p = success_from_group(rewards > 0 if correct is None else correct, group_ids, smoothing=smoothing)
        elif p_source == "sequence":
            p = success_from_logprobs(old, mask, logp_floor=logp_floor)
        else:
            raise ValueError(f"p_source must be 'group' or 'sequence', got {p_source!r}")
        if isinstance(strategy, MajorityAtN) and answer_ids is not None:
            k = dynamic_consensus_threshold(answer_ids, rewards > 0 if correct is None else correct, group_ids,
                                            strategy.n, min_k=min_k)
    w, metrics = cat_weights(strategy, rewards=rewards, group_ids=group_ids, form=form, p=p, k=k,
                             weight_clip=weight_clip, normalize=normalize)
    a = jax.lax.stop_gradient(adv * w.astype(adv.dtype))[:, None]  # [B, 1]

    log_ratio = logprobs - old
    ratio = jnp.exp(log_ratio)
    if clip_eps_low is None and clip_eps_high is None:
        pg = -ratio * a
        clip_active = jnp.zeros(ratio.shape, bool)
    else:
        lo = 1.0 - (clip_eps_low if clip_eps_low is not None else clip_eps_high)
        hi = 1.0 + (clip_eps_high if clip_eps_high is not None else clip_eps_low)
        unclipped = ratio * a
        clipped = jnp.clip(ratio, lo, hi) * a
        pg = -jnp.minimum(unclipped, clipped)
        clip_active = clipped < unclipped
    per_token = pg
    num_tokens = jnp.maximum(jnp.sum(mask), 1)
    if beta:
        if ref_logprobs is None:
            raise ValueError("cat_rl_loss: beta > 0 needs ref_logprobs")
        delta = jax.lax.stop_gradient(jnp.asarray(ref_logprobs)) - logprobs
        kl = jnp.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
        kl_mean = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(kl), 0)) / num_tokens
    elif ref_logprobs is not None:
        delta = jnp.asarray(ref_logprobs) - jax.lax.stop_gradient(logprobs)
        kl_mean = jnp.sum(jnp.where(mask, jnp.exp(delta) - delta - 1.0, 0)) / num_tokens
    else:
        kl_mean = jnp.zeros((), jnp.float32)
    loss = _reduce(per_token, mask, reduction, jnp.asarray(b))
    metrics.update({
        "loss": loss,
        "pg_loss": jax.lax.stop_gradient(_reduce(pg, mask, reduction, jnp.asarray(b))),
        "kl": kl_mean,
        "ppo_clip_frac": jnp.sum(clip_active & mask) / num_tokens,
        "ratio_mean": jnp.sum(jnp.where(mask, jax.lax.stop_gradient(ratio), 0)) / num_tokens,
        "adv_abs_mean": jnp.mean(jnp.abs(adv)),
        "weighted_adv_abs_mean": jnp.mean(jnp.abs(a)),
        "reward_mean": jnp.mean(rewards.astype(jnp.float32)),
    })
    if k is not None:
        metrics["consensus_k_mean"] = jnp.mean(k.astype(jnp.float32))
    return loss, metrics
