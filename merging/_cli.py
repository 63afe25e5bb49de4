"""How the merging CLIs fail: one line on stderr, exit status 2 for bad input, a traceback only under --debug.

The same behaviour as `jax_cat.cli` (docs/glossary.md, "CLIs"); a small copy, since `merging` imports nothing from
jax_cat: `<prog>: error: <what is wrong>; <how to fix it>` and exit 2 for bad input (argparse usage errors too,
without the usage block); an unexpected failure is one line ending `(rerun with --debug for the traceback)`, exit 1;
Ctrl-C exit 130.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["CLIError", "ArgumentParser", "run_cli"]

BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, OSError)  # includes the merging errors, full disks


class CLIError(Exception):
    """Bad input found by a CLI itself (an option that does not apply, ...): reported as one line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`<prog>: error: <message> (see --help)`, exit 2) and a --debug flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the Python traceback on errors")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None, *, prog: str) -> int:
    """Run `main(argv)` and turn exceptions into the one-line errors above (re-raised as is under --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, *BAD_INPUT) as exc:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input
        if debug:
            raise
        print(f"{prog}: error: unexpected {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1
