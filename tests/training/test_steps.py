"""The jitted steps against outside references: plain optax + jax.grad of a hand-written cross-entropy, micro-batch
equality of the update, and the 8-device sharded step against one device (conftest forces 8 CPU devices)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_cat.losses import BestOfN, CATLossConfig, MajorityAtN, PassAtN
from jax_cat.sharding import make_mesh
from jax_cat.training import steps
from jax_cat.training.config import OptimizerConfig
from tests.training.conftest import make_model, rollout_batch, sft_batch

# eps 1e-4: Adam's first step is ~lr * sign(g), which turns float round-off in near-zero gradients into lr-sized
# differences; a larger eps keeps the comparisons about the gradients, not about that amplification.
OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.01, clip_norm=1.0,
                      eps=1e-4)


def _single_mesh():
    return make_mesh(data=1, devices=jax.devices()[:1])


def _sft_setup(mesh, *, strategy=PassAtN(1), reduction="token_mean", micro_batches=1, model=None):
    model = model or make_model(0)
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, _ = steps.split_model(model)
    step = steps.make_sft_step(graphdef, tx, sh, mesh, strategy=strategy, reduction=reduction,
                               micro_batches=micro_batches)
    return model, step, steps.init_state(model, tx, sh)


def _put(batch, step):
    return jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, step.batch_sharding)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sft_step_equals_optax_adamw_on_handwritten_cross_entropy():
    batch = sft_batch(np.random.default_rng(0))
    model, step, state = _sft_setup(_single_mesh())
    graphdef, params = steps.split_model(model)
    params = jax.tree.map(jnp.array, params)

    def ce(p):  # independent: optax's integer-label cross-entropy, mean over target tokens
        logits = nnx.merge(graphdef, p)(batch["input_ids"], batch["attention_mask"])[:, :-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["input_ids"][:, 1:])
        mask = batch["loss_mask"][:, 1:]
        return jnp.sum(nll * mask) / jnp.sum(mask)

    loss, grads = jax.value_and_grad(ce)(params)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-4, weight_decay=0.01))
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = optax.apply_updates(params, updates)
    new_state, metrics = step(state, _put(batch, step))
    assert abs(float(metrics["loss"]) - float(loss)) < 1e-5
    assert abs(float(metrics["grad_norm"]) - float(optax.global_norm(grads))) < 1e-4
    assert float(metrics["ok"]) == 1.0 and int(new_state.step) == 1
    assert _max_diff(new_state.params, expected) < 1e-6


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "token_sum"])
def test_sft_micro_batches_give_the_same_update(reduction):
    batch = sft_batch(np.random.default_rng(1))
    mesh = _single_mesh()
    strategy = PassAtN(4)  # a per-sequence CAT weight: a wrong micro-batch split would show
    results = {}
    for k in (1, 4):
        _, step, state = _sft_setup(mesh, strategy=strategy, reduction=reduction, micro_batches=k)
        state, metrics = step(state, _put(batch, step))
        results[k] = (state.params, float(metrics["loss"]))
    assert abs(results[4][1] - results[1][1]) < 1e-5 * max(1.0, abs(results[1][1]))
    assert _max_diff(results[4][0], results[1][0]) < 2e-6


def _grpo_setup(mesh, *, strategy, loss_cfg, micro_batches=1, prompt_len=5):
    model = make_model(1)
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, _ = steps.split_model(model)
    step = steps.make_grpo_step(graphdef, tx, sh, mesh, strategy=strategy, loss_cfg=loss_cfg, prompt_len=prompt_len,
                                micro_batches=micro_batches)
    return step, steps.init_state(model, tx, sh), graphdef, sh


@pytest.mark.parametrize("reduction,strategy", [
    ("token_mean", PassAtN(1)), ("token_mean", PassAtN(4)), ("sequence_mean", MajorityAtN(4)), ("token_sum", BestOfN(4)),
], ids=["token_mean-grpo", "token_mean-pass@4", "sequence_mean-maj@4", "token_sum-bon@4"])
# Whole-batch advantages + the whole batch's denominator: 4 micro-batches update exactly like one batch.
def test_grpo_micro_batches_give_the_same_update(reduction, strategy):
    batch = rollout_batch(np.random.default_rng(2))
    mesh = _single_mesh()
    loss_cfg = CATLossConfig(reduction=reduction, weight_clip=10.0)
    results = {}
    for k in (1, 4):  # 4 micro-batches of 4 rows: every group is split across micro-batches
        step, state, _, _ = _grpo_setup(mesh, strategy=strategy, loss_cfg=loss_cfg, micro_batches=k)
        state, metrics = step(state, _put(batch, step))
        results[k] = state.params
    assert _max_diff(results[4], results[1]) < 2e-6


def test_sharded_steps_on_8_devices_equal_one_device():
    assert jax.device_count() == 8
    sft = sft_batch(np.random.default_rng(3))
    rl = rollout_batch(np.random.default_rng(4), prompts=2, group=4)
    loss_cfg = CATLossConfig()
    out = {}
    for name, mesh in (("one", _single_mesh()), ("eight", make_mesh(data=2, fsdp=2, tensor=2))):
        _, step, state = _sft_setup(mesh, strategy=PassAtN(4))
        for _ in range(2):
            state, _ = step(state, _put(sft, step))
        rl_step, rl_state, _, _ = _grpo_setup(mesh, strategy=PassAtN(4), loss_cfg=loss_cfg)
        for _ in range(2):
            rl_state, _ = rl_step(rl_state, _put(rl, rl_step))
        out[name] = (jax.device_get(state.params), jax.device_get(rl_state.params))
        if name == "eight":
            q = state.params["layers"][0]["self_attn"]["q_proj"]
            assert len(q.sharding.device_set) == 8 and tuple(q.sharding.spec)[:2] == ("fsdp", "tensor")
            mu = state.opt_state[1][0].mu["layers"][0]["self_attn"]["q_proj"]  # Adam moment placed like its param
            assert mu.sharding == q.sharding
    assert _max_diff(out["one"][0], out["eight"][0]) < 2e-6
    assert _max_diff(out["one"][1], out["eight"][1]) < 2e-6


def test_non_finite_loss_skips_the_update():
    batch = sft_batch(np.random.default_rng(5))
    model, step, state = _sft_setup(_single_mesh())
    before = jax.device_get(state.params)
    bad = dict(batch)
    state = state._replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan)
                                               if x.ndim == 2 and x.shape[0] == 128 else x, state.params))
    poisoned = jax.device_get(state.params)
    state, metrics = step(state, _put(bad, step))
    assert float(metrics["ok"]) == 0.0 and int(state.step) == 0
    after = jax.device_get(state.params)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b, equal_nan=True)), poisoned, after)
    assert all(jax.tree.leaves(same))
    assert before is not None
