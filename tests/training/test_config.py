"""Config parsing and the CLI's bad-input contract: one line on stderr, exit 2, before anything compiles."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_cat.training.config import Config, ConfigError, check_mesh, load_config, recipe_names

REPO = Path(__file__).resolve().parents[2]


def test_every_recipe_loads_and_the_names_resolve():
    names = recipe_names()
    assert {"sft", "sft_cat", "grpo", "grpo_cat", "sft_then_cat_rl", "qwen2.5-math-1.5b_math_maj16"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, Config)
    assert load_config("grpo_cat").strategy == "pass@8"
    qwen = load_config("qwen2.5-math-1.5b_math_maj16")
    assert (qwen.mesh.fsdp, qwen.model.compute_dtype, qwen.rollout.group_size) == (-1, "bfloat16", 8)
    assert check_mesh(qwen, 8) == (1, 8, 1)
    two = load_config(REPO / "configs" / "sft_then_cat_rl.toml", ["train.steps=7", "warmup.steps=3"])
    assert (two.train.steps, two.warmup.steps, two.eval.ks) == (7, 3, (1, 2, 4, 8, 16, 32, 64))


def test_overrides_are_typed():
    cfg = load_config(None, ["train.steps=12", "optimizer.learning_rate=3e-4", "strategy=maj@16",
                             "loss.weight_clip=none", "eval.ks=1,2,4", "logging.progress=false", "mesh.fsdp=2"])
    assert (cfg.train.steps, cfg.optimizer.learning_rate, cfg.strategy) == (12, 3e-4, "maj@16")
    assert cfg.loss.weight_clip is None and cfg.eval.ks == (1, 2, 4) and cfg.logging.progress is False
    assert cfg.replace(**{"rollout.group_size": 16}).rollout.group_size == 16


@pytest.mark.parametrize("overrides,message", [
    (["train.stpes=3"], "unknown config key 'train.stpes'; did you mean 'train.steps'?"),
    (["learning_rate=1e-3"], "did you mean 'optimizer.learning_rate'?"),
    (["train.steps=ten"], "train.steps: expected an integer, got 'ten'"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate: expected a number"),
    (["train.method=ppo"], "train.method: 'ppo' is not one of 'sft', 'grpo'"),
    (["strategy=top@3"], "strategy: strategy spec 'top@3' not understood"),
    (["train.steps"], "expected KEY=VALUE"),
    (["eval.ks=1,128"], "eval.ks [1, 128] must all be <= eval.n=16"),
])
def test_bad_keys_and_values_name_the_problem(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="no such file or recipe; did you mean 'grpo_cat'"):
        load_config("grpo_catt")


def test_mesh_must_fit_the_devices():
    with pytest.raises(ConfigError, match="needs 6 devices; this run has 8"):
        check_mesh(load_config(None, ["mesh.data=3", "mesh.fsdp=2"]), 8)
    with pytest.raises(ConfigError, match="does not split over data x fsdp = 8"):
        check_mesh(load_config(None, ["data.batch_size=12"]), 8)


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jax_cat.train", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("args,expected", [
    (["--set", "train.stpes=3"],
     "python -m jax_cat.train: error: unknown config key 'train.stpes'; did you mean 'train.steps'?"),
    (["--set", "mesh.data=3"],
     "python -m jax_cat.train: error: mesh data=3 x fsdp=1 x tensor=1 needs 3 devices; this run has 8: change mesh.* "
     "(-1 = the rest), or for a CPU dry run start with XLA_FLAGS=--xla_force_host_platform_device_count=3"),
])
def test_cli_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    proc, _ = _cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == expected
    assert not (tmp_path / "run").exists()  # nothing was written (or compiled) before the check
