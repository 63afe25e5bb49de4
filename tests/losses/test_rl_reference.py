"""The CAT RL objective against independent numbers: the authors' reference (compute-aligned-training) and hand
computations, and exactness under micro-batching (issue 9)."""
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.losses import (REFERENCE_MAJORITY, REFERENCE_PASS_AT_N, BestOfN, CATLossConfig, MajorityAtN, PassAtN,
                            cat_advantages, cat_rl_loss, cat_sft_loss, cat_weights, consensus_threshold,
                            dynamic_consensus_threshold, init_cat_state, loss_denominator)

# 4 prompts x 4 rollouts with 1, 4, 0 and 0 correct (the worked case; the paper's 4 prompts x 4 rollouts)
WORKED_REWARDS = jnp.asarray([1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], jnp.float32)
WORKED_GROUPS = jnp.repeat(jnp.arange(4), 4)


def worked_raw_weights():
    """pass@16 raw weight 16 (1-p)^15 at Laplace p = (c+1)/(4+2), in float64 by hand."""
    p = np.array([2 / 6, 5 / 6, 1 / 6, 1 / 6]).repeat(4)
    return 16 * (1 - p) ** 15


# ------------------------------------------------------------------------------------------------------------
# normalisation scope
# ------------------------------------------------------------------------------------------------------------
def test_batch_normalisation_worked_case_gives_0069():
    """Reference: weights divided by their mean over ALL samples of the logical batch -> prompt 0 gets 0.069."""
    raw = worked_raw_weights()
    want = raw / raw.mean()
    assert round(want[0], 3) == 0.069  # the figure, from the hand formula
    w, m = cat_weights(PassAtN(16), rewards=WORKED_REWARDS, group_ids=WORKED_GROUPS,
                       p=jnp.asarray(np.array([2 / 6, 5 / 6, 1 / 6, 1 / 6]).repeat(4), jnp.float32))
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(m["weight_scale"], raw.mean(), rtol=1e-5)
    # the same through cat_advantages (Laplace p computed from the rewards): A'_0 = A_0 * 0.069
    adv, _ = cat_advantages(PassAtN(16), rewards=WORKED_REWARDS, group_ids=WORKED_GROUPS)
    a0 = 0.75 / (0.5 + 1e-4)  # r - mean = 0.75, unbiased std = 0.5
    np.testing.assert_allclose(adv[:4], np.array([a0, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]) * want[0],
                               rtol=1e-5)
    np.testing.assert_array_equal(adv[4:], 0.0)  # unmixed prompts: A = 0


