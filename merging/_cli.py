"""How the merging CLIs fail: the same policy as `jax_cat.cli`, mirrored here because `merging` imports nothing from
jax_cat (tests/merging/test_cli_policy.py runs both on the same errors and checks they agree line for line).

- `CLIError` (raised by a CLI for bad input), `ValueError`, `TypeError` and missing / wrong-kind / unreadable
  files -> one line `<prog>: error: <message>`, exit status 2; merging also counts `FileExistsError` as bad input
  (an existing output folder, an output another process is writing: `OutputBusyError`);
- argparse usage errors (through `ArgumentParser`) -> the same one line (no usage block), exit status 2;
- any other exception (a bug, a full disk, ...) -> one line ending `(rerun with --debug for the traceback)`, exit 1;
- Ctrl-C -> one line, exit 130;
- `--debug` anywhere in argv: the same exit statuses, with the full traceback printed first.

Third-party logging (absl: Vizier's "Python 3.8+ is required in this case." on every study, its Pythia error
dumps) is silenced while a CLI runs, unless `--debug`; `quiet_third_party()` also silences import-time notices.
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

__all__ = ["ArgumentParser", "BAD_INPUT_ERRORS", "CLIError", "one_line", "quiet_third_party", "run_cli", "split_debug"]

BAD_INPUT_STATUS = 2
BUG_STATUS = 1
INTERRUPTED_STATUS = 130
DEBUG_FLAG = "--debug"
QUIET_LOGGERS = ("absl", "vizier", "jax._src.xla_bridge")  # loggers kept to CRITICAL while a CLI runs


class CLIError(Exception):
    """Bad input to a command line; the message names the problem and how to fix it (one line)."""


# Exceptions that mean "the input is wrong" rather than "the program is wrong" (jax_cat.cli's, + FileExistsError).
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
    FileExistsError, MissingExtraError,
)
BAD_INPUT = BAD_INPUT_ERRORS  # the earlier name


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors raise `CLIError` (one line, exit 2) and which lists `--debug`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true", help="on an error, also print the Python traceback")

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message}; see {self.prog} --help")


def one_line(error: BaseException) -> str:
    """The exception's message on one line (newlines folded into '; ')."""
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(error).__name__


def quiet_third_party() -> None:
    """Silence the import-time notices of dependencies (call before they are imported); explicit env settings win."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("pkg_resources", "setuptools", "distutils"):
        warnings.filterwarnings("ignore", message=f".*{name}.*")
        warnings.filterwarnings("ignore", module=name)


@contextlib.contextmanager
def quiet_logging(debug: bool) -> Iterator[None]:
    """Keep `QUIET_LOGGERS` to CRITICAL for the block (unless `debug`), then restore their levels."""
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
