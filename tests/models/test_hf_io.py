"""save_hf round trips through transformers; load_hf names every problem of a wrong checkpoint."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from jax_cat.models import CheckpointError, load_hf, save_hf
from jax_cat.models.tiny import build_tiny_checkpoint
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(ckpt: Path, edit) -> None:
    file = ckpt / "model.safetensors"
    with safe_open(str(file), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def _edit_config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_save_hf_round_trip_through_transformers(tiny_hf_checkpoint, tmp_path, model_type):
    extra = dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True) if model_type == "llama" else {}
    model = load_hf(tiny_hf_checkpoint(model_type, **extra))
    out = save_hf(model, tmp_path / "saved", tokenizer=tiny_hf_checkpoint(model_type, **extra))
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temp dirs left behind
    reloaded_torch = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs_diff_on_real_tokens(ours, torch_logits(reloaded_torch, ids, mask), mask) <= 1e-4
    again = load_hf(out)
    assert again.config == model.config
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))), ours)


def test_sharded_save_and_load(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "tiny", seed=3)
    model = load_hf(ckpt)
    out = save_hf(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    ids = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_array_equal(np.asarray(load_hf(out)(ids)), np.asarray(model(ids)))
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref = torch_logits(torch_model, np.asarray(ids), np.ones((1, 4), np.int32))
    assert np.abs(ref - np.asarray(model(ids))).max() <= 1e-4


def test_bfloat16_load_and_save(tiny_hf_checkpoint, tmp_path):
    model = load_hf(tiny_hf_checkpoint("qwen3"), dtype=jnp.bfloat16)
    assert model.embed_tokens[...].dtype == jnp.bfloat16
    ids = jnp.asarray([[5, 6, 7, 8, 9]])
    logits = model(ids)
    assert logits.dtype == jnp.float32
    out = save_hf(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    f32 = load_hf(tiny_hf_checkpoint("qwen3"))
    assert np.abs(np.asarray(logits) - np.asarray(f32(ids))).max() < 0.1  # bf16 rounding, not a wrong mapping


def test_save_overwrites_atomically_and_keeps_old_on_failure(tmp_path, monkeypatch):
    ckpt = build_tiny_checkpoint(tmp_path / "tiny", seed=1)
    before = (ckpt / "model.safetensors").read_bytes()
    other = load_hf(build_tiny_checkpoint(tmp_path / "other", seed=2))

    import jax_cat.models.hf as hf

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "_write_safetensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hf(other, ckpt)
    assert (ckpt / "model.safetensors").read_bytes() == before  # the old checkpoint is untouched
    monkeypatch.undo()
    save_hf(other, ckpt)
    assert (ckpt / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "tiny"]


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "tiny")
    file = ckpt / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf(ckpt)


def test_mismatched_checkpoint_names_every_bad_tensor(tiny_hf_checkpoint, tmp_path):
    ckpt = _copy(tiny_hf_checkpoint("qwen2"), tmp_path / "bad")

    def edit(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        del tensors["model.norm.weight"]
        tensors["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
        tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((8, 64), np.float32)
        tensors["model.layers.1.self_attn.k_proj.bias"] = np.zeros(5, np.float32)
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)  # legacy: ignored

    _rewrite_tensors(ckpt, edit)
    with pytest.raises(CheckpointError) as info:
        load_hf(ckpt)
    msg = str(info.value)
    assert "missing tensors (2): model.layers.1.mlp.up_proj.weight, model.norm.weight" in msg
    assert "unexpected tensors (1): model.layers.0.self_attn.extra.weight" in msg
    assert "mis-shaped tensors (2)" in msg
    assert "model.layers.0.self_attn.q_proj.weight: checkpoint (8, 64) vs expected (64, 64)" in msg
    assert "model.layers.1.self_attn.k_proj.bias: checkpoint (5,) vs expected (32,)" in msg
    assert "inv_freq" not in msg


def test_config_that_does_not_fit_the_tensors(tiny_hf_checkpoint, tmp_path):
    ckpt = _copy(tiny_hf_checkpoint("llama"), tmp_path / "deeper")
    _edit_config(ckpt, num_hidden_layers=3, intermediate_size=96)
    with pytest.raises(CheckpointError) as info:
        load_hf(ckpt)
    msg = str(info.value)
    assert "missing tensors (9)" in msg and "model.layers.2.self_attn.o_proj.weight" in msg
    assert "mis-shaped tensors (6)" in msg and "model.layers.1.mlp.down_proj.weight" in msg


def test_unsupported_model_type_lists_supported(tiny_hf_checkpoint, tmp_path):
    ckpt = _copy(tiny_hf_checkpoint("llama"), tmp_path / "gpt2")
    _edit_config(ckpt, model_type="gpt2")
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'; supported: llama, mistral, qwen2, qwen3"):
        load_hf(ckpt)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf(tmp_path / "nowhere")
    ckpt = build_tiny_checkpoint(tmp_path / "tiny")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_hf(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(ckpt)


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    """A repo id resolves through huggingface_hub's cache (offline here: a pre-filled cache stands in for the hub)."""
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--jax-cat--tiny"
    build_tiny_checkpoint(repo / "snapshots" / commit, seed=5)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model = load_hf("jax-cat/tiny")
    direct = load_hf(repo / "snapshots" / commit)
    ids = jnp.asarray([[5, 6, 7]])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(direct(ids)))
    with pytest.raises(FileNotFoundError, match="not a local checkpoint directory"):
        load_hf("jax-cat/absent")