def test_one_mixed_prompt_under_each_mode():
    """Only prompt 0 is mixed: "mixed" makes its weight exactly 1 (CAT vanishes); "batch" 0.069; "none" raw."""
    raw = worked_raw_weights()
    p = jnp.asarray(np.array([2 / 6, 5 / 6, 1 / 6, 1 / 6]).repeat(4), jnp.float32)
    kw = dict(rewards=WORKED_REWARDS, group_ids=WORKED_GROUPS, p=p)
    got = {mode: float(cat_weights(PassAtN(16), normalize=mode, **kw)[0][0]) for mode in ("batch", "mixed", "none")}
    np.testing.assert_allclose(got["mixed"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(got["batch"], raw[0] / raw.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["none"], 16 * (2 / 3) ** 15, rtol=1e-5)
    # running: the first step equals "batch"; the second divides by the bias-corrected exponential mean
    state = init_cat_state()
    w1, m1 = cat_weights(PassAtN(16), normalize="running", state=state, **kw)
    np.testing.assert_allclose(w1, raw / raw.mean(), rtol=1e-5, atol=1e-12)
    p2 = jnp.full((16,), 0.5, jnp.float32)  # a second batch with mean weight 16 * 0.5^15
    w2, m2 = cat_weights(PassAtN(16), normalize="running", state=m1["state"], rewards=WORKED_REWARDS,
                         group_ids=WORKED_GROUPS, p=p2)
    mean2 = 16 * 0.5 ** 15
    scale2 = (0.9 * 0.1 * raw.mean() + 0.1 * mean2) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(m2["weight_scale"], scale2, rtol=1e-5)
    np.testing.assert_allclose(w2[0], mean2 / scale2, rtol=1e-5)
    assert int(m2["state"].norm_steps) == 2


def test_single_prompt_batch_stays_raw_as_in_reference():
    """Dividing one prompt's weight by itself would cancel CAT: the reference keeps it raw (so do we)."""
    r = jnp.asarray([1.0, 0.0, 0.0, 0.0])
    w, m = cat_weights(PassAtN(4), rewards=r, group_ids=jnp.zeros(4, jnp.int32), p=jnp.full((4,), 1 / 3))
    np.testing.assert_allclose(w, 4 * (2 / 3) ** 3, rtol=1e-6)
    np.testing.assert_allclose(m["weight_scale"], 1.0)


def test_reference_two_prompt_normalisation_keeps_ratios():
    """Reference test: [[1,0,0,0],[1,1,1,0]], pass@4 -> mean 1 and the prompts' raw weight ratio is kept."""
    r = jnp.asarray([1.0, 0, 0, 0, 1, 1, 1, 0])
    g = jnp.repeat(jnp.arange(2), 4)
    p = np.array([2 / 6] * 4 + [4 / 6] * 4)
    wn, m = cat_weights(PassAtN(4), rewards=r, group_ids=g, p=jnp.asarray(p, jnp.float32))
    raw = 4 * (1 - p) ** 3
    np.testing.assert_allclose(float(jnp.mean(wn)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(wn[0] / wn[4], raw[0] / raw[4], rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# dynamic majority threshold
# ------------------------------------------------------------------------------------------------------------
def test_no_answer_rollouts_are_one_rival_k5():
    """Reference test: answers [None, None, correct, correct], N = 8 -> k = 5 (ours used to give 2)."""
    ids, ok, g = jnp.asarray([-1, -1, 0, 0]), jnp.asarray([0, 0, 1, 1], bool), jnp.zeros(4, jnp.int32)
    np.testing.assert_array_equal(dynamic_consensus_threshold(ids, ok, g, 8), [5] * 4)
    np.testing.assert_array_equal(dynamic_consensus_threshold(ids, ok, g, 8, no_answer="abstain"), [2] * 4)
    assert consensus_threshold([None, None, "yes", "yes"], [False, False, True, True], 8) == 5
    assert consensus_threshold([None, None, "yes", "yes"], [False, False, True, True], 8, no_answer="abstain") == 2


@pytest.mark.parametrize("n,c,m,expected", [(8, 0, 8, 2), (8, 1, 8, 2), (8, 3, 8, 4), (8, 8, 8, 5), (4, 8, 8, 3)])
def test_threshold_table_from_reference(n, c, m, expected):
    ids = jnp.asarray([1] * c + [0] * (m - c))
    ok = jnp.asarray([False] * c + [True] * (m - c))
    np.testing.assert_array_equal(dynamic_consensus_threshold(ids, ok, jnp.zeros(m, jnp.int32), n), expected)


def test_majority_weight_is_binomial_formula_at_dynamic_k():
    """Reference test: rewards [[1,0,0,0],[1,1,1,0]], keys [[yes,a,b,c],[yes,yes,yes,a]], maj@8: closed form."""
    from math import comb
    r = jnp.asarray([1.0, 0, 0, 0, 1, 1, 1, 0])
    ids = jnp.asarray([0, 1, 2, 3, 0, 0, 0, 1])
    g = jnp.repeat(jnp.arange(2), 4)
    adv, m = cat_advantages(MajorityAtN(8), rewards=r, group_ids=g, answer_ids=ids, normalize="none")
    base, _ = cat_advantages(PassAtN(1), rewards=r, group_ids=g, normalize="none")
    for i, c in ((0, 1), (4, 3)):
        k = max(2, min(5, (8 * 1) // 4 + 1))  # each prompt's strongest wrong answer has 1 vote -> k = 3
        p = (c + 1) / 6
        want = 8 * comb(7, k - 1) * p ** (k - 1) * (1 - p) ** (8 - k)
        np.testing.assert_allclose(adv[i] / base[i], want, rtol=1e-5)
    np.testing.assert_allclose(m["consensus_k_mean"], 3.0)


# ------------------------------------------------------------------------------------------------------------
# advantages: penalty, clip, refusal
# ------------------------------------------------------------------------------------------------------------
def test_all_wrong_penalty_and_advantage_clip():
    """Reference test: [[0,0],[1,1]] with penalty 0.5 -> advantages [[-.5,-.5],[0,0]] (weights 1 for pass@1)."""
    r, g = jnp.asarray([0.0, 0.0, 1.0, 1.0]), jnp.asarray([0, 0, 1, 1])
    adv, m = cat_advantages(PassAtN(1), rewards=r, group_ids=g, all_wrong_penalty=0.5)
    np.testing.assert_allclose(adv, [-0.5, -0.5, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(m["frac_all_wrong"], 0.5)
    r2, g2 = jnp.asarray([1.0, 0, 0, 0, 0, 0, 0, 0]), jnp.zeros(8, jnp.int32)  # A_0 = 0.875/0.3536 = 2.47
    adv2, _ = cat_advantages(PassAtN(1), rewards=r2, group_ids=g2, advantage_clip=1.0)
    np.testing.assert_allclose(adv2[:2], [1.0, -0.125 / (np.sqrt(0.125) + 1e-4)], rtol=1e-5)


def test_non_binary_rewards_are_refused_for_pass_and_majority():
    r, g = jnp.asarray([0.5, 0.0, 1.0, 0.0]), jnp.asarray([0, 0, 1, 1])
    for s in (PassAtN(4), MajorityAtN(4)):
        with pytest.raises(ValueError, match="0/1"):
            cat_advantages(s, rewards=r, group_ids=g)
        with pytest.raises(ValueError, match="0/1"):
            cat_rl_loss(-jnp.ones((4, 2)), None, None, r, g, jnp.ones((4, 2)), s)
        adv, _ = cat_advantages(s, rewards=r, group_ids=g, correct=r > 0.7)  # explicit correctness: accepted
        assert np.all(np.isfinite(adv))
    adv, _ = cat_advantages(BestOfN(2), rewards=r, group_ids=g)  # BoN ranks any reward
    assert np.all(np.isfinite(adv))
    # under an outer jit the value cannot raise: the advantages are NaN and the metric says why
    adv, m = jax.jit(lambda rr: cat_advantages(PassAtN(4), rewards=rr, group_ids=g))(r)
    assert np.all(np.isnan(adv)) and float(m["rewards_binary"]) == 0.0


# ------------------------------------------------------------------------------------------------------------
# KL scale
# ------------------------------------------------------------------------------------------------------------
def test_kl_scale_against_hand_computation():
    """k3(δ) = e^δ - δ - 1; per-sequence mean (reference) vs per token (L times larger under token_sum)."""
    lengths = np.array([8, 4])
    mask = jnp.asarray(np.arange(8)[None, :] < lengths[:, None])
    lp = jnp.full((2, 8), -1.0)
    ref = lp + jnp.asarray([[0.5], [-0.3]])  # δ = ref - lp per sequence
    k3 = np.exp([0.5, -0.3]) - np.array([0.5, -0.3]) - 1  # [0.148721, 0.040818]
    r, g = jnp.asarray([1.0, 1.0]), jnp.asarray([0, 0])  # equal rewards: A = 0, the loss is the KL term alone
    beta = 0.1
    for red in ("token_mean", "sequence_mean", "token_sum"):
        loss, _ = cat_rl_loss(lp, None, ref, r, g, mask, PassAtN(1), beta=beta, reduction=red)
        np.testing.assert_allclose(loss, beta * k3.mean(), rtol=1e-5)  # β · mean_b (token mean of k3)
    tok = {red: float(cat_rl_loss(lp, None, ref, r, g, mask, PassAtN(1), beta=beta, reduction=red, kl="token")[0])
           for red in ("token_mean", "sequence_mean", "token_sum")}
    np.testing.assert_allclose(tok["token_sum"], beta * (8 * k3[0] + 4 * k3[1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(tok["token_mean"], beta * (8 * k3[0] + 4 * k3[1]) / 12, rtol=1e-5)
    np.testing.assert_allclose(tok["sequence_mean"], beta * k3.mean(), rtol=1e-5)
    # so one sequence of L = 8 tokens under token_sum carries an 8x larger KL per token than per sequence
    # (the measured 8.0x): here (8 k3_0 + 4 k3_1) / 2 against mean(k3)


# ------------------------------------------------------------------------------------------------------------
# micro-batching
# ------------------------------------------------------------------------------------------------------------
MB, MT = 16, 6
MB_LENGTHS = np.array([6, 3, 5, 1, 6, 6, 2, 4, 5, 6, 3, 6, 1, 2, 6, 4])
MB_MASK = jnp.asarray(np.arange(MT)[None, :] < MB_LENGTHS[:, None])
MB_GROUPS = jnp.repeat(jnp.asarray([3, 11, 7, 0]), 4)
MB_REWARDS = jnp.asarray([1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], jnp.float32)
MB_ANSWERS = jnp.asarray([0, 1, -1, 0, 0, 0, 0, 2, 1, 1, -1, 2, 0, -1, -1, 3])


def mb_inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    lp = -jnp.abs(jax.random.normal(k1, (MB, MT))) * 0.5
    old = lp + 0.05 * jax.random.normal(k2, (MB, MT))
    ref = lp + 0.3 * jax.random.normal(k3, (MB, MT))
    return lp, old, ref


@partial(jax.jit, static_argnames=("strategy", "cfg"))
def _rl_value_and_grad(strategy, cfg, x, old, ref, mask, adv, den):
    f = lambda y: cat_rl_loss(y, old, ref, None, None, mask, strategy, advantages=adv,  # noqa: E731
                              loss_denominator=den, config=cfg)[0]
    return jax.value_and_grad(f)(x)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "token_sum"])
def test_micro_batches_sum_to_the_whole_batch(reduction):
    """2 and 4 micro-batches (groups intact) x every normalisation mode x both surrogates, PPO clip + KL + penalty:
    with the whole batch's advantages and denominator, losses and gradients sum to the whole batch's."""
    lp, old, ref = mb_inputs()
    s = MajorityAtN(8)
    den = loss_denominator(MB_MASK, reduction)
    for normalize in ("batch", "mixed", "none", "running"):
        surrogate = "sequence" if normalize in ("mixed", "running") else "token"
        cfg = CATLossConfig(normalize=normalize, reduction=reduction, surrogate=surrogate, clip_eps_low=0.2,
                            clip_eps_high=0.28, beta=0.04, weight_clip=6.0, all_wrong_penalty=0.3)
        state = init_cat_state() if normalize == "running" else None
        adv, _ = cat_advantages(s, rewards=MB_REWARDS, group_ids=MB_GROUPS, answer_ids=MB_ANSWERS, state=state,
                                config=cfg)
        # with advantages given, the advantage-side settings play no role: one compiled loss per surrogate
        loss_cfg = dataclasses.replace(cfg, normalize="batch")
        whole, g_whole = _rl_value_and_grad(s, loss_cfg, lp, old, ref, MB_MASK, adv, den)
        own = cat_rl_loss(lp, old, ref, MB_REWARDS, MB_GROUPS, MB_MASK, s, answer_ids=MB_ANSWERS, state=state,
                          config=cfg)[0]  # the whole batch computing its own advantages agrees
        np.testing.assert_allclose(own, whole, rtol=1e-6, err_msg=normalize)
        assert abs(float(whole)) > 1e-3
        for parts in (2, 4):
            size = MB // parts
            outs = [_rl_value_and_grad(s, loss_cfg, *(a[i * size:(i + 1) * size] for a in (lp, old, ref, MB_MASK,
                                                                                           adv)), den)
                    for i in range(parts)]
            np.testing.assert_allclose(sum(v for v, _ in outs), whole, rtol=1e-5, err_msg=normalize)
            np.testing.assert_allclose(jnp.concatenate([gr for _, gr in outs]), g_whole, rtol=1e-5, atol=1e-8,
                                       err_msg=normalize)


@partial(jax.jit, static_argnames=("reduction",))
def _sft_value_and_grad(reduction, x, mask, den):
    return jax.value_and_grad(lambda y: cat_sft_loss(None, None, mask, MajorityAtN(4), logprobs=y, reduction=reduction,
                                                     loss_denominator=den)[0])(x)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "token_sum"])
def test_sft_micro_batches_sum_to_the_whole_batch(reduction):
    lp, _, _ = mb_inputs()
    den = loss_denominator(MB_MASK, reduction)
    whole, g_whole = _sft_value_and_grad(reduction, lp, MB_MASK, den)
    plain = cat_sft_loss(None, None, MB_MASK, MajorityAtN(4), logprobs=lp, reduction=reduction)[0]
    np.testing.assert_allclose(plain, whole, rtol=1e-6)
    for parts in (2, 4):
        size = MB // parts
        outs = [_sft_value_and_grad(reduction, lp[i * size:(i + 1) * size], MB_MASK[i * size:(i + 1) * size], den)
                for i in range(parts)]
        np.testing.assert_allclose(sum(v for v, _ in outs), whole, rtol=1e-5)
        np.testing.assert_allclose(jnp.concatenate([gr for _, gr in outs]), g_whole, rtol=1e-5, atol=1e-8)


def test_presets_follow_the_reference_configs():
    assert (REFERENCE_PASS_AT_N.p_source, REFERENCE_PASS_AT_N.normalize, REFERENCE_PASS_AT_N.weight_clip,
            REFERENCE_PASS_AT_N.beta) == ("sequence", "none", 50.0, 0.05)
    assert (REFERENCE_MAJORITY.p_source, REFERENCE_MAJORITY.normalize, REFERENCE_MAJORITY.weight_clip,
            REFERENCE_MAJORITY.all_wrong_penalty, REFERENCE_MAJORITY.beta) == ("group", "batch", 10.0, 0.5, 0.0)
    for cfg in (REFERENCE_PASS_AT_N, REFERENCE_MAJORITY):
        assert (cfg.reduction, cfg.kl, cfg.surrogate, cfg.clip_eps_low, cfg.no_answer, cfg.adv_eps) == (
            "token_sum", "sequence_mean", "sequence", None, "rival", 1e-4)
    assert dataclasses.replace(REFERENCE_MAJORITY, form="log").form == "log"
    with pytest.raises(ValueError, match="normalize"):
        CATLossConfig(normalize="prompt")
    with pytest.raises(ValueError, match="weight_clip"):
        CATLossConfig(weight_clip=0.0)


# ------------------------------------------------------------------------------------------------------------
# surrogates, reductions, presets end to end
# ------------------------------------------------------------------------------------------------------------
def test_sequence_surrogate_clips_the_sequence_ratio_by_hand():
    """ρ = exp(Σ_t (lp - old)) = e^0.3 = 1.3499: clipped to 1.2 for A > 0 (no gradient), kept for A < 0."""
    lp = jnp.zeros((2, 3))
    old = lp - 0.1
    mask = jnp.ones((2, 3), bool)
    adv = jnp.asarray([1.0, -1.0])
    f = lambda x: cat_rl_loss(x, old, None, None, None, mask, PassAtN(1), advantages=adv,  # noqa: E731
                              surrogate="sequence", clip_eps_low=0.2, clip_eps_high=0.2, reduction="token_sum")[0]
    rho = np.exp(0.3)
    np.testing.assert_allclose(f(lp), (-1.2 + rho) / 2, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(lp), [[0.0] * 3, [rho / 2] * 3], rtol=1e-6)


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "token_sum"])
def test_unclipped_surrogates_share_the_reinforce_gradient(reduction):
    lp, _, _ = mb_inputs()
    adv = jnp.linspace(-1.0, 1.0, MB)
    grads = [jax.grad(lambda x: cat_rl_loss(x, None, None, None, None, MB_MASK, PassAtN(1), advantages=adv,
                                            surrogate=sur, reduction=reduction)[0])(lp) for sur in ("token", "sequence")]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-9)


def test_reference_pass_at_n_preset_matches_the_reference_objective():
    """REFERENCE_PASS_AT_N against jax.grad of the authors' objective written out by hand: per completion
    -(Σ_t lp) A w + β mean_t k3, summed and divided by the number of completions; p = exp(Σ old), w = min(S', 50).
    The reference recomputes old log-probs with the current model at update time (one update per rollout batch),
    so old = lp here: the ratio is 1 and the REINFORCE gradients must agree."""
    lp, _, ref = mb_inputs()
    old = lp
    s = PassAtN(4)
    r, g, m = np.asarray(MB_REWARDS), np.asarray(MB_GROUPS), np.asarray(MB_MASK, np.float64)
    p = np.exp(np.clip((np.asarray(old, np.float64) * m).sum(1), -50, 0))
    w = np.minimum(4 * (1 - p) ** 3, 50.0)
    a = np.zeros(MB)
    for gid in np.unique(g):
        sel = g == gid
        a[sel] = (r[sel] - r[sel].mean()) / (r[sel].std(ddof=1) + 1e-4)

    def reference(x):
        seq = jnp.sum(x * MB_MASK, axis=1)
        d = ref - x
        k3 = jnp.sum((jnp.expm1(d) - d) * MB_MASK, axis=1) / MB_MASK.sum(1)
        return jnp.sum(-seq * jnp.asarray(a * w, jnp.float32) + 0.05 * k3) / MB

    got = jax.grad(lambda x: cat_rl_loss(x, old, ref, MB_REWARDS, MB_GROUPS, MB_MASK, s,
                                         config=REFERENCE_PASS_AT_N)[0])(lp)
    np.testing.assert_allclose(got, jax.grad(reference)(lp), rtol=1e-5, atol=1e-7)


def test_sft_reductions_one_vocabulary_by_hand():
    lp = jnp.full((2, 3), -0.5)
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], bool)
    vals = {red: float(cat_sft_loss(None, None, mask, PassAtN(1), logprobs=lp, reduction=red)[0])
            for red in ("token_mean", "sequence_mean", "token_sum")}
    np.testing.assert_allclose([vals["token_mean"], vals["sequence_mean"], vals["token_sum"]],
                               [2.5 / 5, 0.5, 2.5 / 2], rtol=1e-6)
    with pytest.warns(DeprecationWarning, match="token_sum"):
        alias = cat_sft_loss(None, None, mask, PassAtN(1), logprobs=lp, reduction="sequence_sum")[0]
    np.testing.assert_allclose(alias, vals["token_sum"], rtol=1e-7)


def test_padding_rows_enter_no_statistic():
    """sample_mask=False rows (a padded dummy group) get A' = 0 and leave the batch normaliser unchanged."""
    r = jnp.concatenate([WORKED_REWARDS, jnp.zeros(4)])
    g = jnp.concatenate([WORKED_GROUPS, jnp.full((4,), 99)])
    keep = jnp.arange(20) < 16
    adv, _ = cat_advantages(PassAtN(16), rewards=r, group_ids=g, sample_mask=keep, all_wrong_penalty=0.5)
    ref, _ = cat_advantages(PassAtN(16), rewards=WORKED_REWARDS, group_ids=WORKED_GROUPS, all_wrong_penalty=0.5)
    np.testing.assert_allclose(adv[:16], ref, rtol=1e-6)
    np.testing.assert_array_equal(adv[16:], 0.0)
    lp = -jnp.ones((20, 3))  # the loss: padding rows (mask 0) do not count for "token_sum"'s row divisor either
    mask = jnp.ones((20, 3), bool).at[16:].set(False)
    kw = dict(reduction="token_sum", all_wrong_penalty=0.5)
    padded = cat_rl_loss(lp, None, None, r, g, mask, PassAtN(16), sample_mask=keep, **kw)[0]
    plain = cat_rl_loss(lp[:16], None, None, WORKED_REWARDS, WORKED_GROUPS, mask[:16], PassAtN(16), **kw)[0]
    np.testing.assert_allclose(padded, plain, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# BoN quantiles: within the prompt, and against a reward history
# ------------------------------------------------------------------------------------------------------------
def test_within_prompt_quantiles_reference_case():
    """Reference: [[2,2,9],[100,200,300]] -> q = [.25,.25,.75] (strict-less rank, prompts never mixed)."""
    from jax_cat.losses import estimate_success
    r = jnp.asarray([2.0, 2.0, 9.0, 100.0, 200.0, 300.0])
    g = jnp.asarray([0, 0, 0, 1, 1, 1])
    q = estimate_success(rewards=r, group_ids=g, method="quantile")
    np.testing.assert_allclose(q, [0.25, 0.25, 0.75, 0.25, 0.5, 0.75], rtol=1e-6)
    w, _ = cat_weights(BestOfN(4), rewards=r, group_ids=g, normalize="none")
    np.testing.assert_allclose(w, 4 * np.asarray(q) ** 3, rtol=1e-6)


def test_reward_history_on_a_hand_sequence():
    """Reference: capacity 3; empty -> q = 1/2; append [0,2,4,6] keeps [2,4,6] (FIFO) -> q(1) = q(2) = 1/5."""
    from jax_cat.losses import history_append, history_quantiles
    st = init_cat_state(3)
    np.testing.assert_allclose(history_quantiles(st, jnp.asarray([1.0, 2.0])), [0.5, 0.5])
    st = history_append(st, jnp.asarray([0.0, 2.0, 4.0, 6.0]))
    assert sorted(np.asarray(st.history).tolist()) == [2.0, 4.0, 6.0] and int(st.history_len) == 3
    np.testing.assert_allclose(history_quantiles(st, jnp.asarray([1.0, 2.0])), [0.2, 0.2], rtol=1e-6)
    st = jax.jit(history_append)(st, jnp.asarray([7.0]))  # oldest (2) leaves: [4, 6, 7]
    np.testing.assert_allclose(history_quantiles(st, jnp.asarray([5.0, 8.0])), [2 / 5, 4 / 5], rtol=1e-6)
    big = history_append(init_cat_state(2000), jnp.zeros(2000))  # clamp: 1/2002 -> 0.001, 2001/2002 -> 0.999
    np.testing.assert_allclose(history_quantiles(big, jnp.asarray([-1.0, 1.0])), [0.001, 0.999], rtol=1e-6)


def test_bon_history_threads_through_cat_advantages():
    """Query before append: step 1 ranks against an empty history (q = 1/2 for all: plain GRPO after batch
    normalisation); step 2 ranks step 2's rewards against step 1's."""
    s = BestOfN(4)
    r1 = jnp.asarray([0.1, 0.5, 0.9, 0.3])
    g = jnp.zeros(4, jnp.int32)
    step = jax.jit(lambda st, r: cat_advantages(s, rewards=r, group_ids=g, bon_quantile="history", state=st))
    adv1, m1 = step(init_cat_state(8), r1)
    a1 = (np.asarray(r1) - 0.45) / (np.std(np.asarray(r1), ddof=1) + 1e-4)
    np.testing.assert_allclose(adv1, a1, rtol=1e-5)
    r2 = jnp.asarray([0.0, 0.4, 1.0, 0.6])
    adv2, m2 = step(m1["state"], r2)
    q = np.array([1, 3, 5, 4]) / 6  # #history<r + 1 over 4 + 2
    w = 4 * q ** 3
    a2 = (np.asarray(r2) - 0.5) / (np.std(np.asarray(r2), ddof=1) + 1e-4)
    np.testing.assert_allclose(adv2, a2 * w / w.mean(), rtol=1e-5)
    assert int(m2["state"].history_len) == 8


def test_majority_estimate_tie_failure():
    """Pool a,b,a,b (2 right, 2 wrong), n = 4: the 2-2 tie splits to 1/2, or fails (0) with ties="failure";
    n = 3 never ties between two answers here -> both modes agree (1/2)."""
    c, ans = [1, 0, 1, 0], ["a", "b", "a", "b"]
    assert MajorityAtN(4).estimate(c, answers=ans) == pytest.approx(0.5)
    assert MajorityAtN(4).estimate(c, answers=ans, ties="failure") == 0.0
    assert MajorityAtN(3).estimate(c, answers=ans, ties="failure") == pytest.approx(0.5)
    # a,b,None,a with n = 2: subsets {a,b}: tie; {a,None}: a; {b,None}: b; {None,a}: a; {a,b}; {a,a}: a -> 6 subsets
    c2, a2 = [1, 0, 0, 1], ["a", "b", None, "a"]
    assert MajorityAtN(2).estimate(c2, answers=a2, ties="failure") == pytest.approx(3 / 6)
    assert MajorityAtN(2).estimate(c2, answers=a2) == pytest.approx((3 + 2 * 0.5) / 6)
    with pytest.raises(ValueError, match="ties"):
        MajorityAtN(2).estimate(c2, answers=a2, ties="first")
