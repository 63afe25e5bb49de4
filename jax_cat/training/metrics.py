"""Seeing a run: `<out>/metrics.jsonl` (one line per logged step, always), the backends `logging.report_to` names
(TensorBoard, Weights & Biases, your own writer: `jax_cat.training.writers`), and a tqdm progress bar with loss,
reward, batch pass@1 and tokens/s.

Steps hand their metrics over as device scalars; `MetricsLogger.flush()` fetches the window's metrics in ONE
transfer every `log_every` steps (the loop's only host sync besides rollouts), averages them and writes one line.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jax_cat.atomic import atomic_write_text
from jax_cat.training.writers import MetricsWriter, WriterContext, make_writers


def trim_jsonl(path: Path, stage: str, last_step: int) -> None:
    """Drop lines of `stage` after `last_step` (a resumed run rewrites the steps it repeats)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if row.get("stage") == stage and row.get("step", 0) > last_step:
            continue
        kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def logger_settings(cfg: Any) -> dict[str, Any]:
    """`MetricsLogger` keywords from a run's Config: its logging section and its settings (W&B's config panel)."""
    log = cfg.logging
    return dict(progress=log.progress, report_to=log.backends(), run_config=cfg.to_dict(), project=log.project,
                run_name=log.run_name)


class MetricsLogger:
    """Collects per-step device metrics and host stats; every flush writes their window mean to metrics.jsonl, to
    each writer (`report_to` names them; `writers` adds objects with `write`/`close`) and to the bar.

    `tensorboard` is the older switch (True adds "tensorboard" when `report_to` is None, the default). Nothing is
    written or shown when `enabled` is false (every process but the first in a multi-host run).

    Without a progress bar (stderr not a terminal, or logging.progress false) each flush also prints one line to
    stderr, and `add` prints a step line when nothing was printed for `heartbeat_s` seconds, so a job log shows
    the run is alive.
    """

    BAR_KEYS = (("loss", "loss"), ("reward", "reward"), ("pass@1", "pass@1"), ("tokens_per_s", "tok/s"))

    def __init__(self, out_dir: str | os.PathLike | None, *, stage: str, total_steps: int, start_step: int = 0,
                 progress: bool | None = None, tensorboard: bool = True, enabled: bool = True,
                 heartbeat_s: float = 60.0, log_every: int = 1, report_to: Sequence[str] | None = None,
                 writers: Sequence[MetricsWriter] = (), run_config: Mapping[str, Any] | None = None,
                 project: str | None = None, run_name: str | None = None) -> None:
        self.stage = stage
        self.total_steps = total_steps
        self.heartbeat_s, self.log_every = heartbeat_s, log_every
        self._start = self._last_line = time.perf_counter()
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir is not None and enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            trim_jsonl(self.path, stage, start_step)
        self.history: list[dict[str, Any]] = []
        self._pending: list[tuple[int, Any, dict[str, float]]] = []
        self._tick = time.perf_counter()
        if report_to is None:
            report_to = ["tensorboard"] if tensorboard else []
        self.writers: list[MetricsWriter] = []
        if enabled:
            context = WriterContext(out_dir=Path(out_dir) if out_dir is not None else None, stage=stage,
                                    run_config=run_config, project=project, run_name=run_name)
            self.writers = [*make_writers(report_to, context), *writers]
        if progress is None:
            progress = sys.stderr.isatty()
        self._bar = None
        if progress and enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=stage, unit="step", dynamic_ncols=True)
        elif enabled:
            where = f"from step {start_step} " if start_step else ""
            self._print(f"{stage}: starting {where}of {total_steps} steps (the first step compiles)")

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self._last_line = time.perf_counter()

    def _elapsed(self) -> str:
        return f"{time.perf_counter() - self._start:.0f} s"

    def add(self, step: int, device_metrics: dict[str, Any], host_stats: dict[str, float] | None = None) -> None:
        """Queue one step's metrics (no host transfer)."""
        self._pending.append((int(step), device_metrics, dict(host_stats or {})))
        flushes_now = step % self.log_every == 0 or step >= self.total_steps  # a metrics line follows anyway
        if (self._bar is None and self.enabled and not flushes_now
                and time.perf_counter() - self._last_line >= self.heartbeat_s):
            self._print(f"{self.stage}: step {int(step)}/{self.total_steps} done, {self._elapsed()}")

    def flush(self) -> dict[str, Any] | None:
        """Fetch the queued steps, write their mean; returns the row (with 'first_bad_step' when a step was not ok)."""
        if not self._pending:
            return None
        fetched = jax.device_get([m for _, m, _ in self._pending])
        elapsed = max(time.perf_counter() - self._tick, 1e-9)
        self._tick = time.perf_counter()
        steps = [s for s, _, _ in self._pending]
        rows = [{**{k: float(np.asarray(v)) for k, v in m.items()}, **h} for m, (_, _, h) in zip(fetched, self._pending)]
        self._pending = []
        keys = dict.fromkeys(k for r in rows for k in r)
        row: dict[str, Any] = {"stage": self.stage, "step": steps[-1]}
        for k in keys:
            values = [r[k] for r in rows if k in r]
            row[k] = float(np.mean(values)) if k not in ("tokens", "sampled_tokens") else float(np.sum(values))
        tokens = row.get("tokens", 0.0) + row.get("sampled_tokens", 0.0)
        row["tokens_per_s"] = tokens / elapsed
        row["time"] = time.time()
        bad = [s for s, r in zip(steps, rows) if r.get("ok", 1.0) < 1.0]
        if bad:
            row["first_bad_step"] = bad[0]
            row["bad_loss"] = next(r["loss"] for s, r in zip(steps, rows) if s == bad[0])
        self.history.append(row)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in row.items()}) + "\n")
        if self.writers:
            values = {k: v for k, v in row.items() if k not in ("stage", "step", "time")}
            for writer in self.writers:
                writer.write(self.stage, steps[-1], values)
        if self._bar is not None:
            self._bar.n = steps[-1]
            self._bar.set_postfix({label: f"{row[k]:.4g}" for k, label in self.BAR_KEYS if k in row}, refresh=True)
        elif self.enabled:
            shown = ", ".join(f"{label} {row[k]:.4g}" for k, label in self.BAR_KEYS if k in row)
            self._print(f"{self.stage}: step {steps[-1]}/{self.total_steps}: {shown}, {self._elapsed()}")
        return row

    def write_line(self, text: str) -> None:
        """A message that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        """Close the bar and every writer (a W&B run is finished; a resumed run continues it)."""
        if self._bar is not None:
            self._bar.close()
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close()
