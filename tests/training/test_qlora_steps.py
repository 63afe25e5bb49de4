"""QLoRA in the trainer: on a quantized base (nf4 / int8) the SFT and GRPO steps change the adapters only, the
codes and scales come out bitwise equal, and the update equals the LoRA step on the dequantized (dense) base;
checkpoints hold the adapters only and resume exactly onto a re-quantized base; the merged export is the
dequantized base plus the adapters' update, the PEFT export loads back onto a quantized base."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.losses import CATLossConfig, PassAtN
from jax_cat.models import CausalLM, load_hf, save_hf
from jax_cat.models.lora import LoRAConfig, adapter_params, adapters_of, strip_adapters
from jax_cat.models.quant import QuantizedKernel, dequantize_model, quantize_model
from jax_cat.models.tiny import build_tiny_checkpoint, tiny_model_config
from jax_cat.training import run_sft, steps
from jax_cat.training.checkpoint import Checkpointer
from jax_cat.training.config import ConfigError, OptimizerConfig
from tests.training.conftest import one_device, rollout_batch, sft_batch, small_config

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.01, clip_norm=1.0,
                      eps=1e-4)
LORA = LoRAConfig(rank=4, alpha=8.0)
_MODELS: dict = {}


def qlora_model(mode: str = "nf4", random_b: bool = True):
    """The tiny 1-layer model with adapters on every projection and its base quantized (B drawn non-zero)."""
    key = (mode, random_b)
    if key not in _MODELS:
        model = CausalLM(tiny_model_config(num_hidden_layers=1), rngs=nnx.Rngs(0), lora=LORA)
        if random_b:
            rng = np.random.default_rng(1)
            for _, _, _, adapter in adapters_of(model):
                b = adapter.lora_b
                b.set_value(jnp.asarray(0.05 * rng.standard_normal(b.shape), jnp.float32))
        _MODELS[key] = quantize_model(model, mode)
    return _MODELS[key]


def _put(batch, step):
    return jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, step.batch_sharding)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _bitwise_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


def _sft(model, mesh):
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, _ = steps.split_model(model)
    return steps.make_sft_step(graphdef, tx, sh, mesh, strategy=PassAtN(1)), steps.init_state(model, tx, sh)


def test_qlora_sft_step_moves_adapters_only_as_the_lora_step_on_the_dequantized_base():
    model = qlora_model("nf4")
    batch = sft_batch(np.random.default_rng(0))
    step, state = _sft(model, one_device())
    before = jax.device_get(state.params)
    base = strip_adapters(before)
    codes = base["layers"][0]["self_attn"]["q_proj"]
    assert codes["codes"].dtype == np.uint8 and codes["scale"].dtype == np.float32  # stored quantized
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert n_opt == 2 * sum(x.size for x in jax.tree.leaves(adapter_params(before)))  # moments of adapters only
    new_state, metrics = step(state, _put(batch, step))
    after = jax.device_get(new_state.params)
    assert _bitwise_equal(strip_adapters(after), base)  # codes, scales, norms, embeddings: bitwise unchanged
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(adapter_params(before)),
                                                          jax.tree.leaves(adapter_params(after)))]
    assert min(moved) > 1e-4
    # the reference: plain LoRA on a dense model whose kernels are the dequantized ones
    dense = dequantize_model(nnx.clone(model))
    assert not any(isinstance(m, QuantizedKernel) for _, m in nnx.iter_graph(dense))
    ref_step, ref_state = _sft(dense, one_device())
    ref_new, ref_metrics = ref_step(ref_state, _put(batch, ref_step))
    assert abs(float(metrics["loss"]) - float(ref_metrics["loss"])) < 1e-6
    assert _max_diff(adapter_params(after), adapter_params(jax.device_get(ref_new.params))) < 1e-6


def test_qlora_grpo_step_on_an_int8_base_moves_adapters_only():
    model = qlora_model("int8")
    mesh = one_device()
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, _ = steps.split_model(model)
    step = steps.make_grpo_step(graphdef, tx, sh, mesh, strategy=PassAtN(1), loss_cfg=CATLossConfig(),
                                prompt_len=5, micro_batches=2)
    state = steps.init_state(model, tx, sh)
    before = jax.device_get(state.params)
    new_state, metrics = step(state, _put(rollout_batch(np.random.default_rng(0)), step))
    after = jax.device_get(new_state.params)
    assert float(metrics["ok"]) == 1.0
    assert strip_adapters(after)["layers"][0]["mlp"]["down_proj"]["codes"].dtype == np.int8
    assert _bitwise_equal(strip_adapters(after), strip_adapters(before))
    assert _max_diff(adapter_params(after), adapter_params(before)) > 1e-4


def test_qlora_checkpoint_holds_adapters_only_and_resumes_exactly(tokenizer, tmp_path):
    cfg = small_config(**{"train.steps": 4, "train.checkpoint_every": 2, "optimizer.learning_rate": 3e-3})
    model = lambda: qlora_model("nf4", random_b=False)  # noqa: E731
    straight = run_sft(cfg, model=model(), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "a")
    run_sft(cfg.replace(**{"train.stop_after": 2}), model=model(), tokenizer=tokenizer, mesh=one_device(),
            out=tmp_path / "b")
    ckpt = Checkpointer(tmp_path / "b" / "checkpoints" / "sft")
    shapes = ckpt.param_shapes(2)
    assert shapes and all("_lora." in path for path in shapes)  # no codes, no scales in the checkpoint
    ckpt.close()
    resumed = run_sft(cfg, model=model(), tokenizer=tokenizer, mesh=one_device(), out=tmp_path / "b", resume=True)
    assert int(resumed.state.step) == 4
    assert _bitwise_equal(jax.device_get(straight.state.params), jax.device_get(resumed.state.params))
    assert _bitwise_equal(jax.device_get(straight.state.opt_state), jax.device_get(resumed.state.opt_state))


def test_qlora_exports_merged_dequantized_and_as_peft(tmp_path):
    from jax_cat.models.peft import save_peft

    path = build_tiny_checkpoint(tmp_path / "base", seed=2)
    model = load_hf(path, quantize="nf4", lora=LORA)
    rng = np.random.default_rng(3)
    for _, _, _, adapter in adapters_of(model):
        adapter.lora_b.set_value(jnp.asarray(0.05 * rng.standard_normal(adapter.lora_b.shape), jnp.float32))
    ids = jnp.asarray(rng.integers(3, 100, (2, 9)), jnp.int32)
    ours = np.asarray(model(ids))
    merged = load_hf(save_hf(model, tmp_path / "merged"))  # dequantized W + B.A.alpha/r, float32
    np.testing.assert_allclose(np.asarray(merged(ids)), ours, atol=1e-5)
    folder = save_peft(model, tmp_path / "adapter", base_model=path)
    again = load_hf(folder, quantize="nf4")  # the base re-quantized, the adapters on it: the same model
    assert again.quantization == "nf4"
    np.testing.assert_array_equal(np.asarray(again(ids)), ours)


def test_quantize_needs_lora_and_the_runtime_loads_a_quantized_base(tiny_ckpt):
    from jax_cat.training import load_config
    from jax_cat.training.runtime import load_model

    with pytest.raises(ConfigError, match="lora.quantize='nf4' needs lora.rank > 0"):
        load_config(None, {"lora.quantize": "nf4"})
    with pytest.raises(ConfigError, match="lora.quantize"):
        load_config(None, ["load_in_4bit=true"])  # the TRL name points at ours
    with pytest.raises(ConfigError, match="lora.rollout='merged' with lora.quantize='int8'"):
        load_config(None, {"lora.rank": 4, "lora.quantize": "int8", "lora.rollout": "merged"})
    cfg = load_config(None, {"model.path": str(tiny_ckpt), "lora.rank": 4, "lora.quantize": "int8"})
    model, _ = load_model(cfg, one_device())
    assert model.quantization == "int8" and isinstance(model.layers[0].mlp.up_proj, QuantizedKernel)
