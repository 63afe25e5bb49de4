"""Ctrl-C during the step loop stops the run at the next step boundary, never inside library code.

Python raises `KeyboardInterrupt` wherever the main thread happens to be. In a training loop that is often inside a
garbage-collector callback or a checkpoint library's bookkeeping, where the exception is swallowed ("Exception
ignored in ...") and the run goes on as if nothing happened. Inside `deferred_interrupt()` the first SIGINT only
records the request; `raise_if_interrupted()` turns it into a `KeyboardInterrupt` at a point the caller chose (after
a step, with every started checkpoint intact). A second SIGINT raises at once, as Python normally does.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["deferred_interrupt", "raise_if_interrupted"]

_requested = threading.Event()


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Within the block, the first Ctrl-C is deferred to the next `raise_if_interrupted()` (main thread only; a
    custom SIGINT handler someone else installed is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        if _requested.is_set():  # the second Ctrl-C: the user means it
            raise KeyboardInterrupt
        _requested.set()

    _requested.clear()
    signal.signal(signal.SIGINT, on_sigint)
    # Only a flag is set: let interrupted system calls restart (SA_RESTART) instead of failing with EINTR inside
    # C++ libraries (XLA's thread pools, TensorStore's I/O), some of which do not retry and hang or fail.
    signal.siginterrupt(signal.SIGINT, False)
    try:
        yield
        raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _requested.clear()


def raise_if_interrupted() -> None:
    """Raise `KeyboardInterrupt` if a deferred Ctrl-C is pending (a no-op outside `deferred_interrupt`)."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt
