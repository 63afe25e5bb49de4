"""Every jax_cat CLI answers bad input with ONE stderr line naming the problem, exit status 2, no traceback.

The table runs each CLI's `main(argv)` in-process (fast); two real subprocesses check what a shell user sees.
The merging CLIs' rows live in tests/merging (they share this behaviour through their own copy of the helper).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jax_cat.__main__ as smoke
import jax_cat.evaluate as evaluate_cli
import jax_cat.train as train_cli
from jax_cat.cli import ArgumentParser, CLIError, run_cli, split_debug

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "python -m jax_cat"
EVAL = "python -m jax_cat.evaluate"
TRAIN = "python -m jax_cat.train"
SFT = ["--config", "sft_tiny"]  # the trainer rows check one recipe run (no --config: the default experiment)
OUT = ["--out", "{out}"]  # the trainer's rows always name a fresh folder: a refusal must leave it uncreated

# (cli, argv, words the one line must contain). "{empty}" is an existing folder with no checkpoint in it,
# "{file}" an existing plain file, "{out}" a folder that does not exist yet, "{dir}" the folder of the data files.
BAD_INVOCATIONS = [
    (SMOKE, ["--max-new-tokens", "0"], ["--max-new-tokens must be >= 1", "got 0"]),
    (SMOKE, ["--max-new-tokens", "many"], ["--max-new-tokens", "invalid int value", "--help"]),
    (SMOKE, ["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (SMOKE, ["--checkpoint", "/nonexistent/ckpt"], ["--checkpoint /nonexistent/ckpt", "no such folder", "leave --checkpoint out"]),
    (SMOKE, ["--checkpoint", "{empty}"], ["no config.json", "HF-format checkpoint folder"]),
    (EVAL, [], ["the following arguments are required: --model"]),
    (EVAL, ["--model", "tiny", "--n", "0"], ["--n must be >= 1", "got 0"]),
    (EVAL, ["--model", "tiny", "--n", "4", "--k", "1,8"], ["--k", "[1, --n=4]", "raise --n"]),
    (EVAL, ["--model", "tiny", "--k", "1,two"], ["--k must be comma-separated integers", "'1,two'"]),
    (EVAL, ["--model", "tiny", "--top-p", "1.5"], ["--top-p", "top_p must be in [0, 1]", "1.5"]),
    (EVAL, ["--model", "tiny", "--temperature", "-1"], ["--temperature", ">= 0"]),
    (EVAL, ["--model", "tiny", "--dtype", "float16"], ["--dtype", "invalid choice: 'float16'"]),
    (EVAL, ["--model", "tiny", "--limit", "0"], ["--limit must be >= 1"]),
    (EVAL, ["--model", "tiny", "--out", "{file}"], ["--out", "is a file", "give a folder"]),
    (EVAL, ["--model", "tiny", "--dataset", "arithmetic:nosuchpreset"], ["--dataset arithmetic:nosuchpreset", "unknown arithmetic preset"]),
    (EVAL, ["--model", "{empty}", "--n", "2", "--k", "1"], ["--model", "no config.json", "HF-format checkpoint folder"]),
    # the trainer (issue 19 items 6, 12, 13): every value and file is checked before a model is loaded
    (TRAIN, [*SFT, "--set", "eval.temperature=-1", *OUT], ["eval.temperature must be in [0, inf), got -1.0"]),
    (TRAIN, [*SFT, "--set", "rollout.top_p=2", *OUT], ["rollout.top_p must be in (0, 1], got 2.0"]),
    (TRAIN, [*SFT, "--set", "data.limit=-3", *OUT], ["data.limit must be >= 1, got -3"]),
    (TRAIN, [*SFT, "--set", "train.method=grpo", "--set", "rollout.group_size=1", *OUT],
     ["rollout.group_size=1", "every advantage is 0", "rollout.group_size >= 2"]),
    (TRAIN, [*SFT, "--set", "data.dataset={dir}/missing.jsonl", *OUT], ["data.dataset=", "missing.jsonl", "no such file"]),
    (TRAIN, [*SFT, "--set", "data.dataset={dir}/empty.jsonl", *OUT], ["empty.jsonl", "holds no records"]),
    (TRAIN, [*SFT, "--set", "data.dataset={dir}/bad.jsonl", *OUT], ["bad.jsonl, line 2: not valid JSON"]),
    (TRAIN, [*SFT, "--set", "data.dataset={dir}/unanswered.jsonl", *OUT], ["unanswered.jsonl", "none of its 2 rows has an answer"]),
    (TRAIN, [*SFT, "--set", "model.path={dir}/no-model", *OUT], ["model.path=", "no-model", "no such folder"]),
    (TRAIN, ["--config", "{dir}/latin1.toml", *OUT], ["latin1.toml: not UTF-8 text"]),
    (TRAIN, ["--config", "{dir}/list.json", *OUT], ["list.json: expected a table of sections", "got a list"]),
    (TRAIN, ["--out", "{file}"], ["file.txt is a file, not a folder"]),
    (TRAIN, ["--resume", "--overwrite", *OUT], ["--resume and --overwrite contradict each other"]),
]
MAINS = {SMOKE: smoke.main, EVAL: evaluate_cli.main, TRAIN: train_cli.main}


@pytest.fixture
def places(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer":\n')
    (tmp_path / "unanswered.jsonl").write_text('{"prompt": "1+1="}\n{"prompt": "2+2=", "answer": null}\n')
    (tmp_path / "latin1.toml").write_bytes("[train]\nsteps = 1 # \xe9t\xe9\n".encode("latin-1"))
    (tmp_path / "list.json").write_text("[1, 2]\n")
    return {"{empty}": str(tmp_path / "empty"), "{file}": str(tmp_path / "file.txt"), "{out}": str(tmp_path / "run"),
            "{dir}": str(tmp_path)}


@pytest.mark.parametrize("cli,argv,words", BAD_INVOCATIONS, ids=[f"{c.split()[-1]}:{' '.join(a)}" for c, a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_line_and_exit_2(cli, argv, words, places, capsys):
    for key, value in places.items():
        argv = [a.replace(key, value) for a in argv]
    assert MAINS[cli](argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{cli}: error: ") and "Traceback" not in captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""
    assert not os.path.exists(places["{out}"]) and not os.path.exists(places["{out}"] + ".lock")


def test_the_table_is_large_enough():
    assert len(BAD_INVOCATIONS) >= 10 and {cli for cli, _, _ in BAD_INVOCATIONS} == set(MAINS)


def test_debug_shows_the_traceback_and_keeps_the_status(capsys):
    assert evaluate_cli.main(["--model", "tiny", "--n", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(f"{EVAL}: error: --n")


def test_run_cli_statuses_by_hand(capsys):
    """The helper's contract, on stand-in mains: bad input 2, a bug 1 (one line, pointing at --debug), Ctrl-C 130."""

    def bad(argv):
        raise CLIError("--x is wrong; pass --x 1")

    def bug(argv):
        raise ZeroDivisionError("division by zero\nsecond line")

    def interrupted(argv):
        raise KeyboardInterrupt

    def fine(argv):
        assert argv == ["a", "--", "--debug"]  # --debug is taken out before a bare "--" only
        return None

    assert run_cli(bad, [], prog="p") == 2
    assert capsys.readouterr().err == "p: error: --x is wrong; pass --x 1\n"
    assert run_cli(bug, [], prog="p") == 1
    assert capsys.readouterr().err == (
        "p: error: ZeroDivisionError: division by zero; second line (rerun with --debug for the traceback)\n"
    )
    assert run_cli(interrupted, [], prog="p") == 130
    assert capsys.readouterr().err == "p: error: interrupted\n"
    assert run_cli(fine, ["--debug", "a", "--", "--debug"], prog="p") == 0
    assert split_debug(["--debug", "x"]) == (["x"], True) and split_debug(["x"]) == (["x"], False)
    parser = ArgumentParser(prog="p")
    assert "--debug" in parser.format_help()
    with pytest.raises(CLIError, match="unrecognized arguments: --y; see p --help"):
        parser.parse_args(["--y"])


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_real_processes_print_one_line_and_exit_2():
    """What a shell user sees: exit status 2 and a single stderr line, nothing on stdout (two real processes)."""
    for args, word in ((["-m", "jax_cat", "--checkpoint", "/nonexistent/ckpt"], "no such folder"),
                       (["-m", "jax_cat.evaluate", "--model", "tiny", "--n", "4", "--k", "8"], "--k")):
        proc = _run(*args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and word in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_quiet_third_party_silences_transformers_advice(monkeypatch):
    """The main job prints only its own lines: transformers' advisory notices (e.g. "PyTorch was not found") are off."""
    import logging

    from transformers.utils import logging as hf_logging

    from jax_cat.cli import quiet_third_party

    for name in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY", "TF_CPP_MIN_LOG_LEVEL"):
        monkeypatch.setenv(name, "")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(name)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = hf_logging.get_logger("transformers.jax_cat_test")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # transformers' default (an earlier in-process CLI run may have lowered it)
    logger.addHandler(handler)
    try:
        logger.warning_advice("advice before")
        quiet_third_party()
        logger.warning_advice("advice after")
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert seen == ["advice before"]  # printed by default, not after quiet_third_party()
