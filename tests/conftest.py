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
# XLA's persistent compilation cache, one fresh folder per test session: many tests, and the trainer subprocesses
# they start (which inherit these variables), compile the same tiny-model steps; a hit loads the executable instead
# of compiling it again. Keyed by the HLO, the devices and the flags, so a changed computation still compiles. No
# size bound: that turns on an eviction scan of the whole folder at every write. (A half-written entry that another
# process reads is a warning and a compile, never a wrong executable.) An outer JAX_COMPILATION_CACHE_DIR
# (scripts/mutation.sh sets one) is kept.
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cat-test-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


# ---------------------------------------------------------------------------------------------- models fixtures
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_unconfigure(config):
    """The session's compilation cache goes with it (xdist workers inherit the folder; its creator removes it)."""
    if _OWN_XLA_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


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
