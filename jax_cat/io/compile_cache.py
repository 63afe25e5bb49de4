"""XLA's persistent compilation cache for the command lines (`python -m jax_cat.train`, `python -m jax_cat.evaluate`).

A run spends its first step compiling the training step and the sampler; keyed by the program, the devices and the
flags, a cache hit loads the executable from disk instead, so every run after the first with the same shapes skips
those compiles. It is an environment choice, not an experiment setting: it is never part of a run's config.json.

Where the cache lives, first match wins:

1. `--no-compile-cache` (off) or `--compile-cache DIR` on the command line;
2. a cache JAX already has: its own `JAX_COMPILATION_CACHE_DIR` in the environment, or `jax_compilation_cache_dir`
   set in this process before the CLI ran (a notebook, the test session): left as it is;
3. `JAX_CAT_XLA_CACHE=DIR`, or `JAX_CAT_XLA_CACHE=off` (also `0`, `false`, `no`) to turn it off;
4. `<user cache>/xla`: `$JAX_CAT_CACHE/xla`, else `$XDG_CACHE_HOME/jax-cat/xla`, else `~/.cache/jax-cat/xla` (the
   folder that also holds the tiny default checkpoint).

A folder that cannot be created or written turns the cache off for the run with one warning line on stderr: the run
goes on, compiling as without a cache. Set with `jax.config` before the first compile (the CLIs call `enable` after
parsing their flags). Every program is written, not only those that took >= 1 s to compile (JAX's default
threshold; an explicit JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS wins): on the GRPO workload of
benchmarks/grpo_peers.py the many sub-second compiles cost ~1 s of the warm first step and ~30 MiB of peak RSS
(docs/benchmarks.md, "Compilation cache"). The folder is bounded to MAX_BYTES by JAX's least-recently-used
eviction, whose file lock also keeps concurrent runs from reading a half-written entry.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV", "MAX_BYTES", "OFF", "add_flags", "enable", "enable_from_args", "resolve", "user_cache_dir"]

ENV = "JAX_CAT_XLA_CACHE"
OFF = ("off", "0", "false", "no")
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
MAX_BYTES = 4 * 1024**3  # the training steps of small models are 1-50 MB each on disk


def user_cache_dir(env: Mapping[str, str]) -> Path:
    """jax-cat's user cache folder (the rule of jax_cat.models.tiny.cache_dir, read from `env`)."""
    if env.get("JAX_CAT_CACHE"):
        return Path(env["JAX_CAT_CACHE"]).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "jax-cat"


def resolve(env: Mapping[str, str], *, flag_dir: str | None = None, off: bool = False) -> Path | str | None:
    """Where the cache goes: a folder to enable, "jax" (JAX_COMPILATION_CACHE_DIR, left to JAX), or None (off)."""
    if off:
        return None
    if flag_dir:
        return Path(flag_dir).expanduser()
    if env.get(JAX_ENV):
        return "jax"
    value = env.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    return Path(value).expanduser() if value else user_cache_dir(env) / "xla"


def _unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold cache entries (created if missing), or None when a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def enable(where: Path | str | None, *, prog: str) -> Path | None:
    """Point JAX's persistent cache at `where` (from `resolve`) before anything compiles; the folder used, or None.

    None (off) and "jax" (the outer JAX_COMPILATION_CACHE_DIR) change nothing but turn it off / leave it. A folder
    that cannot be written: one `<prog>: warning: ...` line on stderr, and the run compiles without a cache."""
    import jax

    if where == "jax":
        return None
    if where is None:
        jax.config.update("jax_enable_compilation_cache", False)  # also silences an outer JAX_COMPILATION_CACHE_DIR
        return None
    folder = Path(where)
    reason = _unwritable(folder)
    if reason is not None:
        print(f"{prog}: warning: compilation cache off for this run: cannot write {folder} ({reason}); "
              f"pass --compile-cache DIR, or --no-compile-cache to silence this", file=sys.stderr)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_enable_compilation_cache", True)  # a folder asked for is used (JAX's default is on)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        import filelock  # noqa: F401 - JAX's eviction (and its lock) needs it; huggingface-hub depends on it
    except ImportError:
        pass
    else:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--compile-cache DIR / --no-compile-cache on a CLI's parser (see the module docstring for the rules)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile-cache", default=None, metavar="DIR",
                       help=f"XLA compilation cache folder (default: ${ENV}, else <user cache>/xla, e.g. "
                            "~/.cache/jax-cat/xla; JAX_COMPILATION_CACHE_DIR is honoured as is): runs after the "
                            "first skip the step and sampler compiles")
    group.add_argument("--no-compile-cache", action="store_true",
                       help=f"compile without the persistent cache (also: {ENV}=off)")


def enable_from_args(args: argparse.Namespace, *, prog: str, env: Mapping[str, str] | None = None) -> Path | None:
    """`enable(resolve(...))` from the flags `add_flags` defines and the environment; the folder used, or None.

    Without a flag, a cache this process already has (jax_compilation_cache_dir set) is left as it is."""
    import jax

    flag_dir, off = getattr(args, "compile_cache", None), bool(getattr(args, "no_compile_cache", False))
    if not (flag_dir or off) and jax.config.jax_compilation_cache_dir:
        return None
    return enable(resolve(os.environ if env is None else env, flag_dir=flag_dir, off=off), prog=prog)
