"""The verifier's worker process: ``python -m jax_cat.rewards._worker``, one answer at a time over a pipe.

Why a module of its own, started with ``subprocess`` rather than ``multiprocessing``: a multiprocessing
child ("spawn" or "forkserver") re-imports the caller's ``__main__``, so a script calling
``compute_rewards`` at top level without an ``if __name__ == "__main__":`` guard re-runs itself in every
worker and the pool never starts. A fresh interpreter running this module imports only this package's
rewards code, sympy and math-verify (never JAX, never the caller's script), whatever the caller wrote.

Protocol (both directions): frames of a 4-byte big-endian length then a pickle. The parent sends one init
frame ``(pair_fn_spec, memory_limit_mb, sys_path)``; the worker imports, caps its memory and answers
``("ready", pid)`` (or exits non-zero with the traceback on stderr). Then, per request ``(pred, gold,
inner_timeout_s)``, it answers ``("ok", bool)`` or ``("error", "Type: message")``. EOF on its input (the
parent closed the pipe or died) ends it; so does a parent that goes away while it computes.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from jax_cat.rewards._protocol import read_frame, write_frame

def _virtual_memory_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def init_worker(memory_limit_mb: int | None) -> None:
    """Let the address space grow by at most ``memory_limit_mb`` beyond what the worker already maps (its
    imports), so a runaway sympy expansion dies with MemoryError (-> reward 0) instead of swapping the machine."""
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
    """This worker's pid (kept for callers of the earlier pool API)."""
    return os.getpid()


def math_verify_pair(pred: str, gold: str, inner_timeout_s: int) -> bool:
    """math-verify's verdict on one (prediction, gold) pair of extracted answers; any failure is False.

    ``inner_timeout_s`` is math-verify's own SIGALRM budget for each parse/compare step (this runs in the
    worker's main thread, where signals work); the parent's per-answer deadline and process kill are the
    backstop for hangs that a signal cannot interrupt (long C calls).
    """
    from math_verify import parse, verify

    try:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=inner_timeout_s)
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=inner_timeout_s)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout_s))
    except BaseException:  # noqa: BLE001 - a verifier must never raise: MemoryError, RecursionError, Timeout...
        return False


def resolve(spec: str) -> Callable[..., object]:
    """The function named by ``"package.module:qualname"``."""
    module_name, _, qualname = spec.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj  # type: ignore[return-value]


def _exit_when_orphaned(parent_pid: int) -> None:
    """A worker stuck in a long C call never reads the EOF of a dead parent: leave when re-parented."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def main() -> int:
    """Serve requests from stdin until EOF (see the module doc for the protocol)."""
    # Private copies of the protocol pipes; stray prints/input() in checked code must not touch them.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()

    init = read_frame(in_fd)
    if init is None:
        return 0
    spec, memory_limit_mb, sys_path = init  # type: ignore[misc]
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # one warning per timeout is noise here
    if spec is None:
        fn: Callable[..., object] = math_verify_pair
        fn("\\sqrt{4}", "2", 5)  # warm math-verify's lazy imports/parsers before any answer is timed
    else:
        fn = resolve(spec)
    init_worker(memory_limit_mb)
    write_frame(out_fd, ("ready", os.getpid()))
    while True:
        request = read_frame(in_fd)
        if request is None:
            return 0
        try:
            reply: tuple[str, object] = ("ok", bool(fn(*request)))  # type: ignore[misc]
        except BaseException as error:  # noqa: BLE001 - a failing check is a wrong answer, not a dead worker
            reply = ("error", f"{type(error).__name__}: {error}")
        write_frame(out_fd, reply)


if __name__ == "__main__":
    sys.exit(main())
