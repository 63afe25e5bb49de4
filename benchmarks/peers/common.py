"""Stdlib-only helpers every side of benchmarks/grpo_peers.py shares (each side runs in its own venv).

A side is one process: it builds its trainer on the shared checkpoint and prompts, runs `warmup + steps` GRPO
steps, times each step (and its generation part), and prints one JSON object on its last stdout line.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_PREFIX = "GRPO_PEERS_RESULT "
# What the parent sets for every side (one core, one thread; see grpo_peers.pinned_env).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass(frozen=True)
class Workload:
    """The shared GRPO workload (the parent writes it as workload.json beside the checkpoint).

    Attributes:
      checkpoint: HF Qwen2 checkpoint folder (written by transformers) with its tokenizer.
      prompts: one rollout batch after another, `batch_size` prompts each, in the order every side consumes them.
      answers: the gold answer of each prompt (reward: completion.strip() == answer).
      batch_size, group_size, max_new_tokens, temperature, learning_rate, weight_decay, clip_norm: as named.
      warmup, steps: unmeasured then measured steps (one rollout batch and one AdamW update each).
    """
    checkpoint: str
    prompts: list
    answers: list
    batch_size: int = 8
    group_size: int = 8
    max_new_tokens: int = 8
    temperature: float = 1.0
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    max_prompt_len: int = 13
    warmup: int = 2
    steps: int = 10
    seed: int = 0

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Workload":
        return cls(**json.loads(Path(path).read_text()))


def exact_rewards(completions, answers) -> list[float]:
    """1.0 where the completion, stripped, IS the gold answer (jax_cat.rewards.exact_match, restated stdlib-only)."""
    return [float(isinstance(c, str) and c.strip() == str(a).strip() != "") for c, a in zip(completions, answers)]


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM of /proc/self/status), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """This process's current resident set (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class StepClock:
    """Per-step wall / CPU seconds and the generation part of each step, filled by a side's hooks."""
    t0: float = field(default_factory=time.perf_counter)
    steps: list = field(default_factory=list)       # (wall_s, cpu_s) per step
    generate: list = field(default_factory=list)    # (wall_s, cpu_s) per rollout
    marks: dict = field(default_factory=dict)
    _step_start: tuple | None = None

    def step_begin(self) -> None:
        self._step_start = (time.perf_counter(), time.process_time())

    def step_end(self) -> None:
        w, c = self._step_start
        self.steps.append((time.perf_counter() - w, time.process_time() - c))
        if len(self.steps) == 1:
            self.marks["first_step_end_s"] = time.perf_counter() - self.t0

    def timed_generate(self, fn, *args, sync=lambda out: out, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        out = sync(fn(*args, **kwargs))
        self.generate.append((time.perf_counter() - w, time.process_time() - c))
        return out


def summarise(clock: StepClock, warmup: int, **extra) -> dict:
    """The side's result: medians of the measured steps (after `warmup`), first step, peak RSS, CPU seconds."""
    measured = clock.steps[warmup:]
    gen = clock.generate[warmup:] if len(clock.generate) >= len(clock.steps) else []
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    row = {
        "steps_measured": len(measured),
        "step_s": med([w for w, _ in measured]),
        "step_cpu_s": med([c for _, c in measured]),
        "generate_s": med([w for w, _ in gen]),
        "update_s": med([s[0] - g[0] for s, g in zip(measured, gen)]) if gen else None,
        "generate_cpu_s": med([c for _, c in gen]),
        "update_cpu_s": med([s[1] - g[1] for s, g in zip(measured, gen)]) if gen else None,
        "first_step_s": clock.steps[0][0] if clock.steps else None,
        "first_generate_s": clock.generate[0][0] if clock.generate else None,
        "start_to_first_step_end_s": clock.marks.get("first_step_end_s"),
        "peak_rss_mib": peak_rss_mib(),
        "process_cpu_s": cpu_s(),
        "process_wall_s": time.perf_counter() - clock.t0,
    }
    row.update(extra)
    return row


def emit(row: dict) -> None:
    """Prints the result line the parent parses."""
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(row), flush=True)
