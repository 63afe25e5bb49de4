"""The SFT and GRPO loops on the tiny model: learning, exact stop/resume, NaN stop keeping the last good checkpoint."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jax_cat.sharding import make_mesh
from jax_cat.training import NonFiniteLoss, run_grpo, run_sft
from jax_cat.training.checkpoint import Checkpointer
from tests.training.conftest import make_model, one_device, small_config


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# One SFT setting for the learning check and the resume check (one compile): 16 steps, a checkpoint every 8.
SFT = {"train.steps": 16, "train.log_every": 4, "train.checkpoint_every": 8, "data.batch_size": 16,
       "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 2}


@pytest.fixture(scope="module")
def sft_straight(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_straight")
    return run_sft(small_config(**SFT), model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=out), out


def test_sft_loss_decreases(sft_straight):
    result, _ = sft_straight
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 4 and result.history[-1]["step"] == 16
    assert losses[0] > 4.0  # ~ln(128): an untrained char model
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(np.isfinite(losses))


def test_sft_stop_and_resume_equals_straight_run(sft_straight, tokenizer, tmp_path):
    straight, straight_out = sft_straight
    cfg = small_config(**SFT)
    first = run_sft(cfg.replace(**{"train.stop_after": 8}), model=make_model(0), tokenizer=tokenizer,
                    mesh=one_device(), out=tmp_path)
    assert int(first.state.step) == 8
    resumed = run_sft(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path, resume=True)
    assert int(resumed.state.step) == 16
    assert _max_diff(jax.device_get(straight.state.params), jax.device_get(resumed.state.params)) <= 1e-6
    assert _max_diff(jax.device_get(straight.state.opt_state), jax.device_get(resumed.state.opt_state)) <= 1e-6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16]  # each step logged once across the two invocations
    straight_rows = [json.loads(line) for line in (straight_out / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[-1]["loss"] - straight_rows[-1]["loss"]) < 1e-6


# 8 prompts x 2 samples = 16 rows: the shape of the multi-device bug (rollout batch replicated, step wants it split).
# normalize="running": the loop tests also carry the CAT state (init, 8 devices, checkpoint, resume).
DECAY = 0.8
GRPO = {"train.method": "grpo", "strategy": "pass@2", "train.steps": 4, "train.updates_per_batch": 2,
        "train.checkpoint_every": 2, "data.batch_size": 8, "rollout.group_size": 2,
        "loss.normalize": "running", "loss.norm_decay": DECAY}


def _rewards(texts, golds):
    return [float(len(t) % 2) for t in texts]  # mixed groups from an untrained model


@pytest.fixture(scope="module")
def grpo_straight(tokenizer, tmp_path_factory):
    """The uninterrupted one-device GRPO run the resume and 8-device tests compare with (compiled once)."""
    return run_grpo(small_config(**GRPO), model=make_model(0), tokenizer=tokenizer, mesh=one_device(),
                    out=tmp_path_factory.mktemp("grpo_straight"), reward_fn=_rewards)


def test_grpo_stop_and_resume_equals_straight_run(grpo_straight, tokenizer, tmp_path):
    cfg = small_config(**GRPO)
    run_grpo(cfg.replace(**{"train.stop_after": 2}), model=make_model(0), tokenizer=tokenizer, mesh=one_device(),
             out=tmp_path, reward_fn=_rewards)
    resumed = run_grpo(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path, resume=True,
                       reward_fn=_rewards)
    assert int(resumed.state.step) == 4
    assert grpo_straight.history[0]["frac_mixed_groups"] > 0  # the update was not trivially zero
    assert _max_diff(jax.device_get(grpo_straight.state.params), jax.device_get(resumed.state.params)) <= 1e-6
    assert _max_diff(grpo_straight.state.cat_state, resumed.state.cat_state) <= 1e-6  # restored, not restarted


def test_grpo_loop_on_8_devices_equals_one_device(grpo_straight, tokenizer):
    # Regression: the rollout batch came out of its assembly replicated and the 8-device step refused it.
    # Same rows, same per-row sampling keys: the 8-device run must train the same parameters as one device.
    mesh = make_mesh(data=8)
    assert mesh.devices.size == 8
    result = run_grpo(small_config(**GRPO), model=make_model(0), tokenizer=tokenizer, mesh=mesh, reward_fn=_rewards)
    assert int(result.state.step) == 4
    q = result.state.params["layers"][0]["self_attn"]["q_proj"]
    assert len(q.sharding.device_set) == 8
    assert [r["step"] for r in result.history] == [r["step"] for r in grpo_straight.history] == [1, 2, 3, 4]
    for one, eight in zip(grpo_straight.history, result.history):
        assert one.get("reward") == eight.get("reward")  # the same samples were drawn (rows with a rollout)
        assert abs(one["loss"] - eight["loss"]) <= 1e-5
    assert _max_diff(jax.device_get(grpo_straight.state.params), jax.device_get(result.state.params)) <= 1e-5


def test_running_normalisation_threads_cat_state_through_grpo_steps(grpo_straight):
    # docs/losses.md, jax_cat/losses/state.py: m_t = d m_{t-1} + (1-d) wbar_t (m_0 = 0), scale_t = m_t / (1 - d^t),
    # wbar_t = the update's batch mean raw CAT weight (metric weight_batch_mean). Two rollout batches, two updates each.
    d = DECAY
    wbar = [row["weight_batch_mean"] for row in grpo_straight.history]
    scales = [row["weight_scale"] for row in grpo_straight.history]
    assert wbar[0] == wbar[1] and wbar[2] == wbar[3]  # an update per batch twice (same rewards, same weights)
    assert min(wbar) > 0 and abs(wbar[2] - wbar[0]) > 1e-3 * wbar[0]  # two different batches: the rule shows
    m = 0.0
    for t, (w, scale) in enumerate(zip(wbar, scales), start=1):
        m = d * m + (1 - d) * w
        assert scale == pytest.approx(m / (1 - d ** t), rel=1e-5), t
    assert scales[0] == pytest.approx(wbar[0], rel=1e-5)  # the first update divides by its own batch mean
    assert scales[3] != pytest.approx(wbar[3], rel=1e-3)  # ... later ones by the running mean, not their own
    cat = grpo_straight.state.cat_state
    assert int(cat.norm_steps) == 4 and float(cat.norm_mean) == pytest.approx(m, rel=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path):
    # A learning rate of 1e30 with no clipping overflows float32 within a few steps.
    cfg = small_config(**{"train.steps": 8, "train.checkpoint_every": 1, "optimizer.learning_rate": 1e30,
                          "optimizer.clip_norm": 0.0})
    with pytest.raises(NonFiniteLoss) as info:
        run_sft(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path)
    message = str(info.value)
    bad = int(message.split("at step ")[1].split(";")[0])
    assert 1 < bad <= 8 and "last good checkpoint" in message
    ckpt = Checkpointer(tmp_path / "checkpoints" / "sft", async_save=False)
    assert ckpt.latest_step() == bad - 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == bad and rows[-1]["ok"] == 0.0
