"""The default experiment's settings: the recipe `configs/default.toml` as a trainer Config, the flat `DefaultRun`
view of its keys (the names the results and `python -m jax_cat.training.default_run --seed 1` use), the checks
that a Config can drive the experiment, and the Config of each stage (the warm start, the two RL arms)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs") / "default"
DEFAULT_RECIPE = "default"
KS = (1, 2, 4, 8, 16, 32, 64)
VARIANTS = (("grpo", "plain GRPO"), ("grpo_cat", "CAT GRPO"))

# DefaultRun field -> the recipe key it shows (`preset` is data.dataset = "arithmetic:<preset>", whose fixed widths
# also set data.max_prompt_len, data.max_target_len, rollout.max_new_tokens and eval.max_new_tokens).
_KEYS = {
    "data_seed": "data.data_seed", "test_size": "eval.num_problems", "seed": "train.seed",
    "sft_steps": "warmup.steps", "sft_batch_size": "warmup.batch_size", "sft_learning_rate": "warmup.learning_rate",
    "sft_warmup_steps": "warmup.lr_warmup_steps", "sft_end_lr_ratio": "warmup.end_lr_ratio", "grpo_steps": "train.steps", "grpo_prompts": "data.batch_size",
    "group_size": "rollout.group_size", "grpo_learning_rate": "optimizer.learning_rate",
    "grpo_warmup_steps": "optimizer.warmup_steps", "cat_strategy": "strategy", "eval_samples": "eval.n",
    "log_every": "train.log_every",
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@dataclasses.dataclass(frozen=True)
class DefaultRun:
    """A flat view of the default recipe's keys (configs/default.toml); a field left None takes the recipe's value.

    Attributes (recipe key):
      preset: the arithmetic preset (data.dataset = "arithmetic:<preset>"; fixed-width prompts and answers).
      data_seed (data.data_seed), test_size (eval.num_problems), seed (train.seed),
      sft_steps, sft_batch_size, sft_learning_rate, sft_warmup_steps (warmup.steps, .batch_size, .learning_rate,
        .lr_warmup_steps): the plain-CE warm start,
      sft_end_lr_ratio (warmup.end_lr_ratio): the warm start's cosine ends at this fraction of its learning rate
        (1.0 = constant after the warm-up: a warm start trained down to a small rate settles where the loss is sharp,
        and RL steps larger than that rate undo it; docs/results.md, issue 21),
      grpo_steps, grpo_prompts, group_size, grpo_learning_rate, grpo_warmup_steps (train.steps, data.batch_size,
        rollout.group_size, optimizer.learning_rate, optimizer.warmup_steps): each RL arm,
      cat_strategy (strategy): the CAT arm's strategy (the plain arm is always pass@1),
      eval_samples (eval.n; eval.ks = 1, 2, 4, ... up to it), log_every (train.log_every).
    """

    preset: str | None = None
    data_seed: int | None = None
    test_size: int | None = None
    seed: int | None = None
    sft_steps: int | None = None
    sft_batch_size: int | None = None
    sft_learning_rate: float | None = None
    sft_warmup_steps: int | None = None
    sft_end_lr_ratio: float | None = None
    grpo_steps: int | None = None
    grpo_prompts: int | None = None
    group_size: int | None = None
    grpo_learning_rate: float | None = None
    grpo_warmup_steps: int | None = None
    cat_strategy: str | None = None
    eval_samples: int | None = None
    log_every: int | None = None

    def __post_init__(self) -> None:
        recipe = from_config(default_config())
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                object.__setattr__(self, f.name, getattr(recipe, f.name))
        check_preset(self.preset)
        check_experiment(self.config())  # a bad value: ConfigError (a ValueError) naming the recipe key

    @property
    def ks(self) -> tuple[int, ...]:
        """1, 2, 4, ... up to eval_samples (and eval_samples itself)."""
        return _ks(self.eval_samples)

    @property
    def prompt_len(self) -> int:
        """The preset's prompt length in tokens (with <bos>): the data.max_prompt_len that fits the task."""
        from jax_cat.data.arithmetic import prompt_length

        return prompt_length(self.preset) + 1  # + <bos>

    @property
    def answer_len(self) -> int:
        """The preset's answer length in tokens (with <eos>): the target and new-token limits that fit the task."""
        from jax_cat.data.arithmetic import get_spec

        return int(get_spec(self.preset).answer_width) + 1  # + <eos>

    def overrides(self) -> dict[str, Any]:
        """The recipe keys this view sets (dotted, for `load_config`)."""
        out: dict[str, Any] = {key: getattr(self, name) for name, key in _KEYS.items()}
        out.update({"data.dataset": f"arithmetic:{self.preset}", "data.max_prompt_len": self.prompt_len,
                    "data.max_target_len": self.answer_len, "rollout.max_new_tokens": self.answer_len,
                    "eval.max_new_tokens": self.answer_len, "eval.ks": self.ks})
        return out

    def config(self):
        """The trainer Config of the default experiment with this view's values."""
        return default_config(self.overrides())


