"""Fixtures for the merging tests: tiny random transformers Qwen2 "families" (base, sft, rl) saved with
save_pretrained, and pytree helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FAMILY_CONFIG = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
)


def build_family(root: Path, *, dtype: str = "float32", tie: bool = False, shard: str | None = None,
                 seed: int = 0, **overrides) -> dict[str, Path]:
    """base + sft (dense N(0, 0.02) update) + rl (10 % of entries, N(0, 0.005)) as HF checkpoints under root."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(**dict(FAMILY_CONFIG, tie_word_embeddings=tie, **overrides))
    model = transformers.Qwen2ForCausalLM(config).to(getattr(torch, dtype)).eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(root / "base", **kwargs)
    (root / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    for name, scale, frac in (("sft", 0.02, 1.0), ("rl", 0.005, 0.1)):
        with torch.no_grad():
            for key, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen) * scale
                mask = (torch.rand(param.shape, generator=gen) < frac).float()
                param.copy_(state[key] + (noise * mask).to(param.dtype))
        model.save_pretrained(root / name, **kwargs)
    return {"root": root, "base": root / "base", "sft": root / "sft", "rl": root / "rl"}


@pytest.fixture(scope="session")
def family_f32(tmp_path_factory) -> dict[str, Path]:
    """float32, untied lm_head, single-file checkpoints."""
    return build_family(tmp_path_factory.mktemp("fam-f32"))


@pytest.fixture(scope="session")
def family_bf16_tied_sharded(tmp_path_factory) -> dict[str, Path]:
    """bfloat16, tied embeddings (no lm_head.weight in the files), sharded into several files with an index."""
    return build_family(tmp_path_factory.mktemp("fam-bf16"), dtype="bfloat16", tie=True, shard="20KB", seed=3)


def load_state(path: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint folder as numpy arrays (via safetensors, independent of merging.stream)."""
    import json

    from safetensors.numpy import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def assert_bitwise_equal(a, b, what: str = "") -> None:
    """Same keys, dtypes, shapes and bytes."""
    a, b = dict(a), dict(b)
    assert sorted(a) == sorted(b), what
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (what, k, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), f"{what}: tensor {k} differs (max abs diff " \
            f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))})"
