"""Session-wide test setup.

Runs before any test module imports JAX, so that CPU-only machines expose 8 host devices: sharding tests
can then build (data, fsdp, tensor) meshes in-process. Single-device code is unaffected (arrays land on
device 0). x64 stays off globally (Vizier warns and truncates under it); tests that want float64 use
`jax.experimental.enable_x64()` locally.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default tiny checkpoint lives in the user cache: tests use a throwaway one, never ~/.cache/jax-cat.
import tempfile  # noqa: E402

os.environ["JAX_CAT_CACHE"] = tempfile.mkdtemp(prefix="jax-cat-test-cache-")
# The CLIs keep XLA's persistent compilation cache in the user cache by default (jax_cat/io/compile_cache.py): the
# CLI processes tests start compile from scratch, as before, and never share entries across xdist workers; the tests
# of the cache itself pass --compile-cache DIR. In this process an explicit env or flag cannot undo pytest_configure's
# cache: without a flag the CLIs keep a cache the process already has.
os.environ["JAX_CAT_XLA_CACHE"] = "off"


# ---------------------------------------------------------------------------------------------- models fixtures
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_XLA_CACHE: str | None = None


# LLVM's optimisation level for the executables this pytest process compiles: at 0, XLA:CPU compiles the tiny
# models' steps in ~40 % less CPU time (the suite is mostly compilation); matmuls still call the same library
# kernels, and results agree with the default level to float32 round-off (tests compare against references with
# tolerances, never against numbers compiled at another level). JAX_CAT_TEST_XLA_O0=0 keeps XLA's default.
_FAST_COMPILE = "--xla_backend_optimization_level=0"


def _compile_fast_in_this_process_only():
    """Start the CPU client with _FAST_COMPILE, then take it out of os.environ again: the trainer subprocesses that
    tests start inherit the environment and must run as users run them."""
    inherited = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("JAX_CAT_TEST_XLA_O0") == "0" or "xla_backend_optimization_level" in inherited:
        return
    os.environ["XLA_FLAGS"] = f"{inherited} {_FAST_COMPILE}".strip()
    try:
        import jax

        jax.jit(lambda x: x + 1)(0).block_until_ready()  # XLA reads XLA_FLAGS once, at the first client/compile
    finally:
        os.environ["XLA_FLAGS"] = inherited


def pytest_configure(config):
    """XLA's persistent compilation cache for this pytest process only, in a fresh folder removed at session end.

    Many tests build the same tiny-model programs anew (each trainer run, step factory or sampler makes its own
    jitted function, so JAX's in-memory cache misses); keyed by the HLO, the devices and the flags, a hit loads the
    executable instead of compiling it again. Set with jax.config, not environment variables: the trainer
    subprocesses that tests start must not inherit it (a cache warning in their stderr breaks one-line checks).
    An outer JAX_COMPILATION_CACHE_DIR (scripts/mutation.sh sets one) is left as it is.
    """
    global _XLA_CACHE
    _compile_fast_in_this_process_only()
    if "JAX_COMPILATION_CACHE_DIR" in os.environ or os.environ.get("JAX_CAT_TEST_XLA_CACHE") == "0":
        return
    import jax

    _XLA_CACHE = tempfile.mkdtemp(prefix="jax-cat-test-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    """The session's compilation cache goes with it."""
    if _XLA_CACHE is not None:
        import shutil

        shutil.rmtree(_XLA_CACHE, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- opt-in slow tests
# `slow` marks end-to-end checks whose contract a default test also covers (each one's docstring names it); they
# run with `--run-slow` or JAX_CAT_SLOW_TESTS=1, and are listed as skipped otherwise (docs/testing.md).
def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (opt-in end-to-end checks)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("JAX_CAT_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow, opt-in: --run-slow or JAX_CAT_SLOW_TESTS=1 (a default test covers it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """Callable `tiny_hf_checkpoint(model_type, **overrides) -> Path`: one saved tiny HF checkpoint per argument set
    per session (types: llama, qwen2, qwen3, mistral; see tests/hf_fixtures.py)."""
    from tests.hf_fixtures import make_tiny_hf_checkpoint

    cache: dict = {}

    def get(model_type: str, **overrides) -> Path:
        key = (model_type, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"hf-{model_type}")
            cache[key] = make_tiny_hf_checkpoint(model_type, out, **overrides)
        return cache[key]

    return get
