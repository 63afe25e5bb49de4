"""The parent side of the verifier's worker pool: a fixed set of ``python -m jax_cat.rewards._worker``
processes, one answer in flight per worker, each with its own deadline (see ``_worker`` for why and how)."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from typing import Any

from jax_cat.rewards._protocol import read_frame, write_frame

WORKER_MODULE = "jax_cat.rewards._worker"
_STDERR_TAIL_BYTES = 2000


class WorkerStartError(RuntimeError):
    """A verifier worker process could not be started (the message says what happened and the fix)."""


def function_spec(fn: Any) -> str:
    """``"module:qualname"`` for a module-level function, the form a fresh worker process can import."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"MathVerifier: pair_fn {fn!r} must be a module-level function (workers import it by name); "
            "lambdas, nested functions and bound objects cannot be imported"
        )
    if module == "__main__":
        raise ValueError(
            f"MathVerifier: pair_fn {qualname!r} is defined in the __main__ script, which workers never import; "
            "move it to a module on sys.path"
        )
    return f"{module}:{qualname}"


def _child_env() -> dict[str, str]:
    """The parent's environment with its sys.path as PYTHONPATH, so the worker finds this package."""
    env = dict(os.environ)
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Worker:
    """One worker process: started, then ``ready``, ``busy`` (one request) or ``dead``."""

    def __init__(self, spec: str | None, memory_limit_mb: int | None, startup_timeout_s: float) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.deadline = self.started + startup_timeout_s
        self.state = "starting"
        self.key: Any = None
        self.startup_timeout_s = startup_timeout_s
        executable = sys.executable
        try:
            if not executable:
                raise FileNotFoundError("sys.executable is empty (embedded interpreter?)")
            self.proc = subprocess.Popen(
                [executable, "-m", WORKER_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                env=_child_env(),
                close_fds=True,
            )
        except OSError as error:
            self.stderr.close()
            raise WorkerStartError(
                f"MathVerifier: could not launch a worker process ({executable!r} -m {WORKER_MODULE}): "
                f"{type(error).__name__}: {error}. Fix: check that the Python executable exists and that the "
                "process/file-descriptor limits (ulimit -u, ulimit -n) allow more processes, or pass "
                "use_math_verify=False to skip symbolic checks"
            ) from error
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd, self.out_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        init = (spec, memory_limit_mb, [os.path.abspath(p or os.curdir) for p in sys.path])
        if not self._send(init):
            self.state = "dead"

    @property
    def pid(self) -> int:
        """The worker process's id, to name it in errors and to kill it."""
        return self.proc.pid

    def _send(self, obj: object) -> bool:
        try:
            write_frame(self.in_fd, obj)
            return True
        except (BrokenPipeError, OSError):
            return False

    def submit(self, key: tuple[str, str], inner_timeout_s: int, timeout_s: float) -> bool:
        """Send one (pred, gold) to this idle worker; False when it is already dead."""
        self.key, self.state = key, "busy"
        self.deadline = time.monotonic() + timeout_s
        return self._send((key[0], key[1], inner_timeout_s))

    def receive(self) -> object | None:
        """The worker's next message (its stdout is readable); None when it died."""
        try:
            return read_frame(self.out_fd)
        except (OSError, ValueError, EOFError, Exception):  # noqa: BLE001 - a corrupt stream is a dead worker
            return None

    def stderr_tail(self) -> str:
        """The last bytes the worker wrote to stderr ("" if unreadable): why it died, for the error message."""
        try:
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - _STDERR_TAIL_BYTES))
            return self.stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def start_failure(self, reason: str) -> WorkerStartError:
        """The error for a worker that did not come up: what happened, its stderr, and the fix."""
        tail = self.stderr_tail()
        if "No module named" in tail or "ModuleNotFoundError" in tail:
            fix = (
                "install the missing package into this interpreter (pip install math-verify for the default "
                "checker), make pair_fn's module importable from sys.path, or pass use_math_verify=False"
            )
        elif reason.startswith("did not report"):
            fix = "the machine may be overloaded: raise startup_timeout_s or lower max_workers"
        else:
            fix = f"run `{sys.executable} -m {WORKER_MODULE}` by hand to see the failure, or pass use_math_verify=False"
        detail = f"; its stderr ends with:\n{tail}\n" if tail else " (no output on stderr); "
        return WorkerStartError(
            f"MathVerifier: worker process `{sys.executable} -m {WORKER_MODULE}` (pid {self.pid}) {reason}"
            f"{detail}Fix: {fix}"
        )

    def kill(self) -> None:
        """Kill the process (if alive), reap it and release its pipes."""
        self.state = "dead"
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # unkillable (D state): leave it to the OS, do not hang the caller
            pass
        self.stderr.close()

    def close(self) -> None:
        """Ask an idle worker to leave (EOF on its input), then make sure it did."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class WorkerPool:
    """``size`` workers started at once; ``wait_ready`` blocks until all report ready or raises why not."""

    def __init__(self, size: int, spec: str | None, memory_limit_mb: int | None, startup_timeout_s: float) -> None:
        self.spec, self.memory_limit_mb, self.startup_timeout_s = spec, memory_limit_mb, startup_timeout_s
        self.workers: list[Worker] = []
        try:
            for _ in range(size):
                self.workers.append(self.spawn())
            self.wait_ready(self.workers)
        except BaseException:
            self.close()
            raise

    def spawn(self) -> Worker:
        """Start one worker with the pool's settings (not yet ready: see `wait_ready`), to fill or refill the pool."""
        return Worker(self.spec, self.memory_limit_mb, self.startup_timeout_s)

    def wait_ready(self, workers: list[Worker]) -> None:
        """Block until every starting worker in ``workers`` is ready; WorkerStartError on the first that is not."""
        starting = [w for w in workers if w.state in ("starting", "dead")]
        with selectors.DefaultSelector() as selector:
            for w in starting:
                if w.state == "dead":
                    self.raise_dead_at_start(w)
                selector.register(w.out_fd, selectors.EVENT_READ, w)
            while starting:
                timeout = max(0.0, min(w.deadline for w in starting) - time.monotonic())
                for event, _ in selector.select(timeout):
                    self.on_start_message(event.data)
                    starting.remove(event.data)
                    selector.unregister(event.data.out_fd)
                now = time.monotonic()
                for w in starting:
                    if w.deadline <= now:
                        error = w.start_failure(f"did not report ready within {w.startup_timeout_s:g}s")
                        w.kill()
                        raise error

    def on_start_message(self, w: Worker) -> None:
        """Handle the first message of a starting worker: ready, or raise what went wrong."""
        message = w.receive()
        if isinstance(message, tuple) and message[:1] == ("ready",):
            w.state = "ready"
            return
        self.raise_dead_at_start(w)

    @staticmethod
    def raise_dead_at_start(w: Worker) -> None:
        """Raise the WorkerStartError of a worker that died (or closed its pipe) before reporting ready."""
        try:
            code = w.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - w.started
        reason = (
            f"exited with code {code} during start-up ({elapsed:.1f}s after launch)"
            if code is not None
            else "closed its pipe during start-up without reporting ready"
        )
        error = w.start_failure(reason)
        w.kill()
        raise error

    def close(self) -> None:
        """Stop every worker (a busy one is killed, an idle one asked to exit) so no process outlives the pool."""
        for w in self.workers:
            if w.state == "busy":
                w.kill()
            elif w.state != "dead":
                w.close()
        self.workers = []