def test_hub_download_fetches_only_the_weights_the_index_names(tmp_path, monkeypatch):
    """A repo that also ships `consolidated.safetensors` (Mistral's layout) must not have that copy downloaded."""
    import fnmatch

    import huggingface_hub

    tiny = build_tiny_checkpoint(tmp_path / "tiny", seed=6)
    sharded = save_hf(load_hf(tiny), tmp_path / "repo", tokenizer=tiny, max_shard_bytes=40_000)
    (sharded / "consolidated.safetensors").write_bytes(b"a second copy of the weights")
    single = build_tiny_checkpoint(tmp_path / "single", seed=6)
    (single / "consolidated.safetensors").write_bytes(b"a second copy of the weights")
    repos = {"org/sharded": sharded, "org/single": single}
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):  # a local "hub" that copies what the patterns select
        calls.append((repo_id, list(allow_patterns)))
        snap = tmp_path / "cache" / repo_id.replace("/", "--")
        snap.mkdir(parents=True, exist_ok=True)
        for f in repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy2(f, snap / f.name)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ids = jnp.asarray([[5, 6, 7]])
    for repo_id, path in repos.items():
        calls.clear()
        model = load_hf(repo_id)
        np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(load_hf(path)(ids)))
        fetched = {p.name for p in (tmp_path / "cache" / repo_id.replace("/", "--")).iterdir()}
        assert "consolidated.safetensors" not in fetched
        assert "config.json" in fetched and "tokenizer.json" in fetched
        assert not any("*.safetensors" in patterns for _, patterns in calls)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2 and calls[-1][1] == ["model.safetensors"]


def test_generation_config_stop_ids_are_merged_into_eos(tmp_path):
    """Instruct models list end-of-turn ids only in generation_config.json; we stop on them as transformers does."""
    ckpt = build_tiny_checkpoint(tmp_path / "tiny")
    own = load_hf(ckpt).config.eos_token_ids
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [own[0], 7, 9]}))
    assert load_hf(ckpt).config.eos_token_ids == (*own, 7, 9)
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": own[0], "do_sample": True}))
    assert load_hf(ckpt).config.eos_token_ids == own


# ---------------------------------------------------------------------------------------------------- issue 20: exports
def _read_like_transformers_4(config: dict) -> dict:
    """The rope / dtype fields a transformers 4.x `Qwen2Config` / `LlamaConfig` takes from config.json: top-level
    `rope_theta` (class default 10000.0 when absent), `rope_scaling` (None = default rope) and `torch_dtype`;
    4.x ignores `rope_parameters` (the 5.x spelling)."""
    return {"rope_theta": config.get("rope_theta", 10000.0), "rope_scaling": config.get("rope_scaling"),
            "torch_dtype": config.get("torch_dtype")}