def _ks(n: int) -> tuple[int, ...]:
    return tuple(sorted({k for k in KS if k <= n} | {n}))


def from_config(cfg: Any) -> DefaultRun:
    """The flat view of a default-experiment Config (no checks; `DefaultRun(...)` checks)."""
    view = object.__new__(DefaultRun)
    object.__setattr__(view, "preset", cfg.data.dataset.partition(":")[2])
    for name, key in _KEYS.items():
        object.__setattr__(view, name, _get(cfg, key))
    return view


def default_config(overrides: Mapping[str, Any] | Sequence[str] = ()):
    """The default experiment's Config: the recipe configs/default.toml with `overrides` ({key: value} or
    ["key=value", ...], as --set)."""
    from jax_cat.training.config import load_config

    return load_config(DEFAULT_RECIPE, overrides)


def check_experiment(cfg: Any) -> None:
    """ConfigError unless `cfg` can drive the default experiment: a GRPO recipe whose held-out problems the
    arithmetic task can score at every k."""
    from jax_cat.training.config import ConfigError

    if cfg.train.method != "grpo":
        raise ConfigError(f"train.method={cfg.train.method!r}: the default experiment compares two GRPO arms; "
                          "set train.method=grpo (or run the recipe itself with --config)")
    if not cfg.train.eval_at_end or cfg.eval.num_problems < 1:
        raise ConfigError("the default experiment compares the arms' held-out pass@k: keep train.eval_at_end=true "
                          "and eval.num_problems >= 1")
    if "pass@k" not in cfg.eval.metrics:
        raise ConfigError(f"eval.metrics={list(cfg.eval.metrics)}: the default experiment reports pass@k; add it")
    if cfg.data.dataset.startswith("arithmetic"):
        check_preset(cfg.data.dataset.partition(":")[2] or "sum3")


def check_preset(preset: str) -> None:
    """ConfigError unless the arithmetic `preset` has fixed-width prompts and answers (the experiment's lengths)."""
    from jax_cat.data.arithmetic import get_spec
    from jax_cat.training.config import ConfigError

    try:
        spec = get_spec(preset)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"data.dataset=arithmetic:{preset}: {err}") from None
    if not spec.pad_operands or not spec.answer_width:
        raise ConfigError(f"data.dataset=arithmetic:{preset}: the default experiment's preset needs fixed-width "
                          "prompts and answers (like sum3_2d)")


def trainer_config(run: DefaultRun | Any, *, method: str, model_path: str | os.PathLike, strategy: str = "pass@1"):
    """The trainer Config of one stage: method "sft" = the warm start (`warmup_config` of the recipe), "grpo" = an
    RL arm with `strategy`, both from `model_path`. `run`: a DefaultRun view or a default-experiment Config."""
    cfg = run.config() if isinstance(run, DefaultRun) else run
    return warm_start_config(cfg, model_path) if method == "sft" else arm_config(cfg, model_path, strategy)


def warm_start_config(cfg: Any, base: str | os.PathLike):
    """The warm start's run: the recipe's warm-up stage (`jax_cat.training.run.warmup_config`) from `base`, saved
    and evaluated like any run."""
    from jax_cat.training.run import warmup_config

    warm = warmup_config(cfg)
    return warm.replace(**{"model.path": str(base), "warmup.steps": 0, "train.save_final": True})


def arm_config(cfg: Any, warm: str | os.PathLike, strategy: str):
    """One RL arm's run: the recipe's GRPO stage with `strategy`, from the warm start `warm` (no warm-up of its own)."""
    return cfg.replace(**{"model.path": str(warm), "warmup.steps": 0, "strategy": strategy,
                          "train.save_final": True})
