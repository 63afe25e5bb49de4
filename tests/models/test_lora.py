"""LoRA adapters in the NNX decoders against densified references: the adapted forward equals the base forward with
W + A.B.alpha/r written into the kernels by hand (numpy, HF layout), B = 0 gives the base's logits, and the
adapters carry the logical axes of the kernels they adapt."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import load_hf
from jax_cat.models.hf import hf_key_table, param_location
from jax_cat.models.lora import LoRAConfig, adapter_params, adapters_of, has_adapters, merge_lora
from jax_cat.sharding import logical_axes
from tests.models._reference import left_padded_batch

CFG = LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"))


def _randomise_b(model, seed=0):
    """Non-zero B everywhere (B starts at zero, which would make every comparison trivial)."""
    rng = np.random.default_rng(seed)
    for _, _, _, adapter in adapters_of(model):
        b = adapter.lora_b
        b.set_value(jnp.asarray(0.05 * rng.standard_normal(b.shape), b.dtype))


def _dense_reference(model):
    """A fresh base model whose kernels are W + (A.B) alpha/r, densified in numpy from the HF-layout tensors."""
    base = nnx.clone(model)
    flat = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
    for rule in hf_key_table(model.config).values():
        path, layer = param_location(rule.path, model.scan_layers)
        a_path = (*path[:-1], f"{path[-1]}_lora", "lora_a")
        if a_path not in flat:
            continue
        sl = (lambda x: x) if layer is None else (lambda x: x[layer])
        a = np.asarray(sl(flat[a_path].get_value()), np.float64)
        b = np.asarray(sl(flat[(*path[:-1], f"{path[-1]}_lora", "lora_b")].get_value()), np.float64)
        w_hf = rule.to_hf(np.asarray(sl(flat[path].get_value()), np.float64))  # [out, in]
        a_hf, b_hf = a.reshape(-1, a.shape[-1]).T, b.reshape(b.shape[0], -1).T  # PEFT: A [r, in], B [out, r]
        dense = rule.to_nnx(w_hf + (b_hf @ a_hf) * CFG.alpha / CFG.rank)
        full = np.array(flat[path].get_value())
        if layer is None:
            full = dense
        else:
            full[layer] = dense
        flat[path].set_value(jnp.asarray(full, flat[path].get_value().dtype))
    for _, li, path, _ in list(adapters_of(base)):
        sub, attr = path.split(".")
        delattr(getattr(base.layers if li is None else base.layers[li], sub), attr + "_lora")
    base.lora = None
    return base


@pytest.mark.parametrize("model_type,scan", [("qwen2", False), ("llama", True)])
def test_lora_forward_equals_densified_base(tiny_hf_checkpoint, model_type, scan):
    path = tiny_hf_checkpoint(model_type)
    model = load_hf(path, lora=CFG, scan_layers=scan)
    ids, mask = left_padded_batch(model.config.vocab_size)
    base_logits = np.asarray(load_hf(path, scan_layers=scan)(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), base_logits, atol=1e-6)
    _randomise_b(model)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = np.asarray(_dense_reference(model)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - base_logits).max() > 1e-2  # the adapters move the logits
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    merged = merge_lora(model)  # our merge = the reference's densified kernels
    assert merged.lora is None and not has_adapters(nnx.to_pure_dict(nnx.state(merged)))
    np.testing.assert_allclose(np.asarray(merged(jnp.asarray(ids), jnp.asarray(mask))), ref, atol=1e-5)
    assert model.lora is CFG  # merge copies; the adapted model is unchanged


def test_rank_full_with_b_zero_gives_base_logits(tiny_hf_checkpoint):
    path = tiny_hf_checkpoint("qwen3")
    base = load_hf(path)
    full = dataclasses.replace(CFG, rank=base.config.hidden_size)
    model = load_hf(path, lora=full)
    ids, mask = left_padded_batch(model.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(base(jnp.asarray(ids), jnp.asarray(mask))))


def test_cached_decoding_uses_the_adapters(tiny_hf_checkpoint):
    model = load_hf(tiny_hf_checkpoint("mistral"), lora=CFG)
    _randomise_b(model, seed=1)
    ids, mask = left_padded_batch(model.config.vocab_size, lengths=(7, 4))
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    cache = model.init_cache(ids.shape[0], ids.shape[1])
    from jax_cat.models.decoder import positions_from_mask

    logits, _ = model.forward_cached(jnp.asarray(ids), positions_from_mask(jnp.asarray(mask)), cache, 0,
                                     jnp.asarray(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], full[real], atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_adapters_carry_the_logical_axes_of_their_kernels(tiny_hf_checkpoint, scan):
    model = load_hf(tiny_hf_checkpoint("qwen2"), lora=LoRAConfig(rank=2, targets=("q_proj", "o_proj", "down_proj")),
                    scan_layers=scan)
    lead = ("layers",) if scan else ()
    seen = {}
    for name, _, _, adapter in adapters_of(model):
        seen[name] = (logical_axes(adapter.lora_a), logical_axes(adapter.lora_b))
        assert adapter.lora_a.dtype == jnp.float32 and adapter.lora_b.dtype == jnp.float32
        assert not np.any(np.asarray(adapter.lora_b.get_value()))
    assert seen["q_proj"] == ((*lead, "embed", None), (*lead, None, "heads", "head_dim"))
    assert seen["o_proj"] == ((*lead, "heads", "head_dim", None), (*lead, None, "embed"))
    assert seen["down_proj"] == ((*lead, "mlp", None), (*lead, None, "embed"))
    params = nnx.to_pure_dict(nnx.state(model))
    assert has_adapters(params)
    keys = {tuple(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(
        adapter_params(params))}
    assert all(any(part.endswith("_lora") for part in key) for key in keys) and len(keys) == (3 if scan else 6) * 2


def test_adapters_shard_on_a_mesh_like_their_kernels(tiny_hf_checkpoint):
    from jax_cat.sharding import make_mesh

    mesh = make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
    model = load_hf(tiny_hf_checkpoint("qwen2"), lora=CFG, mesh=mesh)
    q = next(a for n, li, _, a in adapters_of(model) if n == "q_proj")
    assert q.lora_a.get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert q.lora_b.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None)


def test_bad_lora_config_is_refused():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(rank=2, targets=("qkv_proj",))
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(rank=2, dropout=1.0)
