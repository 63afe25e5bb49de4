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


# ---------------------------------------------------------------------------------------------- models fixtures
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


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
