"""The default experiment: `python -m jax_cat.train` with no --config (README's first command), CAT's test-time-scaling
effect on a CPU.

Its settings are the recipe `configs/default.toml` (every key documented there; `--set KEY=VALUE` changes one), and
every stage is the trainer's own entry point, `jax_cat.training.run.run`, so each stage folder is an ordinary run
folder (config.json, metrics.jsonl, checkpoints/, final/, eval/):

1. `<out>/base/`: the tiny arithmetic model initialised with train.seed (when model.path is "tiny-arithmetic");
2. `<out>/warm_start/`: the recipe's [warmup] section as its own SFT run (`warmup_config`, the trainer's warm-up
   stage), reused while its config.json is unchanged;
3. `<out>/grpo/` and `<out>/grpo_cat/`: the recipe's GRPO stage from that SAME warm start with strategy pass@1 (plain
   GRPO) and with the recipe's strategy (CAT, e.g. pass@8: advantages weighted by N(1-p)^(N-1));
4. each model is scored by the trainer's end-of-run evaluation (`jax_cat.training.run.evaluate_model`, i.e.
   `jax_cat.evaluate.evaluate`); CAT - plain at each k with a 95% paired bootstrap CI over problems
   (`jax_cat.evaluate.paired_difference`); a table is printed, `<out>/results.json` and `<out>/passk.png` written.

The paper's claim to see: plain GRPO sharpens the policy (pass@1 up, pass@k at large k down from the warm start),
CAT pass@N keeps the coverage. `DefaultRun` is a flat view of the recipe's keys (the names the results and
`python -m jax_cat.training.default_run --seed 1` use).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_cat.atomic import atomic_write, atomic_write_text
from jax_cat.evaluate import paired_difference, provenance  # noqa: F401 - provenance: re-exported (old home)
from jax_cat.extras import pyplot

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
        from jax_cat.data.arithmetic import prompt_length

        return prompt_length(self.preset) + 1  # + <bos>

    @property
    def answer_len(self) -> int:
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


# ------------------------------------------------------------------------------------------------ stages
def _devices() -> list | None:
    """Data parallel over the accelerators; on CPU one device (forced host devices share the same cores)."""
    import jax

    devices = jax.devices()
    return devices[:1] if devices[0].platform == "cpu" else None


def default_mesh(cfg: Any):
    """The mesh the default experiment trains on (`_devices`)."""
    from jax_cat.training.runtime import build_mesh

    return build_mesh(cfg, _devices())


def base_checkpoint(cfg: Any, out: Path) -> Path:
    """The starting model: `<out>/base/` (the arithmetic model initialised with train.seed, built once) when
    model.path is "tiny-arithmetic", else model.path itself."""
    if cfg.model.path != "tiny-arithmetic":
        return Path(cfg.model.path)
    from jax_cat.models.tiny import arithmetic_model_config, build_arithmetic_checkpoint

    path = out / "base"
    stamp = json.dumps({"config": dataclasses.asdict(arithmetic_model_config()), "seed": cfg.train.seed},
                       sort_keys=True, default=str)
    marker = path / "jax_cat_default.json"
    if marker.is_file() and marker.read_text().strip() == stamp:
        return path
    build_arithmetic_checkpoint(path, seed=cfg.train.seed)
    atomic_write_text(marker, stamp + "\n")
    return path


def finished_with(cfg: Any, out: Path) -> bool:
    """Whether `out` holds a finished run of exactly `cfg` (config.json equal, final/ and eval/results.json there)."""
    done = all((out / p).is_file() for p in ("config.json", "final/config.json", "eval/results.json"))
    return done and json.loads((out / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))


def run_stage(cfg: Any, out: Path, *, reuse: bool) -> tuple[dict[str, Any], bool]:
    """Runs `cfg` into `out` with the trainer's `run` -> ({"history", "eval", "final", "seconds"}, reused).

    With `reuse`, a finished run of the same config (config.json, final/, eval/results.json) is read back instead."""
    from jax_cat.training.run import run

    if reuse and finished_with(cfg, out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (out / "metrics.jsonl").is_file() else []
        return {"history": rows, "eval": json.loads((out / "eval" / "results.json").read_text()),
                "final": out / "final", "seconds": 0.0}, True
    t0 = time.perf_counter()
    summary = run(cfg, out=out, overwrite=True, devices=_devices())
    history = summary["stages"][cfg.train.method].history
    return {"history": history, "eval": summary["eval"], "final": summary["final"],
            "seconds": time.perf_counter() - t0}, False


def _model_entry(label: str, strategy: str, stage: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    ev = stage["eval"]
    num_correct = ev["num_correct"]
    return {"label": label, "strategy": strategy, "train": train, "pass@k": _without_per_problem(ev["metrics"]["pass@k"]),
            "num_problems": ev["num_problems"], "n": ev["config"]["n"], "seconds": ev["timing_s"],
            "solved_fraction": float(np.mean(np.asarray(num_correct) > 0)), "num_correct": num_correct}


def _without_per_problem(rows: Mapping[str, list]) -> dict[str, list]:
    return {k: v for k, v in rows.items() if k != "per_problem"}


# ------------------------------------------------------------------------------------------------ report
def format_table(results: dict[str, Any]) -> str:
    """The printed pass@k table: one row per model, one column per k, plus CAT minus plain GRPO."""
    models = results["models"]
    ks = next(iter(models.values()))["pass@k"]["k"]
    name_w = max([len(m["label"]) for m in models.values()] + [len("  95% CI high")]) + 2
    lines = [" " * name_w + "".join(f"{'k=' + str(k):>8s}" for k in ks)]
    for m in models.values():
        lines.append(f"{m['label']:<{name_w}s}" + "".join(f"{v:8.3f}" for v in m["pass@k"]["mean"]))
    if "grpo" in models and "grpo_cat" in models:
        diff = np.asarray(models["grpo_cat"]["pass@k"]["mean"]) - np.asarray(models["grpo"]["pass@k"]["mean"])
        lines.append(f"{'CAT - plain':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in diff))
        paired = results.get("cat_minus_plain")
        if paired:
            lines.append(f"{'  95% CI low':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_low"]))
            lines.append(f"{'  95% CI high':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_high"]))
    return "\n".join(lines)


def plot_passk(results: dict[str, Any], path: Path) -> Path | None:
    """pass@k vs k (log2 axis) for every model with its bootstrap band, written atomically as PNG (None: no matplotlib)."""
    plt = pyplot(feature="the pass@k plot")
    if plt is None:
        return None

    styles = {"sft": ("0.45", "--"), "grpo": ("C0", "-"), "grpo_cat": ("C3", "-")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, m in results["models"].items():
        rows = m["pass@k"]
        color, line = styles.get(name, (None, "-"))
        ax.plot(rows["k"], rows["mean"], line, marker="o", ms=4, color=color, label=m["label"])
        ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, linewidth=0)
    ks = next(iter(results["models"].values()))["pass@k"]["k"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples at test time)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    cfg = results["settings"]
    ax.set_title(f"{cfg['preset']}: {results['num_problems']} held-out problems, n={cfg['eval_samples']} each, "
                 f"95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------ the run
def run_default(run: DefaultRun | Any | None = None, out: str | os.PathLike = DEFAULT_OUT, *,
                say: Callable[[str], None] = _say, overwrite: bool = False) -> dict[str, Any]:
    """Runs the whole default experiment into `out` and returns the results dict (also in `<out>/results.json`).

    `run`: a `DefaultRun` view, a Config (e.g. `default_config(["train.seed=1"])`) or None (the recipe as shipped).
    One run at a time owns `out` (a second gets one line). A folder that holds a finished default run
    (results.json) is refused unless `overwrite`; an unfinished one is continued (the SFT warm start is reused
    when its settings are unchanged, the RL arms start again from it).
    """
    from jax_cat.training.run_folder import RunFolderError, check_out_dir, owner_lock

    cfg = default_config() if run is None else run.config() if isinstance(run, DefaultRun) else run
    check_experiment(cfg)
    out = Path(out)
    check_out_dir(out)
    with owner_lock(out):
        if (out / "results.json").exists() and not overwrite:
            raise RunFolderError(
                f"{out} already holds a finished default run (results.json, passk.png): read them there, or run it "
                f"again with `python -m jax_cat.train --out {out} --overwrite` (the SFT warm start is reused)"
            )
        return _run_default(cfg, out, say)


def _run_default(cfg: Any, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    view = from_config(cfg)
    cat_label = f"CAT GRPO {cfg.strategy}"
    say(f"jax-cat default run -> {out}: recipe configs/{DEFAULT_RECIPE}.toml, model {cfg.model.path} on "
        f"{cfg.data.dataset}; SFT warm start, then plain GRPO and {cat_label} from it; pass@k on "
        f"{cfg.eval.num_problems} held-out problems")
    base = base_checkpoint(cfg, out)
    warm_cfg = warm_start_config(cfg, base)
    warm, reused = run_stage(warm_cfg, out / "warm_start", reuse=True)
    losses = [row["loss"] for row in warm["history"] if "loss" in row]
    warm_info = {"reused": reused, "seconds": warm["seconds"], "steps": warm_cfg.train.steps,
                 "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    if reused:
        say(f"[1/3] SFT warm start: reusing {out / 'warm_start'} (same settings as before)")
    else:
        say(f"[1/3] SFT warm start: {warm_cfg.train.steps} steps in {warm['seconds']:.0f}s"
            + (f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""))
    models = {"sft": _model_entry("SFT warm start", warm_cfg.strategy, warm, warm_info)}
    arms = {"grpo": ("plain GRPO", "pass@1"), "grpo_cat": (cat_label, cfg.strategy)}
    for i, (name, (label, strategy)) in enumerate(arms.items(), start=2):
        arm_cfg = arm_config(cfg, warm["final"], strategy)
        stage, _ = run_stage(arm_cfg, out / name, reuse=False)  # an RL arm always starts again from the warm start
        rewards = [row["reward"] for row in stage["history"] if "reward" in row]
        info = {"seconds": stage["seconds"], "strategy": strategy, "steps": arm_cfg.train.steps,
                "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None}
        models[name] = _model_entry(label, strategy, stage, info)
        p = models[name]["pass@k"]
        say(f"[{i}/3] {label}: {arm_cfg.train.steps} steps in {stage['seconds']:.0f}s; "
            f"pass@1 {p['mean'][0]:.3f}, pass@{p['k'][-1]} {p['mean'][-1]:.3f}")

    results = {
        "settings": dataclasses.asdict(view),
        "config": cfg.to_dict(),
        "num_problems": models["sft"]["num_problems"],
        "models": models,
        "cat_minus_plain": paired_difference(models["grpo_cat"]["num_correct"], models["grpo"]["num_correct"],
                                             n=cfg.eval.n, ks=models["grpo"]["pass@k"]["k"], seed=cfg.train.seed + 2),
        "evaluation": {k: v for k, v in warm["eval"]["config"].items()
                       if k in ("temperature", "top_p", "top_k", "max_new_tokens", "use_chat_template", "system",
                                "chat_template_applied", "reward_fn", "num_resamples", "confidence", "metrics")},
        "wall_seconds": time.perf_counter() - t_start,
        "provenance": provenance(),
        "command": "python -m jax_cat.train" + (f" --out {out}" if out != DEFAULT_OUT else ""),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    plot = plot_passk(results, out / "passk.png")
    say(f"\npass@k on {results['num_problems']} held-out problems ({cfg.eval.n} samples each; CAT - plain "
        "with a 95% paired bootstrap CI over problems, one training seed: rerun with --set train.seed=1 to see the "
        "seed's share):")
    say(format_table(results))
    wrote = f"{out / 'results.json'}, {plot}" if plot is not None else f"{out / 'results.json'}"
    say(f"\nwrote {wrote} in {results['wall_seconds']:.0f}s")
    return results


# ------------------------------------------------------------------------------------------------ CLIs
def build_parser() -> argparse.ArgumentParser:
    """`python -m jax_cat.training.default_run`: the default experiment with its view's flags (--seed 1 ...)."""
    p = argparse.ArgumentParser(prog="python -m jax_cat.training.default_run", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="run again into a folder that holds a finished run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key of configs/default.toml (repeatable)")
    types = {"preset": str, "cat_strategy": str, "sft_learning_rate": float, "grpo_learning_rate": float}
    for field in dataclasses.fields(DefaultRun):
        p.add_argument(f"--{field.name.replace('_', '-')}", type=types.get(field.name, int), default=None,
                       help=f"recipe key {_KEYS.get(field.name, 'data.dataset')}")
    return p


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point: `python -m jax_cat.train [--out DIR] [--set KEY=VALUE ...]` (no --config) calls main(namespace);
    the module CLI parses its own argv (the view's flags, then --set)."""
    if args is None or not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(None if args is None else list(args))
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(DefaultRun)
             if getattr(args, f.name, None) is not None}
    from jax_cat.training.config import parse_set

    overrides = DefaultRun(**flags).overrides() if flags else {}
    overrides.update(parse_set(getattr(args, "overrides", None) or []))
    run_default(default_config(overrides), getattr(args, "out", None) or DEFAULT_OUT,
                overwrite=bool(getattr(args, "overwrite", False)))
    return 0


if __name__ == "__main__":
    from jax_cat.cli import quiet_third_party, run_cli

    quiet_third_party()
    raise SystemExit(run_cli(main, sys.argv[1:], prog="python -m jax_cat.training.default_run"))
