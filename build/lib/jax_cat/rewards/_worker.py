"""Code that runs inside the verifier's worker processes (imports math-verify/sympy, never JAX).

Kept apart from ``verify.py`` so a worker's import is cheap and free of JAX, and so the forkserver can
preload exactly this module (sympy + math-verify warm before each fork).
"""
from __future__ import annotations

import logging
import os

from math_verify import parse, verify

# math-verify logs a warning per timeout; in a worker that is noise on the parent's stderr.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _virtual_memory_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def init_worker(memory_limit_mb: int | None) -> None:
    """Process initialiser: let the address space grow by at most ``memory_limit_mb`` beyond what the worker
    already maps (its imports, including a re-imported ``__main__`` that may pull in JAX), so a runaway sympy
    expansion dies with MemoryError (-> reward 0) instead of swapping the machine."""
    if memory_limit_mb:
        import resource

        current = _virtual_memory_bytes()
        if not current:  # no /proc (not Linux): leave the limit alone rather than guess a baseline
            return
        limit = current + int(memory_limit_mb) * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def ping() -> int:
    """A no-op used to start and warm the workers before per-answer deadlines begin."""
    return os.getpid()


def math_verify_pair(pred: str, gold: str, inner_timeout_s: int) -> bool:
    """math-verify's verdict on one (prediction, gold) pair of extracted answers; any failure is False.

    ``inner_timeout_s`` is math-verify's own SIGALRM budget for each parse/compare step (this runs in the
    worker's main thread, where signals work); the parent's per-answer deadline and process kill are the
    backstop for hangs that a signal cannot interrupt (long C calls).
    """
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=inner_timeout_s)
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=inner_timeout_s)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout_s))
    except BaseException:  # noqa: BLE001 - a verifier must never raise: MemoryError, RecursionError, Timeout...
        return False
