"""The trainer: configs, jitted SFT/GRPO steps, rollouts, the two loops, checkpoints and metrics.

Entry points: `run_sft(cfg, *, model=None, tokenizer=None, mesh=None, out=None, resume=False)` and
`run_grpo(...)` (same keywords) return a `RunResult` (trained model + logged metrics); `run(cfg, out=...)` runs a
whole recipe (warm-up, main stage, final HF checkpoint, evaluation); `load_config(path_or_name, overrides)`.
"""
from jax_cat.training.config import Config, ConfigError, load_config
from jax_cat.training.grpo import run_grpo
from jax_cat.training.rollout import RolloutBatch, collect_rollouts
from jax_cat.training.run import run, warmup_config
from jax_cat.training.runtime import NonFiniteLoss, RunResult
from jax_cat.training.sft import run_sft

__all__ = [
    "Config", "ConfigError", "NonFiniteLoss", "RolloutBatch", "RunResult", "collect_rollouts", "load_config",
    "run", "run_grpo", "run_sft", "warmup_config",
]
