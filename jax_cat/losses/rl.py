"""The RL objective (`cat_rl_loss`): GRPO's clipped surrogate on CAT-weighted advantages, plus an optional k3 KL.

Per token or per sequence (``surrogate``), reduced like SFT (jax_cat.losses.reduce); with the whole batch's
advantages and `loss_denominator`, micro-batch losses and gradients sum exactly to the whole batch's.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jax_cat.losses.advantages import cat_advantages
from jax_cat.losses.arrays import _check_1d, _masked_seq_sum
from jax_cat.losses.config import CATLossConfig, resolve_config
from jax_cat.losses.reduce import LossDenominator, as_denominator, local_denominator, reduce_sequences
from jax_cat.losses.reduce import loss_denominator as _loss_denominator
from jax_cat.losses.state import CATState
from jax_cat.losses.strategies import Strategy


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
    >>> from jax_cat.losses import PassAtN
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
