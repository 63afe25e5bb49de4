"""One CLI error policy: `jax_cat.io.cli`, which `merging._cli` and `jax_cat.cli` re-export -- the same exit status and
the same stderr for every kind of failure, with and without --debug."""
from __future__ import annotations

import errno

import pytest

from jax_cat import cli as jcli
from merging import _cli as mcli


def _argparse_error(cli):
    def main(argv):
        p = cli.ArgumentParser(prog="p")
        p.add_argument("--n", type=int, required=True)
        p.parse_args(argv)
    return main


def _raise(exc):
    def main(argv):
        raise exc
    return main


ERRORS = {
    "cli error": lambda cli: _raise(cli.CLIError("--x is bad; give --y")),
    "value": lambda _: _raise(ValueError("--top-p must be in (0, 1], got 2")),
    "type (bad input, not a bug)": lambda _: _raise(TypeError("coefficients must be numbers")),
    "missing file": lambda _: _raise(FileNotFoundError("no file q.jsonl")),
    "not a dir": lambda _: _raise(NotADirectoryError("out is a file")),
    "is a dir": lambda _: _raise(IsADirectoryError("q.jsonl is a folder")),
    "permission": lambda _: _raise(PermissionError(errno.EACCES, "Permission denied", "/ro/out")),
    "multi-line": lambda _: _raise(ValueError("first\n  second\n")),
    "empty message": lambda _: _raise(ValueError()),
    "key error (a bug)": lambda _: _raise(KeyError("weight_map")),
    "runtime (a bug)": lambda _: _raise(RuntimeError("boom")),
    "full disk (a failure)": lambda _: _raise(OSError(errno.ENOSPC, "No space left on device", "/x/.a.json.tmp")),
    "ctrl-c": lambda _: _raise(KeyboardInterrupt()),
    "argparse usage": _argparse_error,
    "argparse type": lambda cli: (lambda argv: _argparse_error(cli)(["--n", "x"])),
    "fine": lambda _: (lambda argv: 0),
    "fine, None": lambda _: (lambda argv: None),
}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_merging_cli_policy_is_the_trainers(case, debug, capsys):
    results = []
    for cli in (jcli, mcli):
        status = cli.run_cli(ERRORS[case](cli), ["--debug"] if debug else [], prog="p")
        err = capsys.readouterr().err
        results.append((status, err.strip().splitlines()[-1:] if err.strip() else [], err.startswith("Traceback")))
    assert results[0] == results[1]
    status, last, traceback_shown = results[1]
    assert traceback_shown == (debug and case not in ("fine", "fine, None"))
    assert status in (0, 1, 2, 130) and len(last) == (status != 0)


def test_one_policy_object_for_both_packages():
    from jax_cat.io import cli as io_cli

    for name in ("run_cli", "CLIError", "ArgumentParser", "BAD_INPUT_ERRORS", "one_line", "split_debug",
                 "quiet_third_party"):
        assert getattr(jcli, name) is getattr(io_cli, name) is getattr(mcli, name), name


@pytest.mark.parametrize("cli", [jcli, mcli], ids=["jax_cat", "merging"])
def test_existing_outputs_are_bad_input_in_every_cli(cli, capsys):
    """FileExistsError (an existing --out, OutputBusyError) is bad input, exit 2, in jax_cat's CLIs as in merging's
    (jax_cat's copy used to call it a bug: exit 1 and "rerun with --debug")."""
    from jax_cat.io.atomic import OutputBusyError

    assert FileExistsError in cli.BAD_INPUT_ERRORS
    assert cli.run_cli(_raise(OutputBusyError("another process (pid 1) is writing o")), [], prog="p") == 2
    assert capsys.readouterr().err == "p: error: another process (pid 1) is writing o\n"


def test_third_party_logging_is_quiet_unless_debug(caplog):
    import logging

    def warn(argv):
        logging.getLogger("absl").warning("Python 3.8+ is required in this case.")

    caplog.set_level(logging.INFO)
    absl = logging.getLogger("absl")
    saved = absl.level
    absl.setLevel(logging.NOTSET)  # an in-process trainer run earlier in the session may have left it CRITICAL
    try:
        assert mcli.run_cli(warn, [], prog="p") == 0
        assert "Python 3.8" not in caplog.text
        assert absl.level == logging.NOTSET  # restored afterwards
        assert mcli.run_cli(warn, ["--debug"], prog="p") == 0
        assert "Python 3.8" in caplog.text
    finally:
        absl.setLevel(saved)
