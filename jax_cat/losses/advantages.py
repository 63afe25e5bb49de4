"""Advantages: GRPO's group-centred advantages (`group_advantages`) and their CAT-weighted form (`cat_advantages`).

`cat_advantages` is computed once over a whole logical (rollout) batch: the group statistics, the success
estimates and the weight normalisation all need every row; its result is then sliced per micro-batch and fed to
`cat_rl_loss(..., advantages=...)`.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jax_cat.losses.arrays import _check_1d, _segment_sum, group_index
from jax_cat.losses.config import CATLossConfig, resolve_config
from jax_cat.losses.state import CATState, history_append, history_quantiles
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN, Strategy
from jax_cat.losses.success import dynamic_consensus_threshold, success_from_group, success_from_logprobs
from jax_cat.losses.weights import _cat_weights


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
