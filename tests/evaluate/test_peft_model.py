"""`python -m jax_cat.evaluate --model <PEFT adapter folder>`: the base from adapter_config.json's
base_model_name_or_path (or --base), the adapters on it; logits equal peft.PeftModel.from_pretrained on the
transformers base (1e-4); a base that cannot be found is one clear line naming where it came from and --base."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.evaluate.cli import main
from jax_cat.evaluate.loading import load_model_and_tokenizer
from jax_cat.models import load_hf
from jax_cat.models.lora import LoRAConfig, adapters_of
from jax_cat.models.peft import save_peft
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def adapter(tiny_hf_checkpoint, tmp_path_factory):
    """(base checkpoint, PEFT folder of random adapters on it, written by save_peft with the base's tokenizer)."""
    base = tiny_hf_checkpoint("qwen2")
    model = load_hf(base, lora=LoRAConfig(rank=4, alpha=8.0))
    rng = np.random.default_rng(0)
    for _, _, _, a in adapters_of(model):
        a.lora_b.set_value(jnp.asarray(0.05 * rng.standard_normal(a.lora_b.shape), jnp.float32))
    folder = save_peft(model, tmp_path_factory.mktemp("eval-peft") / "adapter", base_model=base, tokenizer=base)
    return base, folder


def _with_base(src, dst, base_name):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=base_name)))
    return dst


def test_adapter_folder_evaluates_with_peft_logits(adapter, tmp_path):
    base, folder = adapter
    model, tokenizer, path = load_model_and_tokenizer(folder)
    assert path == folder and model.lora is not None and tokenizer.vocab_size > 0
    torch_base = transformers.AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
    ref_model = peft.PeftModel.from_pretrained(torch_base, str(folder)).eval()
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    plain = np.asarray(load_hf(base)(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs_diff_on_real_tokens(ours, plain, mask) > 1e-2  # the adapters are applied
    assert max_abs_diff_on_real_tokens(ours, torch_logits(ref_model, ids, mask), mask) <= 1e-4
    moved = _with_base(folder, tmp_path / "moved", "/no/such/base")  # --base overrides the recorded base
    again, _, _ = load_model_and_tokenizer(moved, base=base)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))), ours)
    rc = main(["--model", str(folder), "--limit", "2", "--n", "2", "--k", "1,2", "--max-new-tokens", "3",
               "--num-resamples", "10", "--out", str(tmp_path / "out")])
    assert rc == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["model"] == str(folder)


def test_a_base_that_cannot_be_found_is_one_clear_line(adapter, tmp_path, capsys):
    _, folder = adapter
    moved = _with_base(folder, tmp_path / "moved", str(tmp_path / "gone"))
    assert main(["--model", str(moved), "--n", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "base cannot be found" in err and "base_model_name_or_path" in err and "--base" in err, err
    assert main(["--model", str(moved), "--base", str(tmp_path / "gone2"), "--n", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--base" in err and "gone2" in err, err
    bare = _with_base(folder, tmp_path / "bare", None)
    assert main(["--model", str(bare), "--n", "2"]) == 2
    assert "without base_model_name_or_path" in capsys.readouterr().err
    assert main(["--model", "tiny", "--base", str(folder), "--n", "2"]) == 2
    assert "only for a LoRA adapter folder" in capsys.readouterr().err
