"""The run folder `--out`: one owner at a time, never replaced by accident, resumed only by the same run.

- `check_out_dir`: `--out` must be a folder we can write (not a file, not on a read-only file system);
- `owner_lock`: an exclusive lock held for the whole run (`jax_cat.atomic.output_lock` on `<out>.lock`, released
  by the kernel even on SIGKILL): a second trainer on the same folder is refused with one line and touches nothing;
- `prepare_run_folder`: a folder that already holds a run is refused unless `resume` (continue it) or `overwrite`
  (the run's own entries are removed first); on resume, `config_changes` compares the new config with the run's
  `config.json` and only the keys in `SAFE_ON_RESUME` may differ (see docs/training.md, "Resume").
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jax_cat.atomic import OutputBusyError, output_lock
from jax_cat.training.config import Config, ConfigError, _flatten  # the one flattening of a settings table

__all__ = ["RUN_ENTRIES", "SAFE_ON_RESUME", "RunFolderError", "check_out_dir", "check_run_folder", "config_changes", "owner_lock",
           "prepare_run_folder", "run_entries"]

# What a run writes into its folder (docs/training.md, "What a run writes"); --overwrite removes these and only these.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoints", "final", "eval", "tb", "wandb")

# Keys --resume may change: they do not change what the steps already taken computed, nor what the rest computes
# (beyond float rounding for train.micro_batches, lora.rollout and the mesh). train.steps is special: see
# `config_changes`.
SAFE_ON_RESUME = (
    "train.steps", "train.stop_after", "train.log_every", "train.checkpoint_every", "train.eval_at_end",
    "train.save_final", "train.export_dtype", "lora.export", "lora.rollout", "train.micro_batches", "model.remat", "model.logprob_chunk", "data.eval_split", "mesh.data", "mesh.fsdp",
    "mesh.tensor", "checkpoint.keep", "checkpoint.async_save", "logging.progress", "logging.tensorboard",
    "logging.report_to", "logging.project", "logging.run_name",
    "eval.num_problems", "eval.n", "eval.ks", "eval.max_new_tokens", "eval.temperature",
)


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked (holds another run, is busy, is a file, is read-only); one line."""


def _as_json(cfg: Config) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, as config.json holds them


def config_changes(saved: Mapping[str, Any], cfg: Config) -> tuple[list[str], list[str]]:
    """(refused, allowed): the dotted keys whose value in `cfg` differs from the saved config.json tree `saved`.

    A key the saved file lacks (written by an older version) counts as its default. train.steps may grow only
    with optimizer.schedule="constant": the cosine schedule's length is train.steps, so another value would have
    given the steps already taken other learning rates.
    """
    old, new, default = _flatten(saved), _flatten(_as_json(cfg)), _flatten(_as_json(Config()))
    refused, allowed = [], []
    for key, value in new.items():
        before = old.get(key, default.get(key))
        if before == value:
            continue
        safe = key in SAFE_ON_RESUME
        if key == "train.steps":
            safe = (cfg.optimizer.schedule == "constant" and isinstance(before, int) and value >= before
                    and old.get("optimizer.schedule", "cosine") == "constant")
        why = ""
        if key == "train.steps" and not safe:
            why = (": fewer steps than the run was set for" if isinstance(before, int) and value < before else
                   ": more steps need optimizer.schedule=constant from the start, the cosine schedule's length is "
                   "train.steps")
        (allowed if safe else refused).append(f"{key} ({before!r} -> {value!r}{why})")
    return refused, allowed


def run_entries(out: Path) -> list[str]:
    """The trainer's entries present in `out` (empty when `out` holds no run)."""
    return [name for name in RUN_ENTRIES if (out / name).exists()] if out.is_dir() else []


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_dir(out: Path) -> None:
    """RunFolderError unless `out` is (or can become) a folder we may write in."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder; choose a folder (it is created if missing)")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise RunFolderError(f"--out {out}: {base} is a file, not a folder; choose another --out")
    try:
        ro = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:  # pragma: no cover - statvfs missing: the write below reports it
        ro = False
    if ro or not os.access(base, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if ro else "is not writable"
        raise RunFolderError(f"--out {out}: {base} {why}; choose another --out")


@contextlib.contextmanager
def owner_lock(out: Path) -> Iterator[None]:
    """Hold `<out>.lock` for the whole run; RunFolderError (one line) when another process holds it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = output_lock(out)
        lock.__enter__()
    except OutputBusyError as err:
        holder = str(err).split("pid ", 1)[-1].split(")", 1)[0] if "pid " in str(err) else "?"
        raise RunFolderError(f"--out {out}: another trainer (pid {holder}) is running in this folder; wait for it to "
                             "finish, or choose another --out") from None
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise RunFolderError(f"--out {out}: cannot write there ({err.strerror}); choose another --out") from None
        raise
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _read_saved_config(out: Path) -> dict[str, Any] | None:
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"--resume: {path} is damaged ({type(err).__name__}); it records how this run was "
                             "trained: restore it, or start over with --overwrite") from None
    if not isinstance(saved, dict):
        raise RunFolderError(f"--resume: {path} is not a JSON object; restore it, or start over with --overwrite")
    return saved


def check_run_folder(cfg: Config, out: Path, *, resume: bool, overwrite: bool) -> bool:
    """`prepare_run_folder` without changing anything (a fast early check; the run repeats it under the lock)."""
    return prepare_run_folder(cfg, out, resume=resume, overwrite=overwrite, dry_run=True)


def prepare_run_folder(cfg: Config, out: Path, *, resume: bool, overwrite: bool, dry_run: bool = False) -> bool:
    """Check `out` for this run (call under `owner_lock(out)`); returns whether config.json must be (re)written.

    Refuses (RunFolderError) a folder holding a run unless resume or overwrite, a resume whose config differs in a
    key outside SAFE_ON_RESUME, and resume together with overwrite. With overwrite, removes the RUN_ENTRIES
    (unless `dry_run`).
    """
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                             "--overwrite replaces it; pass one")
    present = run_entries(out)
    if resume:
        saved = _read_saved_config(out)
        if saved is None:
            return True  # a run from before config.json was written: record this config
        refused, allowed = config_changes(saved, cfg)
        if refused:
            raise RunFolderError(
                f"--resume: the config differs from the run in {out} in {', '.join(refused)}; resume with the same "
                f"settings (see {out / 'config.json'}), or start a new run with another --out (keys --resume may "
                "change: docs/training.md)"
            )
        return bool(allowed)
    if present and not overwrite:
        shown = ", ".join(n + ("/" if (out / n).is_dir() else "") for n in present)
        raise RunFolderError(f"--out {out} already holds a run ({shown}); continue it with --resume, choose another "
                             "--out, or pass --overwrite to replace it")
    if dry_run:
        return True
    for name in present:  # overwrite: the old run's own entries only (other files in the folder are left alone)
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return True
