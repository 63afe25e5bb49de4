"""The SFT and GRPO loops on the tiny model: learning, exact stop/resume, NaN stop keeping the last good checkpoint."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jax_cat.training import NonFiniteLoss, run_grpo, run_sft
from jax_cat.training.checkpoint import Checkpointer
from tests.training.conftest import make_model, one_device, small_config


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sft_loss_decreases(tokenizer):
    cfg = small_config(**{"train.steps": 16, "train.log_every": 4, "data.batch_size": 16,
                          "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 2})
    result = run_sft(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device())
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 4 and result.history[-1]["step"] == 16
    assert losses[0] > 4.0  # ~ln(128): an untrained char model
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(np.isfinite(losses))


def test_sft_stop_and_resume_equals_straight_run(tokenizer, tmp_path):
    cfg = small_config(**{"train.steps": 4, "train.checkpoint_every": 2})
    straight = run_sft(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "a")
    first = run_sft(cfg.replace(**{"train.stop_after": 2}), model=make_model(0), tokenizer=tokenizer, mesh=one_device(),
                    out=tmp_path / "b")
    assert int(first.state.step) == 2
    resumed = run_sft(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "b", resume=True)
    assert int(resumed.state.step) == 4
    assert _max_diff(jax.device_get(straight.state.params), jax.device_get(resumed.state.params)) <= 1e-6
    assert _max_diff(jax.device_get(straight.state.opt_state), jax.device_get(resumed.state.opt_state)) <= 1e-6
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # each step logged once across the two invocations
    straight_rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[-1]["loss"] - straight_rows[-1]["loss"]) < 1e-6


def test_grpo_stop_and_resume_equals_straight_run(tokenizer, tmp_path):
    cfg = small_config(**{"train.method": "grpo", "strategy": "pass@4", "train.steps": 4,
                          "train.updates_per_batch": 2, "train.checkpoint_every": 2, "data.batch_size": 4})
    rewards = lambda texts, golds: [float(len(t) % 2) for t in texts]  # mixed groups from an untrained model
    straight = run_grpo(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "a", reward_fn=rewards)
    run_grpo(cfg.replace(**{"train.stop_after": 2}), model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "b",
             reward_fn=rewards)
    resumed = run_grpo(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "b", resume=True,
                       reward_fn=rewards)
    assert int(resumed.state.step) == 4
    assert straight.history[0]["frac_mixed_groups"] > 0  # the update was not trivially zero
    assert _max_diff(jax.device_get(straight.state.params), jax.device_get(resumed.state.params)) <= 1e-6


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
