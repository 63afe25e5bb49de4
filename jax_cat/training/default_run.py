"""The default experiment: `python -m jax_cat.train` with no --config (README's first command), CAT's test-time-scaling
effect on a CPU.

Its settings are the recipe `configs/default.toml` (every key documented there; `--set KEY=VALUE` changes one), and
every stage is the trainer's own entry point, `jax_cat.training.run.run`, so each stage folder is an ordinary run
folder (config.json, metrics.jsonl, checkpoints/, final/, eval/):

1. `<out>/base/`: the tiny arithmetic model initialised with train.seed (when model.path is "tiny-arithmetic");
2. `<out>/warm_start/`: the recipe's [warmup] section as its own SFT run (`warmup_config`, the trainer's warm-up
   stage), reused while its config.json is unchanged;
3. `<out>/grpo/` and `<out>/grpo_cat/`: the recipe's GRPO stage from that SAME warm start with strategy pass@1 (plain
   GRPO) and with the recipe's strategy (CAT, pass@16 by default: advantages weighted by N(1-p)^(N-1));
4. each model is scored by the trainer's end-of-run evaluation (`jax_cat.training.run.evaluate_model`, i.e.
   `jax_cat.evaluate.evaluate`); CAT - plain at each k with a 95% paired bootstrap CI over problems
   (`jax_cat.evaluate.paired_difference`); a table is printed, `<out>/results.json` and `<out>/passk.png` written.

The paper's claim to see: plain GRPO sharpens the policy (pass@1 up, pass@k at large k down from the warm start),
CAT pass@N keeps the coverage. `DefaultRun` is a flat view of the recipe's keys (the names the results and
`python -m jax_cat.training.default_run --seed 1` use).

This file is the driver (stages through the trainer's `run`, the CLI); the settings and stage configs are in
`default_settings.py`, the table and plot in `default_report.py` (their names are importable from here too).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jax_cat.atomic import atomic_write_text
from jax_cat.io import compile_cache
from jax_cat.evaluate import paired_difference, provenance  # noqa: F401 - provenance: re-exported (old home)
from jax_cat.training.default_report import (  # noqa: F401 - re-exported (old home)
    _model_entry,
    _without_per_problem,
    format_table,
    plot_passk,
)
from jax_cat.training.default_settings import (  # noqa: F401 - re-exported (old home)
    _KEYS,
    DEFAULT_OUT,
    DEFAULT_RECIPE,
    KS,
    VARIANTS,
    DefaultRun,
    _get,
    _ks,
    arm_config,
    check_experiment,
    check_preset,
    default_config,
    from_config,
    trainer_config,
    warm_start_config,
)


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


def rerun_command(cfg: Any, out: Path) -> str:
    """The command that reruns this experiment: README's first command with a `--set KEY=VALUE` for every key that
    differs from configs/default.toml (so a results.json says how it was made, not only what the recipe was)."""
    from jax_cat.training.config import _flatten

    shipped, ours = _flatten(default_config().to_dict()), _flatten(cfg.to_dict())
    sets = [f" --set {key}={_set_value(value)}" for key, value in ours.items() if shipped.get(key) != value]
    return "python -m jax_cat.train" + (f" --out {out}" if Path(out) != Path(DEFAULT_OUT) else "") + "".join(sets)


def _set_value(value: Any) -> str:
    """A value as `--set` reads it back (lists comma-separated, None as none)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


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
        "command": rerun_command(cfg, out),
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
    compile_cache.add_flags(p)
    return p


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point: `python -m jax_cat.train [--out DIR] [--set KEY=VALUE ...]` (no --config) calls main(namespace);
    the module CLI parses its own argv (the view's flags, then --set)."""
    if args is None or not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(None if args is None else list(args))
        compile_cache.enable_from_args(args, prog="python -m jax_cat.training.default_run")  # train.py enables its own
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
