"""The command-line error policy of every jax_cat and merging CLI: bad input is ONE line on stderr, exit status 2.

Each CLI runs its `main(argv)` through `run_cli`:

- `CLIError` (raised by a CLI for bad input), `ValueError`, `TypeError`, missing / wrong-kind / unreadable files and
  existing outputs (`FileExistsError`: an output folder that exists, `OutputBusyError`: one another process is
  writing) -> one line `<prog>: error: <message>`, exit status 2;
- argparse usage errors (through `ArgumentParser`) -> the same one line (no usage block), exit status 2;
- a missing optional extra (`MissingExtraError`) -> the one line naming the pip command, exit status 2;
- any other exception (a bug, a full disk, ...) -> one line ending `(rerun with --debug for the traceback)`, exit 1;
- Ctrl-C -> one line `<prog>: error: interrupted`, exit 130;
- `--debug` anywhere in argv (before a bare `--`): the same exit statuses and the same last line, with the full
  traceback printed first (never re-raised).

While `main` runs, the libraries' chatty loggers (`QUIET_LOGGERS`: absl, Orbax, Vizier, ...) are kept at CRITICAL
unless `--debug`, and put back afterwards. `quiet_third_party(debug)` (call it before heavy imports) also silences
import-time notices (transformers' "PyTorch was not found", setuptools deprecations) and, unless `debug`, keeps
those loggers quiet for the rest of the process.

Standard library only (plus `jax_cat.extras`, itself standard library only).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from jax_cat.extras import MissingExtraError

__all__ = [
    "ArgumentParser", "BAD_INPUT_ERRORS", "CLIError", "QUIET_LOGGERS", "one_line", "quiet_logging", "quiet_third_party",
    "run_cli", "split_debug",
]

BAD_INPUT_STATUS = 2
BUG_STATUS = 1
INTERRUPTED_STATUS = 130
DEBUG_FLAG = "--debug"


class CLIError(Exception):
    """Bad input to a command line; the message names the problem and how to fix it (one line)."""


# Exceptions that mean "the input is wrong" rather than "the program is wrong". Library functions raise these
# with messages that name the offending argument. FileExistsError: an existing output, or one being written.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
    FileExistsError, MissingExtraError,
)
BAD_INPUT = BAD_INPUT_ERRORS  # the earlier name (merging._cli)


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors raise `CLIError` (one line, exit 2) and which lists `--debug`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="on an error, also print the Python traceback")

    def error(self, message: str) -> NoReturn:
        """Raise `CLIError` instead of exiting, so a bad flag takes the one CLI error policy (one line, exit 2)."""
        raise CLIError(f"{message}; see {self.prog} --help")


def one_line(error: BaseException) -> str:
    """The exception's message on one line (newlines folded into '; ')."""
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(error).__name__


QUIET_LOGGERS = ("absl", "orbax", "tensorstore", "asyncio", "datasets", "huggingface_hub", "grain", "fsspec", "filelock",
                 "vizier", "jax._src.xla_bridge")
# asyncio: Orbax's writer tasks log "exception was never retrieved" (a full disk) at exit, after our one line;
# absl also carries Vizier's "Python 3.8+ is required in this case." on every study and its Pythia error dumps


def quiet_third_party(debug: bool = False) -> None:
    """Silence the import-time notices of dependencies (call before they are imported); explicit env settings win.

    Unless `debug`, also the libraries' own logging (absl / Orbax: a full disk is otherwise hundreds of lines of
    checkpoint-library log before the one line that matters) and the dataset download/build progress bars.
    """
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found. Models won't ..."
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("pkg_resources", "setuptools", "distutils"):
        warnings.filterwarnings("ignore", message=f".*{name}.*")
        warnings.filterwarnings("ignore", module=name)
    if debug:
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "_jax_cat_quiet", False):
        sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)


def _without_closed_loop_noise(hook):
    """`hook` (sys.unraisablehook), minus the "Event loop is closed" errors of an aborted checkpoint write (a full
    disk): TensorStore's I/O threads still deliver results to the event loop Orbax already closed, and report each
    failure as an unraisable exception, one traceback apiece, before the CLI's own line."""
    def quiet(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(unraisable)

    quiet._jax_cat_quiet = True
    return quiet


@contextlib.contextmanager
def quiet_logging(debug: bool) -> Iterator[None]:
    """Keep `QUIET_LOGGERS` at CRITICAL for the block (unless `debug`), then restore their levels."""
    if debug:
        yield
        return
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv without `--debug`, whether it was there); arguments after a bare `--` are left alone."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    return [a for i, a in enumerate(argv) if not (i < end and a == DEBUG_FLAG)], debug


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *, prog: str) -> int:
    """Run `main(argv)` and turn exceptions into one stderr line and an exit status (see the module doc)."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    if debug:
        os.environ.setdefault("JAX_CAT_DEBUG", "1")
    try:
        with quiet_logging(debug):
            status = main(argv)
    except KeyboardInterrupt:
        return _report(prog, "interrupted", INTERRUPTED_STATUS, debug)
    except BAD_INPUT_ERRORS as e:
        return _report(prog, one_line(e), BAD_INPUT_STATUS, debug)
    except Exception as e:  # noqa: BLE001 - a bug: still one line unless --debug
        return _report(prog, f"{type(e).__name__}: {one_line(e)} (rerun with {DEBUG_FLAG} for the traceback)",
                       BUG_STATUS, debug)
    return 0 if status is None else int(status)


def _report(prog: str, message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"{prog}: error: {message}", file=sys.stderr)
    if not debug:  # the one line is the last word: no library logging at interpreter exit (e.g. asyncio's
        atexit.register(logging.disable, logging.CRITICAL)  # unretrieved futures of an aborted checkpoint write)
    return status
