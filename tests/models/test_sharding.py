"""Logical-axis sharding: rules on hand-made shapes, and a sharded forward/backward equal to the single-device one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jax_cat.models.tiny import build_tiny_checkpoint
from jax_cat.sharding import logical_to_pspec, make_mesh

REPO = Path(__file__).resolve().parents[2]


def test_logical_rules_and_divisibility_fallback():
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    assert logical_to_pspec(("embed", "heads", "head_dim")) == P("fsdp", "tensor", None)
    assert logical_to_pspec(("vocab", "embed")) == P("tensor", "fsdp")
    assert logical_to_pspec((None,)) == P(None)
    assert logical_to_pspec(None) == P()
    # 3 kv heads cannot split over 2 tensor shards: replicated on that dim, fsdp still applies
    assert logical_to_pspec(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh) == P("fsdp", None, None)
    # one mesh axis never shards two dims of the same array
    assert logical_to_pspec(("mlp", "vocab"), (8, 8), mesh) == P("tensor", None)


def test_make_mesh_sizes():
    devices = jax.devices()[:8]
    assert dict(make_mesh(fsdp=2, tensor=2, devices=devices).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh(data=1, fsdp=-1, devices=devices).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(data=3, fsdp=2, tensor=2, devices=devices)
    with pytest.raises(ValueError, match="at most one"):
        make_mesh(data=-1, fsdp=-1, devices=devices)
    with pytest.raises(ValueError, match="positive ints.*'tensor': 0"):
        make_mesh(fsdp=2, tensor=0, devices=devices)


def test_sharded_forward_and_grad_equal_single_device(tmp_path):
    # attention_bias + untied head so that every kind of parameter is sharded
    ckpt = build_tiny_checkpoint(tmp_path / "tiny", seed=4, tie_word_embeddings=False)
    # level 0 as in the pytest process (tests/conftest.py): the child compares its sharded and single-device
    # programs with each other, both compiled alike
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_sharded_forward.py")), str(ckpt)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert not result["torch_imported"] and not result["transformers_imported"]  # load_hf needs neither
    for how in ("shard_model", "load_hf_mesh"):
        r = result[how]
        assert r["logits_diff"] <= 1e-5, r
        assert r["loss_diff"] <= 1e-5, r
        assert r["grad_diff"] <= 1e-5, r
        assert r["q_proj_spec"] == ["fsdp", "tensor", "None"]
        assert r["o_proj_spec"] == ["tensor", "None", "fsdp"]
        assert r["embed_spec"] == ["tensor", "fsdp"]
        assert r["q_proj_devices"] == 8
        assert r["q_proj_shard_shape"] == [32, 2, 16]  # [64, 4, 16] split 2-way on embed and on heads
