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
