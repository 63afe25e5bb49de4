"""`python -m jax_cat.train --plan`: the run's own programs lowered from config.json alone (issue 20, item 3).

The figures are checked against hand counts (float32 masters: 4 bytes a parameter split over the fsdp shards;
AdamW: two moments of the same size; the KV cache: 2 x layers x kv_heads x head_dim x slots x rows x 4 bytes), and
the command is checked to read no weights: the checkpoint folder holds a config.json and nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_cat import train
from jax_cat.training import plan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_only(tmp_path_factory, tiny_ckpt):
    """A checkpoint folder with the tiny model's config.json only: no safetensors, no tokenizer."""
    folder = tmp_path_factory.mktemp("config-only")
    (folder / "config.json").write_text((Path(tiny_ckpt) / "config.json").read_text())
    return folder


GRPO = ["--set", "train.method=grpo", "--set", "data.batch_size=4", "--set", "rollout.group_size=2",
        "--set", "data.max_prompt_len=12", "--set", "rollout.max_new_tokens=8", "--set", "train.micro_batches=2",
        "--set", "mesh.data=1", "--set", "mesh.fsdp=-1"]


def _no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--plan read weights")

    import jax_cat.models.hf as hf

    monkeypatch.setattr(hf, "load_hf", refuse)
    monkeypatch.setattr(hf, "safetensors_files", refuse)


def test_plan_of_a_tiny_grpo_recipe_prints_the_table_and_exits_0_without_weights(config_only, monkeypatch, capsys):
    _no_weights(monkeypatch)
    status = train.main(["--config", "sft_tiny", "--set", f"model.path={config_only}", *GRPO, "--plan", "2"])
    out = capsys.readouterr().out
    assert status == 0, out
    for row in ("training step", "rollouts (sampler)", "largest peak", "16 GiB yes", "141 GiB yes",
                "mesh data=1 x fsdp=2 x tensor=1"):
        assert row in out, (row, out)
    assert not any(config_only.glob("*.safetensors"))


def test_plan_figures_match_hand_counts(config_only):
    import jax

    from jax_cat.models.tiny import tiny_model_config
    from jax_cat.training import load_config
    from jax_cat.training.runtime import build_mesh

    cfg = load_config(None, {"model.path": str(config_only), **dict(a.split("=", 1) for a in GRPO[1::2])})
    mesh = build_mesh(cfg, jax.devices()[:2])
    result = plan.memory_plan(cfg, mesh)
    c = tiny_model_config()
    n = (c.vocab_size * c.hidden_size + c.num_hidden_layers * (
        c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim  # q, k, v
        + (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim  # their biases (qwen2)
        + c.num_attention_heads * c.head_dim * c.hidden_size  # o
        + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size) + c.hidden_size)  # mlp, 2 norms; final norm
    assert result.num_params == n
    train_phase, rollouts = result.phases[0], result.phases[1]
    # fsdp=2 splits every "embed" dim (all of them here divide by 2) except the norms' and biases' (replicated)
    replicated = c.num_hidden_layers * ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
                                        + 2 * c.hidden_size) + c.hidden_size
    assert train_phase.params == 4 * ((n - replicated) // 2 + replicated)
    assert abs(train_phase.optimizer - 2 * train_phase.params) <= 64  # two AdamW moments (+ int32 counters)
    rows, slots = 4 * 2, 12 + 8
    assert result.kv_cache == 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * slots * (rows // 2) * 4
    assert rollouts.temp >= result.kv_cache  # the sampler program holds its (batch-split) KV cache
    assert rollouts.peak >= rollouts.params + rollouts.optimizer + result.kv_cache  # the train state stays resident
    assert result.peak == max(p.peak for p in result.phases) > train_phase.params + train_phase.optimizer


def test_plan_for_more_devices_than_this_process_says_how(config_only, monkeypatch, capsys):
    _no_weights(monkeypatch)
    status = train.main(["--config", "sft_tiny", "--set", f"model.path={config_only}", *GRPO, "--plan", "64"])
    err = capsys.readouterr().err
    assert status == 2
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=64" in err and "Traceback" not in err


def test_plan_in_a_fresh_process_forces_the_cpu_devices_it_needs(config_only):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jax_cat.train", "--config", "sft_tiny", "--set", f"model.path={config_only}", *GRPO,
                           "--set", "mesh.fsdp=4", "--plan"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mesh data=1 x fsdp=4 x tensor=1 (4 cpu devices" in proc.stdout, proc.stdout



def test_rollout_note_counts_the_kv_cache_by_hand():
    """The GRPO start line's KV-cache estimate for the 1.5B recipe on 8 devices: 2 (K, V) x 28 layers x 2 KV heads x
    128 x (512 + 1024) slots x 512 / 8 rows x 2 bytes (bf16) = 2,818,572,288 bytes = 2.62 GiB, the figure the
    planning table's --plan block prints for the rollout KV cache."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    from jax_cat.training import load_config

    cfg = load_config("qwen2.5-math-1.5b_math_maj16", {})
    shape = SimpleNamespace(num_hidden_layers=28, num_key_value_heads=2, head_dim=128)
    assert 2 * 28 * 2 * 128 * 1536 * 64 * 2 == 2_818_572_288
    line = plan.rollout_note(cfg, shape, jnp.bfloat16, 8)
    assert line.startswith("rollout KV cache 2.62 GiB a device (8 devices on data x fsdp)") and "--plan" in line
