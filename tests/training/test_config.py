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
    # issue 19 item 12: every value is range-checked here, before any model is loaded
    (["eval.temperature=-1"], "eval.temperature must be in [0, inf), got -1.0"),
    (["rollout.top_p=2"], "rollout.top_p must be in (0, 1], got 2.0"),
    (["data.limit=-3"], "data.limit must be >= 1, got -3"),
    (["optimizer.learning_rate=nan"], "optimizer.learning_rate must be in (0, inf), got nan"),
    (["optimizer.b2=1"], "optimizer.b2 must be in [0, 1), got 1.0"),
    (["train.stop_after=0"], "train.stop_after must be >= 1, got 0"),
    (["data.dataset="], "data.dataset must not be empty"),
    (["eval.metrics=pass@k,top@k"], "eval.metrics: 'top@k' is not one of 'pass@k', 'maj@k', 'bon@k'"),
    (["eval.metrics="], "eval.metrics is empty"),
    (["eval.ks="], "eval.ks is empty"),
    # issue 19 item 6: objectives that can never move
    (["train.method=grpo", "rollout.group_size=1"], "rollout.group_size=1: GRPO's advantage is a sample's reward minus"),
    (["train.method=grpo", "strategy=maj@1"], "strategy=maj@1 with loss.min_k=2: the majority threshold must be in [1, 1]"),
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
    (["--config", "sft_tiny", "--set", "train.stpes=3"],
     "python -m jax_cat.train: error: unknown config key 'train.stpes'; did you mean 'train.steps'?"),
    (["--config", "sft_tiny", "--set", "mesh.data=3"],
     "python -m jax_cat.train: error: mesh data=3 x fsdp=1 x tensor=1 needs 3 devices; this run has 8: change mesh.* "
     "(-1 = the rest), or for a CPU dry run start with XLA_FLAGS=--xla_force_host_platform_device_count=3"),
])
def test_cli_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    proc, _ = _cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == expected
    assert not (tmp_path / "run").exists()  # nothing was written (or compiled) before the check


# One value out of range for every numeric key (issue 19 item 12): a key added without a range check fails here.
OUT_OF_RANGE = {
    "train.steps": -1, "train.seed": -1, "train.checkpoint_every": -1, "train.micro_batches": 0,
    "train.updates_per_batch": 0, "train.log_every": 0, "train.stop_after": 0, "data.data_seed": -1,
    "data.batch_size": 0, "data.max_prompt_len": 0, "data.max_target_len": 0, "data.max_truncated_fraction": 1.5, "data.limit": 0,
    "model.logprob_chunk": 0, "optimizer.learning_rate": 0, "optimizer.warmup_steps": -1, "optimizer.end_lr_ratio": 1.5,
    "optimizer.weight_decay": -0.1, "optimizer.b1": 1.0, "optimizer.b2": -0.1, "optimizer.eps": 0,
    "optimizer.clip_norm": -1, "rollout.group_size": 0, "rollout.max_new_tokens": 0, "rollout.temperature": -0.5,
    "rollout.top_p": 0, "rollout.top_k": -1, "warmup.steps": -1, "warmup.learning_rate": -1e-3,
    "warmup.batch_size": -1, "mesh.data": 0, "mesh.fsdp": -2, "mesh.tensor": 0, "checkpoint.keep": 0,
    "eval.num_problems": -1, "eval.n": 0, "eval.ks": "1,0", "eval.max_new_tokens": -1, "eval.temperature": float("inf"),
    # issue 24: the warm-up stage's own optimizer keys and the evaluation's decode batch
    "warmup.lr_warmup_steps": -1, "warmup.end_lr_ratio": 1.5, "warmup.weight_decay": -0.1, "eval.batch_size": 0,
    "lora.rank": -1, "lora.alpha": 0.0, "lora.dropout": 1.0,
}


def _numeric_keys() -> list[str]:
    import dataclasses
    import typing

    keys = []
    for section in dataclasses.fields(Config):
        hint = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(hint) or section.name == "loss":  # loss: CATLossConfig checks itself
            continue
        for f in dataclasses.fields(hint):
            arg_types = set(typing.get_args(typing.get_type_hints(hint)[f.name])) | {typing.get_type_hints(hint)[f.name]}
            if arg_types & {int, float} or typing.get_type_hints(hint)[f.name] == tuple[int, ...]:
                keys.append(f"{section.name}.{f.name}")
    return keys


def test_every_numeric_key_has_a_range_check():
    assert sorted(_numeric_keys()) == sorted(OUT_OF_RANGE), "add the new key to OUT_OF_RANGE (and a check)"
    for key, value in OUT_OF_RANGE.items():
        with pytest.raises(ConfigError) as info:
            load_config(None, {key: value})
        assert str(info.value).startswith(key), (key, str(info.value))


def test_lora_section_builds_the_adapter_config_and_refuses_unknown_targets():
    from jax_cat.models.lora import LoRAConfig

    cfg = load_config(None, {"lora.rank": "8", "lora.alpha": "16", "lora.targets": "q_proj,v_proj", "train.seed": 3})
    assert cfg.lora_config() == LoRAConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"), seed=3)
    assert load_config(None, {}).lora_config() is None  # rank 0: full fine-tuning
    with pytest.raises(ConfigError, match="lora: targets"):
        load_config(None, {"lora.rank": 8, "lora.targets": "qkv_proj"})
