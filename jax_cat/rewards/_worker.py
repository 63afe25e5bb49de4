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


def init_worker(memory_limit_mb: int | None) -> None:
    """Process initialiser: cap the address space so a runaway sympy expansion dies with MemoryError."""
    if memory_limit_mb:
        import resource

        limit = int(memory_limit_mb) * 1024 * 1024
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
