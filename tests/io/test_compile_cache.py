"""The CLIs' persistent XLA compilation cache (`jax_cat.io.compile_cache`): where it goes (flags, JAX's own env var,
JAX_CAT_XLA_CACHE, the user cache), an unwritable folder (one warning, the run goes on), and a second process
loading what the first compiled."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jax_cat.io import compile_cache as cc

REPO = Path(__file__).resolve().parents[2]
HOME = str(Path.home())


# ------------------------------------------------------------------------------------------------ resolve
@pytest.mark.parametrize("env, expected", [
    ({}, f"{HOME}/.cache/jax-cat/xla"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/jax-cat/xla"),
    ({"XDG_CACHE_HOME": "/x", "JAX_CAT_CACHE": "/c"}, "/c/xla"),
    ({"JAX_CAT_CACHE": "/c", "JAX_CAT_XLA_CACHE": "/d"}, "/d"),
    ({"JAX_CAT_XLA_CACHE": "~/d"}, f"{HOME}/d"),
    ({"JAX_CAT_XLA_CACHE": ""}, f"{HOME}/.cache/jax-cat/xla"),  # empty: as if unset
])
def test_the_folder_follows_the_environment(env, expected):
    assert cc.resolve(env) == Path(expected)


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "no", " off "])
def test_jax_cat_xla_cache_off_turns_it_off(value):
    assert cc.resolve({"JAX_CAT_XLA_CACHE": value}) is None


def test_jax_s_own_variable_wins_over_ours_and_is_left_to_jax():
    assert cc.resolve({"JAX_COMPILATION_CACHE_DIR": "/j", "JAX_CAT_XLA_CACHE": "/d"}) == "jax"
    assert cc.resolve({"JAX_COMPILATION_CACHE_DIR": "/j", "JAX_CAT_XLA_CACHE": "off"}) == "jax"


def test_the_flags_win_over_every_variable():
    env = {"JAX_COMPILATION_CACHE_DIR": "/j", "JAX_CAT_XLA_CACHE": "/d", "JAX_CAT_CACHE": "/c"}
    assert cc.resolve(env, off=True) is None
    assert cc.resolve(env, flag_dir="/f") == Path("/f")


def test_the_default_folder_sits_in_the_tiny_checkpoint_s_user_cache(monkeypatch):
    from jax_cat.models.tiny import cache_dir

    for env in ({}, {"XDG_CACHE_HOME": "/x"}, {"JAX_CAT_CACHE": "/c", "XDG_CACHE_HOME": "/x"}):
        for key in ("JAX_CAT_CACHE", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert cc.user_cache_dir(env) == cache_dir()


# ------------------------------------------------------------------------------------------------ enable
@pytest.fixture
def updates(monkeypatch):
    """jax.config.update calls recorded instead of made: this pytest process keeps its own cache settings."""
    import jax

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
    return calls


def test_a_writable_folder_is_created_and_used(tmp_path, updates, capsys, monkeypatch):
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    folder = tmp_path / "a" / "xla"
    assert cc.enable(folder, prog="prog") == folder
    assert folder.is_dir() and not list(folder.iterdir())  # the write probe is gone
    assert ("jax_compilation_cache_dir", str(folder)) in updates
    assert ("jax_compilation_cache_max_size", cc.MAX_BYTES) in updates
    assert ("jax_persistent_cache_min_compile_time_secs", 0.0) in updates  # every program, not only >= 1 s ones
    assert capsys.readouterr().err == ""


def test_an_unwritable_folder_warns_once_and_turns_the_cache_off(tmp_path, updates, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cc.enable(blocker / "xla", prog="prog") is None  # under a file: cannot be created (even as root)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prog: warning: compilation cache off for this run: cannot write ")
    assert str(blocker / "xla") in err[0]
    assert updates == [("jax_enable_compilation_cache", False)]


def test_off_disables_and_jax_s_variable_changes_nothing(updates):
    assert cc.enable("jax", prog="prog") is None and updates == []
    assert cc.enable(None, prog="prog") is None
    assert updates == [("jax_enable_compilation_cache", False)]


def test_without_flags_a_cache_this_process_already_has_is_kept(updates, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    real_update = type(jax.config).update  # `updates` records the instance's calls; this one sets the value
    if not before:  # a session run with JAX_CAT_TEST_XLA_CACHE=0: give this process a cache for the test's length
        real_update(jax.config, "jax_compilation_cache_dir", str(tmp_path / "session"))
    try:
        args = argparse.Namespace(compile_cache=None, no_compile_cache=False)
        assert cc.enable_from_args(args, prog="prog", env={"JAX_CAT_XLA_CACHE": str(tmp_path)}) is None
        assert updates == []
        args.compile_cache = str(tmp_path)  # a flag is explicit: it wins
        assert cc.enable_from_args(args, prog="prog") == tmp_path
    finally:
        if not before:
            real_update(jax.config, "jax_compilation_cache_dir", before)


def test_both_flags_are_one_usage_line(capsys):
    from jax_cat import train

    assert train.main(["--compile-cache", "/tmp/x", "--no-compile-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-compile-cache" in err[0] and err[0].startswith("python -m jax_cat.train: error:")


def test_the_cache_is_not_a_run_setting():
    import dataclasses

    from jax_cat.training.config import load_config

    cfg = load_config("sft_tiny", [])  # config.json and the run-folder comparison are made of these fields
    assert "cache_dir" not in str(dataclasses.asdict(cfg)) and "compile_cache" not in str(dataclasses.asdict(cfg))


# ------------------------------------------------------------------------------------------------ two processes
_PROGRAM = """
import argparse, sys
import jax, jax.numpy as jnp
from jax_cat.io import compile_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **_: hits.append(event) if event.endswith("cache_hits") else None)
used = compile_cache.enable_from_args(argparse.Namespace(compile_cache=sys.argv[1], no_compile_cache=False), prog="p")
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(used, len(hits))
"""


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    folder = tmp_path / "xla"
    runs = [subprocess.run([sys.executable, "-c", _PROGRAM, str(folder)], capture_output=True, text=True, env=env,
                           timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]
    assert runs[0].stdout.split() == [str(folder), "0"]
    used, hits = runs[1].stdout.split()
    assert used == str(folder) and int(hits) >= 1  # the second process hit what the first wrote
    assert any(p.name.endswith("-cache") for p in folder.iterdir())
