"""CAT SFT/RL losses: gradients against autodiff of hand-written references, N=1 reductions, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_cat.losses.cat import (cat_rl_loss, cat_sft_loss, cat_weights, consensus_threshold,
                                dynamic_consensus_threshold, estimate_success, group_advantages, group_quantiles,
                                success_from_group, success_from_logprobs, token_logprobs)
from jax_cat.losses.strategies import BestOfN, MajorityAtN, PassAtN

B, T, V = 8, 6, 13
LENGTHS = np.array([6, 4, 3, 6, 2, 1, 5, 6])
MASK = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])


def make_batch(seed=0, confident_rows=(0, 3, 5)):
    """Logits/targets where some sequences are near-certain (p -> 1) and others unlikely (p -> 0)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(k1, (B, T, V)) * 1.5
    targets = jax.random.randint(k2, (B, T), 0, V)
    boost = jnp.zeros((B, 1, 1)).at[jnp.asarray(confident_rows)].set(jnp.asarray([6.0, 9.0, 3.0])[:, None, None])
    logits = logits + boost * jax.nn.one_hot(targets, V)  # the confident rows put most mass on the targets
    return logits, targets


def plain_ce(logits, targets, mask, reduction="token_mean"):
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    tot = jnp.sum(ce * mask)
    return tot / jnp.sum(mask) if reduction == "token_mean" else tot / mask.shape[0]


# ------------------------------------------------------------------------------------------------------------
# SFT
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["token_mean", "sequence_sum"])
def test_sft_pass_at_1_is_plain_cross_entropy(reduction):
    logits, targets = make_batch()
    f = lambda lg: cat_sft_loss(lg, targets, MASK, PassAtN(1), reduction=reduction)[0]  # noqa: E731
    g = lambda lg: plain_ce(lg, targets, MASK, reduction)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(logits), jax.jit(g)(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(logits), jax.jit(jax.grad(g))(logits), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("strategy", [PassAtN(4), PassAtN(64), MajorityAtN(4), MajorityAtN(8, 8), BestOfN(4)],
                         ids=lambda s: s.name)
def test_sft_gradient_is_weight_times_ce_gradient(strategy):
    logits, targets = make_batch()
    seq_logp = jnp.sum(token_logprobs(logits, targets) * MASK, axis=-1)
    p = jnp.exp(seq_logp)
    w = strategy.sft_weight(p)
    assert float(jnp.max(p)) > 0.3 and float(jnp.min(p)) < 1e-3  # the batch spans both ends of the weight curve
    if not (isinstance(strategy, MajorityAtN) and strategy.k == strategy.n):  # k = N: constant weight N
        assert float(jnp.max(w) - jnp.min(w)) > 0.2  # ... so the weights really differ per sequence
    grad = jax.jit(jax.grad(lambda lg: cat_sft_loss(lg, targets, MASK, strategy)[0]))(logits)

    def weighted_ce(lg):  # sum_b w_b * CE_b / num_tokens, w constant
        ce_b = -jnp.sum(token_logprobs(lg, targets) * MASK, axis=-1)
        return jnp.sum(jax.lax.stop_gradient(w) * ce_b) / jnp.sum(MASK)

    np.testing.assert_allclose(grad, jax.jit(jax.grad(weighted_ce))(logits), rtol=2e-5, atol=1e-8)
    loss, metrics = cat_sft_loss(logits, targets, MASK, strategy)
    base = PassAtN(strategy.n) if isinstance(strategy, BestOfN) else strategy
    with jax.enable_x64(True):
        ref = -np.sum(np.log(np.asarray(base.success_probability(jnp.asarray(np.asarray(p), jnp.float64))))) / LENGTHS.sum()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(metrics["sft_weight_mean"], jnp.mean(w), rtol=1e-6)


def test_sft_long_sequences_do_not_underflow():
    """Sequence log-probs of -2000 underflow p = 0 in float32, yet the loss and its slope stay right."""
    logprobs = jnp.full((2, 400), -5.0)
    mask = jnp.ones((2, 400), bool)
    for s, slope in [(PassAtN(16), 1.0), (MajorityAtN(16), 9.0)]:
        loss, _ = cat_sft_loss(None, None, mask, s, logprobs=logprobs, reduction="sequence_sum")
        g = jax.jit(jax.grad(lambda lp: cat_sft_loss(None, None, mask, s, logprobs=lp, reduction="sequence_sum")[0]))(logprobs)
        assert np.isfinite(loss) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g, -slope / 2, rtol=1e-5)  # d(-log S)/d logp_t = -w / B with w -> k
        expected = 2000.0 * slope - float(jnp.log(jnp.exp(jax.scipy.special.gammaln(17.0) - jax.scipy.special.gammaln(slope + 1) - jax.scipy.special.gammaln(17.0 - slope))))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# success estimates
