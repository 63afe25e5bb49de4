"""PEFT adapter export against peft itself: `peft.PeftModel.from_pretrained` on the transformers base loads our
`save_peft` folder and gives our LoRA model's logits; the merged export (`save_hf` of a LoRA model) loads in
transformers with the same logits; `load_peft` reads the folder back; a malformed folder is refused by name."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.models import load_hf, save_hf
from jax_cat.models.lora import LoRAConfig, adapters_of
from jax_cat.models.peft import PeftFormatError, iter_peft_deltas, load_peft, read_peft_config, save_peft
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CFG = LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"))


def _randomise_b(model, seed=0):
    rng = np.random.default_rng(seed)
    for _, _, _, adapter in adapters_of(model):
        b = adapter.lora_b
        b.set_value(jnp.asarray(0.05 * rng.standard_normal(b.shape), b.dtype))


@pytest.fixture(scope="module")
def adapted(tiny_hf_checkpoint, tmp_path_factory):
    """(base checkpoint, our adapted model, its PEFT folder) for qwen2 (q/k/v biases: the adapters go next to them)."""
    path = tiny_hf_checkpoint("qwen2")
    model = load_hf(path, lora=CFG, scan_layers=True)  # stacked adapters: the export unstacks them
    _randomise_b(model)
    folder = save_peft(model, tmp_path_factory.mktemp("peft") / "adapter", base_model=path)
    return path, model, folder


def test_peft_loads_our_adapter_with_our_logits(adapted):
    path, model, folder = adapted
    names = json.loads((folder / "adapter_config.json").read_text())
    assert names["r"] == 4 and names["lora_alpha"] == 8.0 and names["peft_type"] == "LORA"
    base = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    keys = [k for k in peft_model.state_dict() if "lora_A" in k]
    assert len(keys) == 2 * 7  # every target of both layers was loaded
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(peft_model, ids, mask)
    plain = np.asarray(load_hf(path)(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs_diff_on_real_tokens(ours, plain, mask) > 1e-2  # the adapter matters
    assert max_abs_diff_on_real_tokens(ours, ref, mask) <= 1e-4


def test_merged_export_loads_in_transformers_with_our_logits(adapted, tmp_path):
    _, model, _ = adapted
    out = save_hf(model, tmp_path / "merged")
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs_diff_on_real_tokens(ours, torch_logits(torch_model, ids, mask), mask) <= 1e-4


def test_load_peft_round_trip_and_low_rank_deltas(adapted):
    path, model, folder = adapted
    again = load_peft(load_hf(path), folder)
    assert again.lora == read_peft_config(folder)
    by_folder = load_hf(folder)  # an adapter folder loads its base_model_name_or_path with the adapters on it
    ids, mask = left_padded_batch(model.config.vocab_size)
    logits = np.asarray(again(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(logits, np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), atol=1e-5)  # vs scan
    np.testing.assert_array_equal(np.asarray(by_folder(jnp.asarray(ids), jnp.asarray(mask))), logits)
    deltas = dict(iter_peft_deltas(folder))
    assert len(deltas) == 14 and all(np.linalg.matrix_rank(d) <= 4 for d in deltas.values())


def test_malformed_adapter_folders_are_refused_by_name(adapted, tmp_path):
    _, _, folder = adapted
    with pytest.raises(PeftFormatError, match="adapter_config.json"):
        read_peft_config(tmp_path)
    bad = tmp_path / "dora"
    bad.mkdir()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(PeftFormatError, match="use_dora"):
        read_peft_config(bad)
    (bad / "adapter_config.json").write_text(json.dumps(dict(cfg, target_modules=["lm_head"])))
    with pytest.raises(PeftFormatError, match="lm_head"):
        read_peft_config(bad)
