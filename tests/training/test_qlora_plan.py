"""The QLoRA recipe (configs/mistral-7b_math_lora_maj4.toml) and the memory plan of a quantized base:

- the recipe holds the authors' setting (nf4 base, r 16 / alpha 32 on q_proj + v_proj, maj@4, M = 4 rollouts);
- the plan's parameter bytes of a quantized base equal a hand count of nf4 / int8 storage at the full Mistral-7B
  shape (abstract shapes, nothing compiled): the saving `--plan` reports;
- `--plan` of the recipe runs from a config.json alone (no weights) at the Mistral-7B width cut to 2 layers, and
  reports a fit on one 80 GB device (the full-depth figures: docs/lora.md, benchmarks/qlora_plan.py).
"""
from __future__ import annotations

import json
import math

import pytest

from jax_cat import train
from jax_cat.training import load_config

RECIPE = "mistral-7b_math_lora_maj4"
MISTRAL = dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
               intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=32768,
               sliding_window=None, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, hidden_act="silu",
               torch_dtype="bfloat16")


def _config_folder(tmp_path, **overrides):
    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**MISTRAL, **overrides}))
    return folder


def test_the_recipe_holds_the_authors_setting():
    cfg = load_config(RECIPE)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.0)
    assert cfg.lora.targets == ("q_proj", "v_proj") and cfg.lora.quantize == "nf4"
    assert cfg.strategy == "maj@4" and cfg.rollout.group_size == 4 and cfg.train.method == "grpo"
    assert (cfg.data.batch_size, cfg.data.max_prompt_len, cfg.rollout.max_new_tokens) == (4, 256, 512)
    assert (cfg.optimizer.learning_rate, cfg.optimizer.weight_decay, cfg.optimizer.warmup_steps) == (1e-6, 0.01, 60)
    assert cfg.model.path == "mistralai/Mistral-7B-Instruct-v0.2"


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_base_bytes_equal_a_hand_count_at_the_mistral_shape(tmp_path, mode):
    import jax

    from jax_cat.models.config import ModelConfig
    from jax_cat.sharding import make_mesh
    from jax_cat.training import plan, steps

    config = ModelConfig.from_hf(MISTRAL)
    d, f, h, kv, hd, n, v = 4096, 14336, 32, 8, 128, 32, 32000
    cfg = load_config(RECIPE, {"lora.quantize": mode})
    mesh = make_mesh(data=1, devices=jax.devices()[:1])

    def param_bytes(c):
        model = plan.abstract_model(c, config)
        built_tx = steps.make_optimizer(c.optimizer, 10)
        return plan.device_bytes(steps.abstract_state(built_tx, model, steps.state_shardings_for(built_tx, model,
                                                                                                 mesh)).params)

    shapes = [(d, h * hd), (d, kv * hd), (d, kv * hd), (h * hd, d), (d, f), (d, f), (f, d)]  # (in, out) of 7 kernels
    kernels = n * sum(i * o for i, o in shapes)
    if mode == "nf4":
        stored = n * sum(i * o // 2 + 4 * (i * o // 64) for i, o in shapes)
    else:
        stored = n * sum(i * o + 4 * o for i, o in shapes)
    saved = param_bytes(load_config(RECIPE, {"lora.quantize": "none"})) - param_bytes(cfg)
    assert saved == 2 * kernels - stored  # bf16 kernels replaced by codes + float32 absmax / scales
    adapters = n * 16 * ((d + h * hd) + (d + kv * hd)) * 4  # q and v adapters, float32
    rest = (2 * v * d + (2 * n + 1) * d) * 2  # embeddings, lm_head, norms in bf16
    assert param_bytes(cfg) == stored + adapters + rest
    assert math.isclose(stored / kernels, 0.5625 if mode == "nf4" else 1.0, rel_tol=1e-3)


def test_plan_of_the_recipe_runs_without_weights_and_fits_one_80gb_device(tmp_path, monkeypatch, capsys):
    import jax_cat.models.hf as hf

    def refuse(*args, **kwargs):
        raise AssertionError("--plan read weights")

    monkeypatch.setattr(hf, "load_hf", refuse)
    folder = _config_folder(tmp_path, num_hidden_layers=2)  # full width, 2 of the 32 layers: a fast compile
    status = train.main(["--config", RECIPE, "--set", f"model.path={folder}", "--plan", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    for row in ("memory plan of mistral-7b_math_lora_maj4: mistral", "grpo", "training step", "rollouts (sampler)",
                "4 prompts x 4 samples, 256 prompt + 512 new tokens", "80 GiB yes"):
        assert row in out, (row, out)
