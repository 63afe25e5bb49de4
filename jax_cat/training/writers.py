"""Where a run's metrics go besides `<out>/metrics.jsonl` (always written) and the progress bar, named as TRL's
`report_to` names them: `logging.report_to = ["jsonl", "tensorboard", "wandb"]`.

- "jsonl": `<out>/metrics.jsonl`, always on (naming it is allowed; "none" alone means nothing else).
- "tensorboard": event files under `<out>/tb/<stage>/` (tensorboardX, the 'tensorboard' extra; a note when absent).
- "wandb": Weights & Biases (the 'wandb' extra; one line naming it when absent). Offline when there is no API key
  or api.wandb.ai cannot be reached (files under `<out>/wandb/`, `wandb sync` uploads them later); WANDB_MODE,
  when set, decides instead. Each stage plots against its own x-axis `<stage>/step`, so a warm-up's steps and the
  main stage's never collide, and a resumed run continues the same W&B run (its id is kept in `<out>/wandb/`).
- your own: `register_writer("name", factory)` in code, or `"package.module:factory"` in a recipe; a factory takes
  a `WriterContext` and returns a `MetricsWriter` (any object with `write` and `close`).

Only process 0 writes (the trainer makes no writer on the other hosts). Imports nothing heavy: the backends are
imported when a writer is made.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import netrc
import os
import socket
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from jax_cat.atomic import atomic_write_text
from jax_cat.extras import optional, require

__all__ = ["BUILTIN_BACKENDS", "MetricsWriter", "TensorBoardWriter", "WandbWriter", "WriterContext", "check_report_to",
           "make_writers", "register_writer"]


@runtime_checkable
class MetricsWriter(Protocol):
    """A destination for logged rows: `write` gets each flushed row (the window's means), `close` ends the run."""

    def write(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        """Record one flushed row (the window's means) of `stage` at `step`."""

    def close(self) -> None:
        """End the run for this backend (flush and release its files or connection)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriterContext:
    """What a writer factory gets: the run folder (None = nothing is written to disk), the stage, the run's settings
    (config.json's tree, for the backend's config panel), and `logging.project` / `logging.run_name`."""

    out_dir: Path | None
    stage: str
    run_config: Mapping[str, Any] | None = None
    project: str | None = None
    run_name: str | None = None


WriterFactory = Callable[[WriterContext], MetricsWriter]
_REGISTRY: dict[str, WriterFactory] = {}
BUILTIN_BACKENDS = ("jsonl", "tensorboard", "wandb", "none")


def register_writer(name: str, factory: WriterFactory) -> None:
    """Make `logging.report_to` accept `name`: `factory(WriterContext)` builds the writer for each stage."""
    if name in BUILTIN_BACKENDS or ":" in name or not name.strip():
        raise ValueError(f"register_writer: {name!r} is a built-in backend or not a plain name; pick another name")
    _REGISTRY[name] = factory


def check_report_to(names: Sequence[str], key: str = "logging.report_to") -> None:
    """ValueError (one line starting with `key`, naming the choices) for a name `make_writers` would not know;
    imports nothing."""
    where = f"{key}: " if key else ""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}expected backend names, got {name!r}")
        if name in BUILTIN_BACKENDS or name in _REGISTRY:
            continue
        module, sep, attr = name.partition(":")
        if sep and module and attr:
            continue
        choices = (*BUILTIN_BACKENDS, *_REGISTRY)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where}unknown backend {name!r}; {hint}choose from {', '.join(map(repr, choices))} or "
                         f"give 'package.module:factory'")
    if "none" in names and len(names) > 1:
        raise ValueError(f"{where}'none' means metrics.jsonl only; it cannot be combined with {list(names)}")


def _loggable(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardWriter:
    """Scalars `<stage>/<metric>` at the row's step, in `<out>/tb/<stage>/` (non-finite values are skipped)."""

    def __init__(self, ctx: WriterContext, summary_writer: Any) -> None:
        self._writer = summary_writer

    @classmethod
    def create(cls, ctx: WriterContext) -> "TensorBoardWriter | None":
        """The writer, or None (and one note naming the 'tensorboard' extra) when tensorboardX is absent."""
        if ctx.out_dir is None:
            return None
        tensorboard_x = optional("tensorboardX", feature="TensorBoard logging")
        if tensorboard_x is None:
            return None
        return cls(ctx, tensorboard_x.SummaryWriter(str(Path(ctx.out_dir) / "tb" / ctx.stage)))

    def write(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        """Add the row's finite scalars as `<stage>/<name>` at `step`, flushed so a live TensorBoard sees them."""
        for k, v in _loggable(metrics).items():
            if math.isfinite(v):
                self._writer.add_scalar(f"{stage}/{k}", v, step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()


def _has_wandb_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (no data is sent)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode() -> tuple[str | None, str]:
    """(mode for wandb.init, why): WANDB_MODE's when set (None: wandb reads it), else "offline" without an API key
    or without a connection to the W&B server, else "online"."""
    if os.environ.get("WANDB_MODE"):
        return None, f"WANDB_MODE={os.environ['WANDB_MODE']}"
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    if not _has_wandb_key(host):
        return "offline", "no W&B API key (wandb login, or WANDB_API_KEY)"
    if not _reachable(host, url.port or (80 if url.scheme == "http" else 443)):
        return "offline", f"{host} cannot be reached"
    return "online", "online"


class WandbWriter:
    """One W&B run per run folder; each stage logs `<stage>/<metric>` against its own x-axis `<stage>/step`."""

    RUN_ID_FILE = "jax_cat_run_id"

    def __init__(self, ctx: WriterContext) -> None:
        wandb = require("wandb", feature="logging.report_to 'wandb'")
        out = Path(ctx.out_dir) if ctx.out_dir is not None else None
        run_id = None
        if out is not None:  # the same W&B run across stages and resumes of this run folder
            folder = out / "wandb"
            folder.mkdir(parents=True, exist_ok=True)
            id_file = folder / self.RUN_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else ""
            if not run_id:
                run_id = uuid.uuid4().hex[:12]
                atomic_write_text(id_file, run_id + "\n")
        mode, why = wandb_mode()
        kwargs: dict[str, Any] = dict(
            project=ctx.project or os.environ.get("WANDB_PROJECT") or "jax-cat",
            name=ctx.run_name or (out.name if out is not None else None),
            dir=str(out) if out is not None else None, id=run_id, resume="allow" if run_id else None,
            config=dict(ctx.run_config or {}),
        )
        if mode is not None:
            kwargs["mode"] = mode
        if mode == "offline":
            where = f" to {out / 'wandb'}; `wandb sync` uploads it later" if out is not None else ""
            print(f"note: W&B logs offline ({why}){where}", file=sys.stderr)
        self.run = wandb.init(**kwargs)
        self._stages: set[str] = set()

    def write(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        """Log the row as `<stage>/<name>` against the stage's own step axis (a warm-up's steps and the main
        stage's each start at 1)."""
        if stage not in self._stages:  # each stage its own x-axis: a warm-up's step 1 and the main stage's differ
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        self.run.log({**{f"{stage}/{k}": v for k, v in _loggable(metrics).items()}, f"{stage}/step": int(step)})

    def close(self) -> None:
        """Finish the W&B run (uploads or keeps the offline files)."""
        self.run.finish()


def _factory(name: str) -> WriterFactory:
    if name in _REGISTRY:
        return _REGISTRY[name]
    module, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"logging.report_to: cannot load the writer factory {name!r}: {err}") from None
    if not callable(factory):
        raise ValueError(f"logging.report_to: {name!r} is not callable (expected a factory taking a WriterContext)")
    return factory


def make_writers(names: Sequence[str], ctx: WriterContext) -> list[MetricsWriter]:
    """The writers for `names` (jsonl and none are the logger's own: they make none here)."""
    check_report_to(names)
    writers: list[MetricsWriter] = []
    for name in dict.fromkeys(names):
        if name in ("jsonl", "none"):
            continue
        if name == "tensorboard":
            writer = TensorBoardWriter.create(ctx)
        elif name == "wandb":
            writer = WandbWriter(ctx)
        else:
            writer = _factory(name)(ctx)
            if not isinstance(writer, MetricsWriter):
                raise ValueError(f"logging.report_to: {name!r} made a {type(writer).__name__}, which lacks "
                                 f"write(stage, step, metrics) / close()")
        if writer is not None:
            writers.append(writer)
    return writers