# ------------------------------------------------------------------------------------------------------------
GROUPS = jnp.asarray([7, 7, 7, -3, -3, 100, 100, 100, 100, 5])  # arbitrary ids, sizes 3, 2, 4, 1
REWARDS = jnp.asarray([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])


def test_success_from_group_laplace():
    p = success_from_group(REWARDS > 0, GROUPS)
    want = [2 / 5] * 3 + [3 / 4] * 2 + [3 / 6] * 4 + [1 / 3]
    np.testing.assert_allclose(p, want, rtol=1e-6)
    np.testing.assert_allclose(estimate_success(rewards=REWARDS, group_ids=GROUPS), want, rtol=1e-6)
    np.testing.assert_allclose(success_from_group(REWARDS > 0, GROUPS, smoothing=0.0)[:3], 1 / 3, rtol=1e-6)


def test_success_from_logprobs_clamps():
    lp = jnp.asarray([[-0.1, -0.2, -9.0], [-30.0, -30.0, -30.0], [0.0, 0.0, 0.0]])
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)
    np.testing.assert_allclose(success_from_logprobs(lp, mask), [np.exp(-0.3), np.exp(-50.0), 1.0], rtol=1e-6)
    np.testing.assert_allclose(estimate_success(old_logprobs=lp, mask=mask, method="sequence"),
                               success_from_logprobs(lp, mask))


def test_group_quantiles_with_ties():
    r = jnp.asarray([0.5, 0.1, 0.5, 0.9, 3.0, 3.0, -1.0])
    g = jnp.asarray([1, 1, 1, 1, 2, 2, 2])
    # group 1 (M=4): 0.1 has 0 lower -> 1/5; the two 0.5 have 1 lower -> 2/5; 0.9 has 3 lower -> 4/5
    # group 2 (M=3): -1 -> 1/4; the two 3.0 -> 2/4
    np.testing.assert_allclose(group_quantiles(r, g), [0.4, 0.2, 0.4, 0.8, 0.5, 0.5, 0.25], rtol=1e-6)


def test_dynamic_consensus_threshold():
    answers = ["7", "7", "3", "3", "3", None, "7", "5",  # group 0: correct "7"; strongest wrong "3" x3 of M=8
               "1", "1", "1", "1",  # group 1: all correct -> no wrong answer -> floor(0)+1 = 1 -> min_k 2
               "2", "2", "2", "9"]  # group 2: correct "9"; wrong "2" x3 of M=4 -> floor(4*3/4)+1 = 4 -> cap 3
    correct = [a == "7" for a in answers[:8]] + [True] * 4 + [a == "9" for a in answers[12:]]
    groups = [0] * 8 + [1] * 4 + [2] * 4
    ids = {a: i for i, a in enumerate(sorted({a for a in answers if a is not None}))}
    answer_ids = jnp.asarray([-1 if a is None else ids[a] for a in answers])
    n = 4
    k = dynamic_consensus_threshold(answer_ids, jnp.asarray(correct), jnp.asarray(groups), n)
    np.testing.assert_array_equal(k, [2] * 8 + [2] * 4 + [3] * 4)  # group 0: floor(4*3/8)+1 = 2
    k8 = dynamic_consensus_threshold(answer_ids, jnp.asarray(correct), jnp.asarray(groups), 8)
    np.testing.assert_array_equal(k8, [4] * 8 + [2] * 4 + [5] * 4)  # floor(8*3/8)+1=4; 7 capped at 8//2+1=5
    for gid in range(3):
        sel = [i for i in range(16) if groups[i] == gid]
        for nn, kk in [(4, k), (8, k8)]:
            assert consensus_threshold([answers[i] for i in sel], [correct[i] for i in sel], nn) == int(kk[sel[0]])
    # rollouts without an answer cast no vote (as in the test-time plurality vote), so they are no rival:
    # 3 Nones + 1 correct of M=4 at n=8 -> no wrong answer -> floor(0)+1 = 1 -> min_k 2 (pooling them would give 5)
    # (no_answer="abstain" selects this former default explicitly; the default now follows the reference, "rival")
    kn = dynamic_consensus_threshold(jnp.asarray([-1, -1, -1, 0]), jnp.asarray([0, 0, 0, 1], bool),
                                     jnp.zeros(4, jnp.int32), 8, no_answer="abstain")
    np.testing.assert_array_equal(kn, [2] * 4)
    # 3 Nones, wrong "2" x2, correct x3 of M=8 at n=8 -> c_w = 2 -> floor(8*2/8)+1 = 3 (not floor(8*3/8)+1 = 4)
    ids = jnp.asarray([-1, -1, -1, 2, 2, 0, 0, 0])
    ok = jnp.asarray([0, 0, 0, 0, 0, 1, 1, 1], bool)
    np.testing.assert_array_equal(dynamic_consensus_threshold(ids, ok, jnp.zeros(8, jnp.int32), 8,
                                                              no_answer="abstain"), [3] * 8)
    assert consensus_threshold([None] * 3 + ["2"] * 2 + ["0"] * 3, [False] * 5 + [True] * 3, 8, no_answer="abstain") == 3
    assert consensus_threshold([None, None, None, "0"], [False, False, False, True], 8, no_answer="abstain") == 2


