"""Values of jax_cat/losses/cat.py that the other loss tests leave open, found by mutation testing (issue 15):
PPO clipping bounds and metrics, the sequence surrogate, the KL terms, SFT metrics, advantage metrics with padding
rows, and the errors' offending names. Every expected number is worked out by hand in the comments (textbook
PPO / GRPO / k3 formulas, Laplace p, the closed-form pass@N weights), never by calling the code under test.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.losses import (BestOfN, MajorityAtN, PassAtN, cat_advantages, cat_rl_loss, cat_sft_loss, cat_weights,
                            init_cat_state)
from jax_cat.losses.cat import (consensus_threshold, dynamic_consensus_threshold, estimate_success, group_advantages,
                                group_index, group_quantiles, token_logprobs)

E = math.exp
# Three sequences, the third empty (all masked). Ratios rho = exp(lp - old) on the valid tokens:
#   row 0 (A = 2):  exp(0.3), 1          row 1 (A = -1):  1, exp(0.6), exp(-0.3)
LP = jnp.asarray([[-1.0, -0.5, -2.0], [-0.2, -0.3, -0.4], [-1.0, -1.0, -1.0]])
OLD = jnp.asarray([[-1.3, -0.5, -1.0], [-0.2, -0.9, -0.1], [0.0, 0.0, 0.0]])
MASK = jnp.asarray([[1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
ADV = jnp.asarray([2.0, -1.0, 5.0])
RATIO_MEAN = (E(0.3) + 1 + 1 + E(0.6) + E(-0.3)) / 5  # 1.18256, over the 5 valid tokens


def rl(**kw):
    return cat_rl_loss(LP, OLD, kw.pop("ref", None), None, None, MASK, PassAtN(1), advantages=ADV, **kw)


# ------------------------------------------------------------------------------------------------------------
# policy term
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction,want", [("token_mean", -0.18757624), ("token_sum", -0.31262707),
                                            ("sequence_mean", -0.53631353)])
def test_token_surrogate_ppo_clip_by_hand(reduction, want):
    """-min(rho A, clip(rho, 0.8, 1.28) A) per token: [2.56, 2, -1, -exp(0.6), -0.8] (tokens 1 and 5 clipped).
    token_mean: -0.9379/5; token_sum: /3 rows; sequence_mean: -(4.56/2 + (-3.6221)/3)/2 non-empty rows."""
    loss, m = rl(clip_eps_low=0.2, clip_eps_high=0.28, reduction=reduction)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["pg_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(m["ppo_clip_frac"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_mean"], RATIO_MEAN, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], 0.0)


def test_token_surrogate_gradient_is_zero_on_clipped_tokens():
    """d/dlp of -min(...)/5: clipped tokens 0, others -rho A / 5: [0, -0.4, 0; 0.2, exp(0.6)/5, 0; 0, 0, 0]."""
    g = jax.grad(lambda x: cat_rl_loss(x, OLD, None, None, None, MASK, PassAtN(1), advantages=ADV,
                                       clip_eps_low=0.2, clip_eps_high=0.28)[0])(LP)
    np.testing.assert_allclose(g, [[0, -0.4, 0], [0.2, E(0.6) / 5, 0], [0, 0, 0]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw,want,frac", [
    (dict(clip_eps_low=0.2), -0.15557624, 0.4),  # one eps given: [0.8, 1.2]; token 1 -> 1.2 * 2 = 2.4
    (dict(clip_eps_high=0.28), -0.19941260, 0.2),  # [0.72, 1.28]: exp(-0.3) = 0.741 > 0.72 is no longer clipped
    (dict(), -0.22735612, 0.0),  # no clipping: -sum(rho A)/5
])
def test_one_sided_clip_uses_the_same_eps_for_both_bounds(kw, want, frac):
    loss, m = rl(**kw)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["ppo_clip_frac"], frac, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction,want", [("token_mean", -0.24202824), ("token_sum", -0.40338040),
                                            ("sequence_mean", -0.41502353)])
def test_sequence_surrogate_by_hand(reduction, want):
    """One ratio per sequence, exp(sum of valid lp - old) = exp(0.3) for rows 0 and 1; row 2 (empty) adds nothing.
    Row 0: min(2 exp(0.3), 1.28 * 2) = 2.56 (clipped); row 1: min(-exp(0.3), -1.28) = -exp(0.3) (not clipped)."""
    loss, m = rl(clip_eps_low=0.2, clip_eps_high=0.28, surrogate="sequence", reduction=reduction)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["ppo_clip_frac"], 1 / 2, rtol=1e-6)  # of the 2 non-empty sequences
    np.testing.assert_allclose(m["ratio_mean"], E(0.3), rtol=1e-5)
    # a one-token sequence counts as a sequence: rows of 1, 3, 0 tokens -> row 0 (ratio exp(0.3), A = 2) clipped,
    # row 1 not: 1 of the 2 non-empty sequences
    _, m1 = cat_rl_loss(LP, OLD, None, None, None, MASK.at[0, 1].set(False), PassAtN(1), advantages=ADV,
                        clip_eps_low=0.2, clip_eps_high=0.28, surrogate="sequence")
    np.testing.assert_allclose(m1["ppo_clip_frac"], 1 / 2, rtol=1e-6)
    unclipped, _ = rl(surrogate="sequence", reduction="token_sum")
    np.testing.assert_allclose(unclipped, -(2 * E(0.3) - E(0.3)) / 3, rtol=1e-5)  # -rho A summed over rows / 3


# k3 = exp(d) - d - 1 with d = ref - lp = [0.5, -0.5, (masked); 0, 1, -1; (empty)]
DELTA = jnp.asarray([[0.5, -0.5, 7.0], [0.0, 1.0, -1.0], [3.0, 3.0, 3.0]])
K3 = [E(0.5) - 1.5, E(-0.5) - 0.5, 0.0, E(1) - 2, E(-1)]


def test_kl_metric_and_both_kl_terms_by_hand():
    ref = LP + DELTA
    loss0, m0 = rl(ref=ref)  # beta = 0: the metric is reported, the loss is the policy term alone
    np.testing.assert_allclose(m0["kl"], sum(K3) / 5, rtol=1e-5)  # 0.26828 per valid token
    np.testing.assert_allclose(loss0, -0.22735612, rtol=1e-5)
    loss_tok, _ = rl(ref=ref, beta=0.1, kl="token")  # + beta * sum k3 / 5 tokens
    np.testing.assert_allclose(loss_tok, -0.22735612 + 0.1 * sum(K3) / 5, rtol=1e-5)
    loss_seq, _ = rl(ref=ref, beta=0.1)  # + beta * mean over the 2 non-empty rows of each row's token-mean k3
    np.testing.assert_allclose(loss_seq, -0.22735612 + 0.1 * ((K3[0] + K3[1]) / 2 + sum(K3[2:]) / 3) / 2, rtol=1e-5)
    g = jax.grad(lambda x: cat_rl_loss(x, x, ref, None, None, MASK, PassAtN(1), advantages=jnp.zeros(3),
                                       beta=1.0, kl="token")[0])(LP)
    # d k3 / d lp = 1 - exp(ref - lp), divided by 5 tokens
    np.testing.assert_allclose(g, np.where(MASK, (1 - np.exp(np.asarray(DELTA))) / 5, 0), rtol=1e-5, atol=1e-7)


def test_scalar_denominator_with_sequence_kl_needs_the_full_result():
    with pytest.raises(ValueError, match="loss_denominator"):
        rl(ref=LP, beta=0.1, loss_denominator=5.0)
    loss, _ = rl(ref=LP + DELTA, beta=0.1, kl="token", loss_denominator=10.0)  # a scalar is fine for the token KL
    np.testing.assert_allclose(loss, (-0.22735612 + 0.1 * sum(K3) / 5) * 5 / 10, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# SFT metrics
# ------------------------------------------------------------------------------------------------------------
# sequence log-probs -0.3 and -1.0 -> p = exp(-0.3), exp(-1); pass@2: -log S = -log(1 - (1-p)^2),
# sft_weight = 2 p (1-p) / (1 - (1-p)^2) = 2 (1-p) / (2-p)
SFT_LP = jnp.asarray([[-0.1, -0.2, -5.0], [-1.0, -7.0, -7.0]])
SFT_MASK = jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)
P = [E(-0.3), E(-1.0)]
NLS = [-math.log(1 - (1 - p) ** 2) for p in P]  # 0.069546, 0.510119
W = [2 * (1 - p) / (2 - p) for p in P]  # 0.411670, 0.774598


@pytest.mark.parametrize("reduction,want", [("token_mean", sum(NLS) / 3), ("token_sum", sum(NLS) / 2),
                                            ("sequence_mean", (NLS[0] / 2 + NLS[1]) / 2)])
def test_sft_loss_and_metrics_by_hand(reduction, want):
    loss, m = cat_sft_loss(None, None, SFT_MASK, PassAtN(2), logprobs=SFT_LP, reduction=reduction)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(m["ce_token_mean"], 1.3 / 3, rtol=1e-5)
    np.testing.assert_allclose(m["seq_logp_mean"], -0.65, rtol=1e-5)
    np.testing.assert_allclose(m["p_mean"], sum(P) / 2, rtol=1e-5)
    np.testing.assert_allclose(m["sft_weight_mean"], sum(W) / 2, rtol=1e-5)
    np.testing.assert_allclose(m["sft_weight_max"], W[1], rtol=1e-5)


def test_sft_gradient_and_errors():
    g = jax.grad(lambda x: cat_sft_loss(None, None, SFT_MASK, PassAtN(2), logprobs=x)[0])(SFT_LP)
    np.testing.assert_allclose(g, [[-W[0] / 3, -W[0] / 3, 0], [-W[1] / 3, 0, 0]], rtol=1e-5)  # -w_b / 3 tokens
    with pytest.raises(ValueError, match="mask"):
        cat_sft_loss(None, None, SFT_MASK[:, :2], PassAtN(2), logprobs=SFT_LP)
    with pytest.raises(ValueError, match="logits"):
        token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="logits"):
        token_logprobs(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))
    # token_logprobs against log_softmax by hand: logits [0, ln 3] -> log p = [log 1/4, log 3/4]
    logits = jnp.asarray([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    lp = token_logprobs(logits, jnp.asarray([[0, 1]]))
    np.testing.assert_allclose(lp, [[math.log(0.25), math.log(0.75)]], rtol=1e-6)
    with jax.enable_x64(True):  # at least float32, never wider than the logits: no float64 copy of [B, T, V]
        for dt, want in ((jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32), (jnp.float64, jnp.float64)):
            assert token_logprobs(logits.astype(dt), jnp.asarray([[0, 1]])).dtype == want


# ------------------------------------------------------------------------------------------------------------
# advantages and weights: metrics with a padding row
# ------------------------------------------------------------------------------------------------------------
# prompt 0: 1 of 4 correct; prompt 1: 2 of 2; prompt 2: 0 of 2 plus a padding row (reward 0.5 would be refused
# if it counted). Laplace p = 2/6, 3/4, 1/4; pass@4 raw weight 4 (1-p)^3 = 32/27, 1/16, 27/16.
R = jnp.asarray([1.0, 0, 0, 0, 1, 1, 0, 0, 0.5])
G = jnp.asarray([0, 0, 0, 0, 1, 1, 2, 2, 2])
SM = jnp.asarray([True] * 8 + [False])
A0 = 0.75 / (0.5 + 1e-4)  # prompt 0: r - mean = 0.75, unbiased std 0.5; the others -0.25 / 0.5001
W4 = [32 / 27] * 4 + [1 / 16] * 2 + [27 / 16] * 2
BATCH_MEAN = sum(W4) / 8


def test_advantage_metrics_with_a_padding_row():
    adv, m = cat_advantages(PassAtN(4), rewards=R, group_ids=G, sample_mask=SM, normalize="none")
    np.testing.assert_allclose(adv[:4], np.array([A0, -A0 / 3, -A0 / 3, -A0 / 3]) * 32 / 27, rtol=1e-5)
    np.testing.assert_array_equal(adv[4:], 0.0)
    np.testing.assert_allclose(m["reward_mean"], 3 / 8, rtol=1e-6)
    np.testing.assert_allclose(m["frac_all_wrong"], 2 / 8, rtol=1e-6)
    np.testing.assert_allclose(m["adv_abs_mean"], 2 * A0 / 8, rtol=1e-5)
    np.testing.assert_allclose(m["weighted_adv_abs_mean"], 2 * A0 * 32 / 27 / 8, rtol=1e-5)
    np.testing.assert_allclose(m["success_mean"], (4 * 2 / 6 + 2 * 3 / 4 + 2 * 1 / 4) / 8, rtol=1e-5)
    np.testing.assert_allclose(m["weight_batch_mean"], BATCH_MEAN, rtol=1e-5)
    np.testing.assert_allclose(m["weight_max"], 27 / 16, rtol=1e-5)
    np.testing.assert_allclose(m["weight_raw_mean"], 32 / 27, rtol=1e-5)  # prompt 0 is the only mixed one
    np.testing.assert_allclose(m["frac_mixed_groups"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["weight_scale"], 1.0)
    np.testing.assert_allclose(m["rewards_binary"], 1.0)
    _, mb = cat_advantages(PassAtN(4), rewards=R, group_ids=G, sample_mask=SM)  # "batch": divide by the mean
    np.testing.assert_allclose(mb["weight_scale"], BATCH_MEAN, rtol=1e-5)
    np.testing.assert_allclose(mb["weight_max"], 27 / 16 / BATCH_MEAN, rtol=1e-5)
    np.testing.assert_allclose(mb["weight_mean"], 32 / 27 / BATCH_MEAN, rtol=1e-5)
    _, mc = cat_advantages(PassAtN(4), rewards=R, group_ids=G, sample_mask=SM, normalize="none", weight_clip=1.1)
    np.testing.assert_allclose(mc["weight_frac_clipped"], 1.0)  # all 4 mixed samples (32/27 > 1.1) are clipped
    np.testing.assert_allclose(mc["weight_max"], 1.1, rtol=1e-6)  # 27/16 too, though prompt 2 is not mixed
    with pytest.raises(ValueError, match="0/1"):
        cat_advantages(PassAtN(4), rewards=R, group_ids=G)  # without the mask the 0.5 counts and is refused


def test_weights_of_padded_rows_are_zero_and_normalize_modes():
    p = jnp.asarray([2 / 6] * 4 + [3 / 4] * 2 + [1 / 4] * 3)
    w, m = cat_weights(PassAtN(4), rewards=R, group_ids=G, p=p, sample_mask=SM, normalize="none")
    np.testing.assert_allclose(w, W4 + [0.0], rtol=1e-5)
    np.testing.assert_allclose(m["success_mean"], (4 * 2 / 6 + 2 * 3 / 4 + 2 * 1 / 4) / 8, rtol=1e-5)
    wt, mt = cat_weights(PassAtN(4), rewards=R, group_ids=G, p=p, sample_mask=SM, normalize="batch")
    np.testing.assert_allclose(wt, np.array(W4 + [0.0]) / BATCH_MEAN, rtol=1e-5)
    np.testing.assert_allclose(mt["weight_scale"], BATCH_MEAN, rtol=1e-5)
    for old in (True, False):  # the bool switch is gone (CHANGELOG.md): refused, naming the mode to give
        with pytest.raises(ValueError, match=r"^normalize takes a mode: 'batch' \(was True\) or 'none' \(was False\)"):
            cat_weights(PassAtN(4), rewards=R, group_ids=G, p=p, sample_mask=SM, normalize=old)


def test_all_zero_weights_stay_zero_and_unscaled():
    """pass@4 raw weight 4 (1-p)^3 is 0 at p = 1: nothing to normalise by (no NaN)."""
    w, m = cat_weights(PassAtN(4), rewards=jnp.asarray([1.0, 0, 1, 0]), group_ids=jnp.asarray([0, 0, 1, 1]),
                       p=jnp.ones(4))
    np.testing.assert_array_equal(w, 0.0)
    np.testing.assert_allclose(m["weight_scale"], 1.0)
    np.testing.assert_allclose(m["weight_batch_mean"], 0.0)


def test_non_binary_rewards_under_jit_give_nan_not_an_error():
    r, g = jnp.asarray([0.5, 0.0, 1.0, 0.0]), jnp.asarray([0, 0, 1, 1])
    adv, m = jax.jit(lambda x: cat_advantages(PassAtN(4), rewards=x, group_ids=g))(r)
    assert np.all(np.isnan(np.asarray(adv)))
    np.testing.assert_allclose(m["rewards_binary"], 0.0)
    with pytest.raises(ValueError, match=r"pass@4.*0/1.*0\.5"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g)
    # correct= states correctness: graded rewards are then fine (A from the rewards, p from correct)
    adv2, m2 = cat_advantages(PassAtN(4), rewards=r, group_ids=g, correct=jnp.asarray([1, 0, 1, 0], bool),
                              normalize="none")
    a = 0.25 / (math.sqrt(0.125) + 1e-4)  # prompt 0: rewards 0.5, 0 -> +-0.25, unbiased std sqrt(0.125)
    np.testing.assert_allclose(adv2[:2], np.array([a, -a]) * 4 * (1 - 0.5) ** 3, rtol=1e-5)  # p = (1+1)/(2+2)
    np.testing.assert_allclose(m2["rewards_binary"], 0.0)


def test_best_of_n_accepts_graded_rewards_and_refuses_them_with_a_penalty():
    r, g = jnp.asarray([0.5, 0.2, 3.0, 0.0]), jnp.asarray([0, 0, 1, 1])
    adv, m = cat_advantages(BestOfN(4), rewards=r, group_ids=g, normalize="none")
    q = np.array([2 / 3, 1 / 3, 2 / 3, 1 / 3])  # (#strictly lower + 1) / (M + 1)
    np.testing.assert_allclose(m["success_mean"], q.mean(), rtol=1e-6)
    a = np.array([0.15, -0.15, 1.5, -1.5]) / (np.array([0.15, 0.15, 1.5, 1.5]) * math.sqrt(2) + 1e-4)
    np.testing.assert_allclose(adv, a * 4 * q ** 3, rtol=1e-5)
    with pytest.raises(ValueError, match="all-wrong penalty"):
        cat_advantages(BestOfN(4), rewards=r, group_ids=g, all_wrong_penalty=0.5)


# ------------------------------------------------------------------------------------------------------------
# estimates and thresholds
# ------------------------------------------------------------------------------------------------------------
def test_group_index_and_quantile_dtype():
    np.testing.assert_array_equal(group_index(jnp.asarray([9, -4, 9, 0])), [2, 0, 2, 1])
    with pytest.raises(ValueError, match="group_ids"):
        group_index(jnp.zeros((2, 2), jnp.int32))
    q = group_quantiles(jnp.asarray([3, 1, 2]), jnp.zeros(3, jnp.int32))  # int rewards -> float quantiles
    assert q.dtype == jnp.float32
    np.testing.assert_allclose(q, [3 / 4, 1 / 4, 2 / 4], rtol=1e-6)


def test_success_from_logprobs_caps_p_at_one_and_keeps_float64():
    """Rounding can make a summed log-prob slightly positive: p is clipped to exp(0) = 1, never above."""
    lp, mask = jnp.asarray([[0.2, 0.1], [-0.5, 0.0]]), jnp.ones((2, 2), bool)
    np.testing.assert_allclose(estimate_success(old_logprobs=lp, mask=mask, method="sequence"), [1.0, E(-0.5)],
                               rtol=1e-6)
    with jax.enable_x64(True):  # float64 rewards keep float64 quantiles (no silent float32 rounding)
        q = group_quantiles(jnp.asarray([0.5, 0.25], jnp.float64), jnp.zeros(2, jnp.int32))
        assert q.dtype == jnp.float64
        np.testing.assert_allclose(q, [2 / 3, 1 / 3], rtol=1e-12)


def test_estimate_success_methods_and_errors():
    r, g = jnp.asarray([1.0, 0, 0, 3.0]), jnp.asarray([0, 0, 1, 1])
    np.testing.assert_allclose(estimate_success(rewards=r, group_ids=g, method="quantile"), [2 / 3, 1 / 3, 1 / 3, 2 / 3],
                               rtol=1e-6)
    np.testing.assert_allclose(estimate_success(correct=jnp.asarray([0, 0, 1, 1], bool), group_ids=g, smoothing=0.5),
                               [0.5 / 3, 0.5 / 3, 2.5 / 3, 2.5 / 3], rtol=1e-6)  # (c + s)/(M + 2s)
    lp, mask = jnp.full((2, 3), -30.0), jnp.ones((2, 3), bool)
    np.testing.assert_allclose(estimate_success(old_logprobs=lp, mask=mask, method="sequence", logp_floor=-60.0),
                               [math.exp(-60.0)] * 2, rtol=1e-5)  # sum -90, floored at -60
    with pytest.raises(ValueError, match="old_logprobs and mask"):
        estimate_success(old_logprobs=lp, method="sequence")
    with pytest.raises(ValueError, match="group_ids"):
        estimate_success(rewards=r)
    with pytest.raises(ValueError, match="rewards or correct"):
        estimate_success(group_ids=g)
    with pytest.raises(ValueError, match="needs rewards"):
        estimate_success(group_ids=g, method="quantile")
    with pytest.raises(ValueError, match="method"):
        estimate_success(rewards=r, group_ids=g, method="median")


def test_consensus_threshold_arguments():
    with pytest.raises(ValueError, match="non-empty"):
        consensus_threshold([], [], 8)
    with pytest.raises(ValueError, match="equal length"):
        consensus_threshold(["a"], [True, False], 8)
    with pytest.raises(ValueError, match="no_answer"):
        consensus_threshold(["a"], [True], 8, no_answer="skip")
    with pytest.raises(ValueError, match="min_k"):
        dynamic_consensus_threshold(jnp.zeros(2, jnp.int32), jnp.ones(2, bool), jnp.zeros(2, jnp.int32), 8, min_k=6)
    with pytest.raises(ValueError, match="no_answer"):
        dynamic_consensus_threshold(jnp.zeros(2, jnp.int32), jnp.ones(2, bool), jnp.zeros(2, jnp.int32), 8,
                                    no_answer="skip")
    with pytest.raises(ValueError, match="answer_ids"):
        dynamic_consensus_threshold(jnp.zeros((2, 1), jnp.int32), jnp.ones(2, bool), jnp.zeros(2, jnp.int32), 8)
    with pytest.raises(ValueError, match="correct"):
        dynamic_consensus_threshold(jnp.zeros(3, jnp.int32), jnp.ones(2, bool), jnp.zeros(3, jnp.int32), 8)
    # min_k = 1 lets the threshold fall to floor(n c_w / M) + 1 = 1 when no rollout is wrong (pass@n)
    assert consensus_threshold(["a", "a"], [True, True], 8, min_k=1) == 1
    np.testing.assert_array_equal(dynamic_consensus_threshold(jnp.zeros(2, jnp.int32), jnp.ones(2, bool),
                                                              jnp.zeros(2, jnp.int32), 8, min_k=1), [1, 1])
    # wrong answers "b" x2 and "c" x1 of M = 4 at n = 6: c_w = 2 (the strongest, not the total 3) -> floor(12/4)+1 = 4
    assert consensus_threshold(["a", "b", "b", "c"], [True, False, False, False], 6) == 4
    np.testing.assert_array_equal(dynamic_consensus_threshold(jnp.asarray([0, 1, 1, 2]),
                                                              jnp.asarray([1, 0, 0, 0], bool),
                                                              jnp.zeros(4, jnp.int32), 6), [4] * 4)


# ------------------------------------------------------------------------------------------------------------
# errors name the offending input
# ------------------------------------------------------------------------------------------------------------
def test_cat_advantages_errors_name_the_input():
    r, g = jnp.asarray([1.0, 0, 0, 1]), jnp.asarray([0, 0, 1, 1])
    with pytest.raises(ValueError, match="rewards"):
        cat_advantages(PassAtN(4), rewards=r[None], group_ids=g)
    with pytest.raises(ValueError, match="group_ids"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g[:3])
    with pytest.raises(ValueError, match="correct"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g, correct=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="sample_mask"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g, sample_mask=jnp.ones(5, bool))
    with pytest.raises(TypeError, match="strategy"):
        cat_advantages("pass@4", rewards=r, group_ids=g)
    with pytest.raises(ValueError, match="old_logprobs"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g, p_source="sequence")
    with pytest.raises(ValueError, match="old_logprobs"):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g, p_source="sequence", old_logprobs=jnp.zeros((4, 3)),
                       mask=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="need state="):
        cat_advantages(PassAtN(4), rewards=r, group_ids=g, normalize="running")
    with pytest.raises(ValueError, match="state"):
        cat_advantages(BestOfN(4), rewards=r, group_ids=g, bon_quantile="history")
    with pytest.raises(ValueError, match=r"min_k must be in \[1, n//2\+1=3\], got 4"):  # maj@4: k <= 3
        cat_advantages(MajorityAtN(4), rewards=r, group_ids=g, answer_ids=jnp.asarray([0, 1, 0, 0]), min_k=4)
    # ... but min_k plays no role without answer_ids, and BoN with history only needs the state
    cat_advantages(MajorityAtN(4), rewards=r, group_ids=g, min_k=4)
    cat_advantages(BestOfN(4), rewards=r, group_ids=g, bon_quantile="history", state=init_cat_state(8))


def test_cat_weights_and_rl_loss_errors_name_the_input():
    r, g, p = jnp.asarray([1.0, 0, 0, 1]), jnp.asarray([0, 0, 1, 1]), jnp.full((4,), 0.5)
    with pytest.raises(ValueError, match="state"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g, p=p, normalize="running")
    with pytest.raises(ValueError, match="normalize"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g, p=p, normalize="mean")
    with pytest.raises(ValueError, match="form"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g, p=p, form="exp")
    with pytest.raises(ValueError, match="needs p"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g)
    with pytest.raises(ValueError, match="p must"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g, p=p[:3])
    with pytest.raises(TypeError, match="strategy"):
        cat_weights(object(), rewards=r, group_ids=g, p=p)
    with pytest.raises(ValueError, match="^q must have shape"):
        cat_weights(BestOfN(4), rewards=r, group_ids=g, q=p[:3])
    with pytest.raises(ValueError, match="^cat_weights: sample_mask must"):
        cat_weights(PassAtN(4), rewards=r, group_ids=g, p=p, sample_mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="logprobs"):
        cat_rl_loss(LP[0], None, None, None, None, MASK[0], PassAtN(1), advantages=ADV)
    with pytest.raises(ValueError, match="old_logprobs"):
        cat_rl_loss(LP, OLD[:2], None, None, None, MASK, PassAtN(1), advantages=ADV)
    with pytest.raises(ValueError, match="ref_logprobs"):
        cat_rl_loss(LP, OLD, OLD[:, :2], None, None, MASK, PassAtN(1), advantages=ADV)
    with pytest.raises(ValueError, match="advantages"):
        cat_rl_loss(LP, OLD, None, None, None, MASK, PassAtN(1), advantages=ADV[:2])
    for r, g in ((None, None), (ADV, None), (None, jnp.asarray([0, 0, 1]))):  # either one missing
        with pytest.raises(ValueError, match="rewards and group_ids"):
            cat_rl_loss(LP, OLD, None, r, g, MASK, PassAtN(1))
    with pytest.raises(ValueError, match="^rewards must have shape"):
        cat_rl_loss(LP, OLD, None, ADV[:2], None, MASK, PassAtN(1), advantages=ADV)
    with pytest.raises(ValueError, match=r"be loss_denominator\(full_mask, reduction\)"):  # what to pass instead
        rl(ref=LP, beta=0.1, loss_denominator=5.0)


def test_group_advantages_dtype_and_traced_padding_mask():
    r, g = jnp.asarray([1.0, 0.0, 0.0, 1.0]), jnp.asarray([0, 0, 1, 1])
    with jax.enable_x64(True):  # float32 rewards stay float32; float64 stay float64 (exact 1/sqrt(1/2) values)
        assert group_advantages(r.astype(jnp.float32), g).dtype == jnp.float32
        a64 = group_advantages(r.astype(jnp.float64), g, eps=0.0)
        assert a64.dtype == jnp.float64
        np.testing.assert_allclose(a64, np.array([1, -1, -1, 1]) * 0.5 / math.sqrt(0.5), rtol=1e-12)
    with pytest.raises(ValueError, match="^group_advantages: sample_mask must"):
        group_advantages(r, g, sample_mask=jnp.ones(3, bool))
    # a traced padding mask with concrete rewards: the eager 0/1 check must step aside, not fail on the tracer
    sm = jnp.asarray([True, True, True, False])
    adv = jax.jit(lambda m: cat_advantages(PassAtN(1), rewards=r, group_ids=g, sample_mask=m)[0])(sm)
    np.testing.assert_allclose(adv, [0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0.0, 0.0],
                               rtol=1e-5)
