"""Host memory: give the memory XLA's compiler freed back to the OS before the first run of a new program.

`sample_tokens` runs its jitted call inside `_trimming_compiles()`, and the trainer's step loop
(`jax_cat.training.runtime.run_steps`) runs inside `trimming_compiles()`; on glibc every backend compile is then
followed by `malloc_trim(0)`, so the compiler's garbage does not count in the sampler's or the trainer's peak RSS.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import jax


_TRIM = {"active": False, "registered": False}


def _after_backend_compile(event: str, duration: float, **_: Any) -> None:
    """After XLA compiled a program for `sample_tokens`, hand the memory the compiler freed back to the OS.

    glibc keeps freed heap pages mapped: at a 768-token prompt (B = 8) compiling the sampler left ~200 MiB of freed
    memory in the process, on top of which the first run allocated its cache and activations, so the compiler's
    garbage counted in the sampler's peak RSS (docs/benchmarks.md, "Sampling"). `malloc_trim(0)` takes ~ms.
    """
    if _TRIM["active"] and event == "/jax/core/compile/backend_compile_duration":
        _malloc_trim()


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@contextlib.contextmanager
def _trimming_compiles():
    """While active, every backend compile is followed by `_malloc_trim` (see above)."""
    if not _TRIM["registered"]:
        jax.monitoring.register_event_duration_secs_listener(_after_backend_compile)
        _TRIM["registered"] = True
    previous, _TRIM["active"] = _TRIM["active"], sys.platform.startswith("linux")
    try:
        yield
    finally:
        _TRIM["active"] = previous


def trimming_compiles():
    """Context manager: while active, every XLA backend compile is followed by `malloc_trim(0)` (glibc; a no-op
    elsewhere), so memory the compiler freed is returned before the new program's first run allocates on top of it.
    The trainer's step loop runs inside it: GRPO on a 2.96M Qwen2 kept ~300 MiB of the step compiler's freed heap
    mapped, and the first update allocated above it (docs/benchmarks.md, "GRPO against TRL and tunix")."""
    return _trimming_compiles()