# ------------------------------------------------------------------------------------------------------------
# RL
# ------------------------------------------------------------------------------------------------------------
def reference_advantages(rewards, groups, eps=1e-4):
    rewards, groups = np.asarray(rewards, np.float64), np.asarray(groups)
    a = np.zeros_like(rewards)
    for g in np.unique(groups):
        sel = groups == g
        r = rewards[sel]
        std = r.std(ddof=1) if sel.sum() > 1 else 0.0
        a[sel] = (r - r.mean()) / (std + eps)
    return a


def reference_grpo(lp, old, ref, adv, mask, *, eps_low=None, eps_high=None, beta=0.0, reduction="token_mean"):
    """Textbook GRPO per-token surrogate with a k3 KL; adv is a constant [B]."""
    a = jnp.asarray(adv, jnp.float32)[:, None]
    ratio = jnp.exp(lp - (jax.lax.stop_gradient(lp) if old is None else old))
    if eps_low is None:
        obj = ratio * a
    else:
        obj = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
    per_tok = -obj
    if beta:
        d = ref - lp
        per_tok = per_tok + beta * (jnp.exp(d) - d - 1)
    m = mask.astype(jnp.float32)
    if reduction == "token_mean":
        return jnp.sum(per_tok * m) / jnp.sum(m)
    if reduction == "sequence_mean":
        return jnp.mean(jnp.sum(per_tok * m, axis=1) / jnp.sum(m, axis=1))
    return jnp.sum(per_tok * m) / m.shape[0]


RL_B, RL_T = 10, 5
RL_MASK = jnp.asarray(np.arange(RL_T)[None, :] < np.array([5, 3, 4, 5, 1, 2, 5, 4, 3, 5])[:, None])


def rl_inputs(seed=1):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    lp = -jnp.abs(jax.random.normal(k1, (RL_B, RL_T)))
    old = lp + 0.3 * jax.random.normal(k2, (RL_B, RL_T))
    ref = lp + 0.5 * jax.random.normal(k3, (RL_B, RL_T))
    return lp, old, ref


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "token_sum"])
@pytest.mark.parametrize("ppo", [False, True])
def test_rl_pass_at_1_is_plain_grpo(reduction, ppo):
    lp, old, ref = rl_inputs()
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.28) if ppo else {}
    beta = 0.05 if ppo else 0.0
    old_arg = old if ppo else None
    # kl="token" selects the former per-token KL explicitly (the default is now the reference's per-sequence mean)
    f = lambda x: cat_rl_loss(x, old_arg, ref, REWARDS, GROUPS, RL_MASK, PassAtN(1), beta=beta,  # noqa: E731
                              reduction=reduction, kl="token", **kw)[0]
    adv = reference_advantages(REWARDS, GROUPS)
    g = lambda x: reference_grpo(x, old_arg, ref, adv, RL_MASK, eps_low=kw.get("clip_eps_low"),  # noqa: E731
                                 eps_high=kw.get("clip_eps_high"), beta=beta, reduction=reduction)
    np.testing.assert_allclose(jax.jit(f)(lp), g(lp), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(lp), jax.jit(jax.grad(g))(lp), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(group_advantages(REWARDS, GROUPS), adv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["raw", "log"])
@pytest.mark.parametrize("strategy", [PassAtN(4), MajorityAtN(4)], ids=lambda s: s.name)
def test_rl_cat_weight_multiplies_advantage_and_normalises_over_mixed_prompts(strategy, form):
    lp, _, _ = rl_inputs()
    # normalize="mixed" selects the former default explicitly (the default is now the reference's "batch")
    loss, metrics = cat_rl_loss(lp, None, None, REWARDS, GROUPS, RL_MASK, strategy, form, normalize="mixed")
    groups, rewards = np.asarray(GROUPS), np.asarray(REWARDS)
    p = {g: (rewards[groups == g].sum() + 1) / ((groups == g).sum() + 2) for g in np.unique(groups)}
    with jax.enable_x64(True):
        fn = strategy.rl_weight if form == "raw" else strategy.sft_weight
        w = {g: float(fn(jnp.float64(v))) for g, v in p.items()}
    mixed = [g for g in np.unique(groups) if rewards[groups == g].min() < rewards[groups == g].max()]
    assert sorted(mixed) == [7, 100]
    scale = np.mean([w[g] for g in mixed])  # each mixed prompt counts once
    w_tilde = np.array([w[g] / scale for g in groups])
    adv = reference_advantages(REWARDS, GROUPS) * w_tilde
    ref = reference_grpo(lp, None, None, adv, RL_MASK)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    got = jax.jit(jax.grad(lambda x: cat_rl_loss(x, None, None, REWARDS, GROUPS, RL_MASK, strategy, form,
                                                 normalize="mixed")[0]))(lp)
    np.testing.assert_allclose(got, jax.grad(lambda x: reference_grpo(x, None, None, adv, RL_MASK))(lp), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(metrics["weight_raw_mean"], scale, rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_mean"], 1.0, rtol=1e-5)  # mixed prompts average 1 after normalising
    np.testing.assert_allclose(metrics["frac_mixed_groups"], 0.5)


def test_rl_weight_clip_and_sequence_p():
    lp, old, _ = rl_inputs()
    s = PassAtN(8)
    p = success_from_logprobs(old, RL_MASK)
    raw = np.asarray(s.rl_weight(p))
    clip = float(np.median(raw))
    w, m = cat_weights(s, rewards=REWARDS, group_ids=GROUPS, p=p, weight_clip=clip, normalize="none")
    np.testing.assert_allclose(w, np.minimum(raw, clip), rtol=1e-6)
    mixed = np.isin(np.asarray(GROUPS), [7, 100])
    np.testing.assert_allclose(m["weight_frac_clipped"], np.mean(raw[mixed] > clip), rtol=1e-6)
    # per-sample weights: normaliser = mean over mixed prompts of each prompt's mean weight
    wn, _ = cat_weights(s, rewards=REWARDS, group_ids=GROUPS, p=p, normalize="mixed")  # the former default
    g7, g100 = np.asarray(GROUPS) == 7, np.asarray(GROUPS) == 100
    np.testing.assert_allclose(np.mean([np.mean(np.asarray(wn)[g7]), np.mean(np.asarray(wn)[g100])]), 1.0, rtol=1e-5)
    loss_seq, _ = cat_rl_loss(lp, old, None, REWARDS, GROUPS, RL_MASK, s, p_source="sequence", normalize="mixed")
    adv = reference_advantages(REWARDS, GROUPS) * np.asarray(wn)
    np.testing.assert_allclose(loss_seq, reference_grpo(lp, old, None, adv, RL_MASK), rtol=1e-5)


def test_rl_best_of_n_rank_weights():
    lp, _, _ = rl_inputs()
    rewards = jnp.asarray([0.3, 0.9, 0.1, 2.0, 1.0, 0.5, 0.5, 0.7, 0.2, 4.0])
    s = BestOfN(4)
    q = np.asarray(group_quantiles(rewards, GROUPS))
    np.testing.assert_allclose(q[:3], [2 / 4, 3 / 4, 1 / 4], rtol=1e-6)
    w = 4 * q ** 3
    groups = np.asarray(GROUPS)
    mixed = [7, -3, 100]  # group 5 has one sample
    scale = np.mean([w[groups == g].mean() for g in mixed])
    adv = reference_advantages(rewards, GROUPS) * w / scale
    loss, metrics = cat_rl_loss(lp, None, None, rewards, GROUPS, RL_MASK, s, normalize="mixed")  # former default
    np.testing.assert_allclose(loss, reference_grpo(lp, None, None, adv, RL_MASK), rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_raw_mean"], scale, rtol=1e-5)
    with pytest.raises(ValueError, match="raw rank weight"):
        cat_rl_loss(lp, None, None, rewards, GROUPS, RL_MASK, s, "log")


def test_rl_majority_dynamic_threshold_uses_per_prompt_k():
    lp, _, _ = rl_inputs()
    answer_ids = jnp.asarray([0, 1, 1, 2, 2, 3, 4, 4, 3, 5])  # group 100: correct answer 4, wrong 3 twice
    correct = jnp.asarray([1, 0, 0, 1, 1, 0, 1, 1, 0, 0], bool)
    s = MajorityAtN(8)
    k = np.asarray(dynamic_consensus_threshold(answer_ids, correct, GROUPS, 8))
    np.testing.assert_array_equal(k, [5, 5, 5, 2, 2, 5, 5, 5, 5, 5])  # floor(8*2/3)+1=6->cap 5; all right->2; floor(8*2/4)+1=5
    _, metrics = cat_rl_loss(lp, None, None, REWARDS, GROUPS, RL_MASK, s, answer_ids=answer_ids, correct=correct,
                             normalize="none")
    p = np.asarray(success_from_group(correct, GROUPS))
    w = np.array([float(MajorityAtN(8, int(kk)).rl_weight(pp)) for kk, pp in zip(k, p)])
    w_got, _ = cat_weights(s, rewards=REWARDS, group_ids=GROUPS, p=jnp.asarray(p), k=jnp.asarray(k), normalize="none")
    np.testing.assert_allclose(w_got, w, rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_raw_mean"], np.mean([w[0], w[5]]), rtol=1e-5)
    np.testing.assert_allclose(metrics["consensus_k_mean"], k.mean())


def test_rl_errors_name_the_input():
    lp, _, _ = rl_inputs()
    with pytest.raises(ValueError, match="rewards"):
        cat_rl_loss(lp, None, None, REWARDS[:3], GROUPS, RL_MASK, PassAtN(2))
    with pytest.raises(ValueError, match="ref_logprobs"):
        cat_rl_loss(lp, None, None, REWARDS, GROUPS, RL_MASK, PassAtN(2), beta=0.1)
    with pytest.raises(ValueError, match="reduction"):
        cat_rl_loss(lp, None, None, REWARDS, GROUPS, RL_MASK, PassAtN(2), reduction="mean")


# ------------------------------------------------------------------------------------------------------------
# jit + sharding over a data axis
# ------------------------------------------------------------------------------------------------------------
def test_losses_jit_and_shard_over_data_axis():
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests/conftest.py should expose 8 CPU devices"
    mesh = Mesh(devices, ("data",))
    row = NamedSharding(mesh, P("data"))
    # RL: 16 completions in 4 prompts of 4
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    lp = -jnp.abs(jax.random.normal(k1, (16, 6)))
    old = lp + 0.2 * jax.random.normal(k2, (16, 6))
    rewards = (jax.random.uniform(k3, (16,)) > 0.5).astype(jnp.float32)
    groups = jnp.repeat(jnp.arange(4) * 11, 4)
    mask = jnp.asarray(np.arange(6)[None, :] < (np.arange(16) % 6 + 1)[:, None])

    def rl(x, o, r, g, m):
        return cat_rl_loss(x, o, x, r, g, m, MajorityAtN(8), "log", clip_eps_low=0.2, clip_eps_high=0.2, beta=0.01)

    rl_step = jax.jit(jax.value_and_grad(rl, has_aux=True))
    (l0, m0), g0 = rl_step(lp, old, rewards, groups, mask)
    args = [jax.device_put(a, row) for a in (lp, old, rewards, groups, mask)]
    (l1, m1), g1 = rl_step(*args)
    assert len(args[0].sharding.device_set) == 8
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-9)
    for key in m0:
        np.testing.assert_allclose(m1[key], m0[key], rtol=1e-6, err_msg=key)
    # SFT
    logits = jax.random.normal(k1, (16, 6, V))
    targets = jax.random.randint(k2, (16, 6), 0, V)
    sft_step = jax.jit(jax.value_and_grad(lambda lg, t, m: cat_sft_loss(lg, t, m, PassAtN(16))[0]))
    l0, g0 = sft_step(logits, targets, mask)
    l1, g1 = sft_step(*[jax.device_put(a, row) for a in (logits, targets, mask)])
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-9)