def test_config_json_carries_the_transformers_4_spellings(tmp_path):
    # Before the fix only rope_parameters was written: a 4.x reader got rope_theta 10000 for a 1e6 model.
    from jax_cat.models.decoder import CausalLM
    from jax_cat.models.tiny import tiny_model_config
    from flax import nnx

    qwen = CausalLM(tiny_model_config(rope_theta=1e6), rngs=nnx.Rngs(0))
    out = save_hf(qwen, tmp_path / "qwen", dtype="bfloat16")
    written = json.loads((out / "config.json").read_text())
    assert _read_like_transformers_4(written) == {"rope_theta": 1e6, "rope_scaling": None, "torch_dtype": "bfloat16"}
    assert written["dtype"] == "bfloat16" and written["rope_parameters"]["rope_theta"] == 1e6  # 5.x spelling kept

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    llama = tiny_model_config(model_type="llama", attention_bias=False, rope_theta=5e5, rope_scaling=scaling)
    written = llama.to_hf_dict()  # what save_hf writes for it (no model built: init is slow on a busy CPU)
    assert _read_like_transformers_4(written) == {"rope_theta": 5e5, "rope_scaling": scaling, "torch_dtype": "float32"}
    # transformers 5 still reads the file with both spellings present, to the same rope
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(written))
    cfg5 = transformers.AutoConfig.from_pretrained(tmp_path / "llama")
    assert cfg5.rope_parameters["rope_theta"] == 5e5 and cfg5.rope_parameters["factor"] == 8.0


def test_save_hf_writes_the_chosen_dtype_rounded_to_nearest_even(tmp_path):
    import torch

    ckpt = build_tiny_checkpoint(tmp_path / "f32", seed=1)
    model = load_hf(ckpt)
    out = save_hf(model, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f32, \
            safe_open(str(out / "model.safetensors"), framework="pt") as bf16:
        assert set(f32.keys()) == set(bf16.keys())
        for name in f32.keys():
            got = bf16.get_tensor(name)
            assert got.dtype == torch.bfloat16, name
            torch.testing.assert_close(got, f32.get_tensor(name).to(torch.bfloat16), rtol=0, atol=0)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="export dtype 'int8' is not supported; use one of float32, bfloat16"):
        save_hf(model, tmp_path / "bad", dtype="int8")


def test_save_final_exports_in_the_source_dtype_with_its_generation_config(tmp_path):
    # Before: final/ was always float32 (2x a bf16 source) and generation_config.json was dropped.
    from jax_cat.models.hf import checkpoint_dtype
    from jax_cat.models.tiny import build_char_tokenizer
    from jax_cat.training.runtime import save_final

    src = build_tiny_checkpoint(tmp_path / "src", seed=2, dtype=jnp.bfloat16)
    _rewrite_tensors(src, lambda t: t.update({k: v.astype(jnp.bfloat16) for k, v in t.items()}))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "temperature": 0.7}))
    assert checkpoint_dtype(src) == "bfloat16"
    model = load_hf(src, param_dtype=jnp.float32)  # float32 masters, as the trainer holds them
    final = save_final(model, build_char_tokenizer(), tmp_path / "run", source=src, dtype="source")
    with safe_open(str(final / "model.safetensors"), framework="numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((final / "generation_config.json").read_text()) == {"eos_token_id": [2, 7], "temperature": 0.7}
    assert json.loads((final / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (final / "model.safetensors").stat().st_size < (src / "model.safetensors").stat().st_size * 1.01
    again = save_final(model, build_char_tokenizer(), tmp_path / "run32", source=src, dtype="float32")
    assert checkpoint_dtype(again) == "float32"


_T4_SCRIPT = r"""
import json, sys, numpy as np, torch, transformers
path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
m = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
with torch.no_grad():
    logits = m(ids).logits.float().numpy()
print(json.dumps({"version": transformers.__version__, "rope_theta": m.config.rope_theta, "logits": logits.tolist()}))
"""


@pytest.mark.skipif(not os.environ.get("JAX_CAT_TRANSFORMERS4_PYTHON"),
                    reason="set JAX_CAT_TRANSFORMERS4_PYTHON to a python with transformers 4.x + torch")
def test_saved_checkpoint_loads_in_transformers_4(tmp_path):
    # e.g. python -m venv /tmp/t4 && /tmp/t4/bin/pip install 'transformers==4.57.*' torch safetensors
    import subprocess

    from flax import nnx

    from jax_cat.models.decoder import CausalLM
    from jax_cat.models.tiny import tiny_model_config

    model = CausalLM(tiny_model_config(rope_theta=1e6, max_position_embeddings=512), rngs=nnx.Rngs(0))
    out = save_hf(model, tmp_path / "m")
    ids = (np.arange(1, 200).reshape(1, -1) % model.config.vocab_size).tolist()
    done = subprocess.run([os.environ["JAX_CAT_TRANSFORMERS4_PYTHON"], "-c", _T4_SCRIPT, str(out), json.dumps(ids)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"].startswith("4.") and got["rope_theta"] == 1e6
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones((1, len(ids[0])), jnp.int32)))
    assert np.abs(np.asarray(got["logits"]) - ours).max() <= 1e-4
