"""QLoRA's quantized base against references, not against our own rule:

- dequantize(quantize(W)) equals a plain-numpy quantizer written here from the definitions (QLoRA paper: NormalFloat
  codebook from N(0, 1) quantiles, blockwise absmax over 64 consecutive entries of the [out, in] weight, nearest
  code, two codes a byte with the even entry high; LLM.int8(): per-output-row absmax / 127), and bitsandbytes'
  own `quantize_4bit` / `int8_vectorwise_quant` when bitsandbytes is importable (it is not in the project's venv);
- the quantized model's logits equal transformers' logits of the same checkpoint whose projection weights were
  replaced by the numpy reference's dequantized weights (1e-4), for per-layer and scanned layers;
- the quantized model stays within the documented tolerance of the float32 base (docs/lora.md);
- codes and scales carry the kernels' logical axes and shard on a mesh like them; the adapters sit on top.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import CausalLM, load_hf
from jax_cat.models.lora import LoRAConfig, adapters_of
from jax_cat.models.quant import (
    NF4_CODE, QuantizedKernel, dequantize_model, quantize_kernel, quantize_model,
)
from jax_cat.models.tiny import tiny_model_config
from jax_cat.sharding import logical_axes, make_mesh
from tests.models._reference import left_padded_batch, max_abs_diff_on_real_tokens, torch_logits

# The NF4 values as published (QLoRA, appendix E), typed here independently of jax_cat.models.quant.
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------ numpy references
def nf4_codebook_from_paper() -> np.ndarray:
    """NormalFloat-4: 8 positive and 7 negative N(0, 1) quantiles (outer probability 0.9677, asymmetric so that 0 is
    exact), plus 0, scaled into [-1, 1] (the construction the paper and bitsandbytes describe)."""
    from scipy.stats import norm

    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([pos, [0.0], neg]))
    return values / values.max()


def ref_nf4(w_hf: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed uint8 [out, in/2], absmax [out * in / 64], dequantized [out, in]) of an HF [out, in] weight."""
    flat = w_hf.astype(np.float32).reshape(-1, 64)
    absmax = np.abs(flat).max(axis=1)
    x = flat / np.where(absmax > 0, absmax, 1)[:, None]
    index = np.argmin(np.abs(x[..., None] - code[None, None, :]), axis=-1)  # nearest; a tie takes the lower value
    deq = (code[index] * absmax[:, None]).astype(np.float32).reshape(w_hf.shape)
    pairs = index.reshape(-1, 2).astype(np.uint8)
    packed = ((pairs[:, 0] << 4) | pairs[:, 1]).reshape(w_hf.shape[0], -1)
    return packed, absmax, deq


def ref_int8(w_hf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [out, in], dequantized [out, in]): one absmax per output row, scale absmax / 127."""
    w = w_hf.astype(np.float32)
    scale = np.abs(w).max(axis=1, keepdims=True) / np.float32(127)
    codes = np.clip(np.rint(w / np.where(scale > 0, scale, 1)), -127, 127).astype(np.int8)
    return codes, (codes.astype(np.float32) * scale).astype(np.float32)


def _kernel(shape, axes, seed=0, scale=0.1):
    value = jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _to_hf(kernel: np.ndarray, n_in: int) -> np.ndarray:
    """[*in, *out] (our layout) -> HF's [out, in] with the input dims flattened in order."""
    n = int(np.prod(kernel.shape[:n_in]))
    return kernel.reshape(n, -1).T


# ------------------------------------------------------------------------------------------------ (a) the rule
def test_codebook_is_the_published_one_and_the_paper_construction():
    np.testing.assert_array_equal(NF4_CODE, np.asarray(PUBLISHED_NF4, np.float32))
    np.testing.assert_allclose(nf4_codebook_from_paper(), PUBLISHED_NF4, atol=2e-7)


@pytest.mark.parametrize("shape,axes,n_in", [
    ((128, 4, 16), ("embed", "heads", "head_dim"), 1),  # q_proj
    ((4, 16, 128), ("heads", "head_dim", "embed"), 2),  # o_proj: blocks run across heads (head_dim 16 < 64)
    ((256, 192), ("mlp", "embed"), 1),  # down_proj
])
def test_nf4_equals_the_numpy_reference_bit_for_bit(shape, axes, n_in):
    param = _kernel(shape, axes)
    param.set_value(param.get_value().at[(0,) * len(shape)].set(0.0))
    kernel = quantize_kernel(param, "nf4", n_in=n_in, lead=0)
    w_hf = _to_hf(np.asarray(param.get_value()), n_in)
    packed, absmax, deq = ref_nf4(w_hf, np.asarray(PUBLISHED_NF4, np.float32))
    ours = np.asarray(kernel.dequantize())
    np.testing.assert_array_equal(_to_hf(ours, n_in), deq)
    np.testing.assert_array_equal(np.asarray(kernel.codes.get_value()).reshape(-1, w_hf.shape[0]).T, packed)
    assert kernel.codes.get_value().dtype == jnp.uint8 and kernel.codes.get_value().size == w_hf.size // 2
    np.testing.assert_array_equal(np.asarray(kernel.scale.get_value()).reshape(-1, w_hf.shape[0]).T.ravel(), absmax)
    assert kernel.shape == shape and kernel.axes == axes
    assert np.asarray(kernel[...]).dtype == np.float32


def test_int8_equals_the_numpy_reference():
    for shape, axes, n_in in (((128, 4, 16), ("embed", "heads", "head_dim"), 1),
                              ((4, 16, 128), ("heads", "head_dim", "embed"), 2)):
        param = _kernel(shape, axes, seed=1)
        kernel = quantize_kernel(param, "int8", n_in=n_in, lead=0)
        codes, deq = ref_int8(_to_hf(np.asarray(param.get_value()), n_in))
        np.testing.assert_array_equal(_to_hf(np.asarray(kernel.codes.get_value()), n_in), codes)
        np.testing.assert_allclose(_to_hf(np.asarray(kernel.dequantize()), n_in), deq, rtol=0, atol=1e-7)
        assert kernel.shape == shape and kernel.axes == axes


def test_nf4_and_int8_against_bitsandbytes():
    """bitsandbytes' own CPU quantizers (skipped where it is not installed, as in the project's venv)."""
    torch = pytest.importorskip("torch")
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w_hf = (0.1 * np.random.default_rng(2).standard_normal((96, 256))).astype(np.float32)
    kernel = quantize_kernel(_kernel((256, 96), ("embed", "mlp")).replace(jnp.asarray(w_hf.T)), "nf4", n_in=1,
                             lead=0)
    packed, state = bnb_f.quantize_4bit(torch.from_numpy(w_hf), blocksize=64, quant_type="nf4")
    np.testing.assert_array_equal(np.asarray(kernel.codes.get_value()).T.ravel(), packed.numpy().ravel())
    np.testing.assert_array_equal(np.asarray(kernel.scale.get_value()).T.ravel(), state.absmax.numpy())
    np.testing.assert_array_equal(np.asarray(kernel.dequantize()).T,
                                  bnb_f.dequantize_4bit(packed, state).numpy())
    kernel8 = quantize_kernel(_kernel((256, 96), ("embed", "mlp")).replace(jnp.asarray(w_hf.T)), "int8", n_in=1,
                              lead=0)
    codes, stats, _ = bnb_f.int8_vectorwise_quant(torch.from_numpy(w_hf))
    same = np.asarray(kernel8.codes.get_value()).T == codes.numpy()
    assert same.mean() > 0.999 and np.abs(np.asarray(kernel8.codes.get_value()).T.astype(int) - codes.numpy()).max() <= 1
    np.testing.assert_allclose(np.asarray(kernel8.scale.get_value()).ravel() * 127, stats.numpy(), rtol=1e-6)


def test_nf4_refuses_an_input_size_off_its_blocks_naming_the_kernel():
    with pytest.raises(ValueError, match="layers.0.q_proj: nf4 quantizes blocks of 64"):
        quantize_kernel(_kernel((48, 2, 8), ("embed", "heads", "head_dim")), "nf4", n_in=1, lead=0,
                        name="layers.0.q_proj")


# ------------------------------------------------------------------------------------------------ (b) the model
def _hf_with_reference_weights(path, mode):
    """transformers' model of `path` with each projection weight W replaced by the numpy reference's
    dequantize(quantize(W))."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    code = np.asarray(PUBLISHED_NF4, np.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in PROJECTIONS:
                w = module.weight.detach().numpy()
                deq = ref_nf4(w, code)[2] if mode == "nf4" else ref_int8(w)[1]
                module.weight.copy_(torch.from_numpy(deq))
    return model


@pytest.mark.parametrize("model_type,scan", [("llama", False), ("qwen2", True)])
@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_model_logits_equal_transformers_on_dequantized_weights(tiny_hf_checkpoint, model_type, scan,
                                                                          mode):
    pytest.importorskip("transformers")
    path = tiny_hf_checkpoint(model_type)
    model = load_hf(path, quantize=mode, scan_layers=scan)
    assert model.quantization == mode
    ids, mask = left_padded_batch(model.config.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(_hf_with_reference_weights(path, mode), ids, mask)
    assert max_abs_diff_on_real_tokens(ours, ref, mask) <= 1e-4
    plain = np.asarray(load_hf(path, scan_layers=scan)(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs_diff_on_real_tokens(ours, plain, mask) > 1e-4  # the quantization is really applied


# Tolerance of the quantized base vs the float32 base on the tests' tiny random checkpoint (docs/lora.md; measured by
# benchmarks/quant_logits.py: nf4 max |logit diff| 1.16 and mean KL 0.026 against logits of std 0.83; int8 0.09 and
# 1.1e-4): (max |logit difference|, mean KL(base || quantized)) over real tokens.
TOLERANCE = {"nf4": (1.5, 0.05), "int8": (0.15, 1e-3)}


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_quantized_base_within_the_documented_tolerance_of_the_float32_base(tiny_hf_checkpoint, mode):
    path = tiny_hf_checkpoint("llama")
    ids, mask = left_padded_batch(128)
    plain = np.asarray(load_hf(path)(jnp.asarray(ids), jnp.asarray(mask)))
    quant = np.asarray(load_hf(path, quantize=mode)(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    lp, lq = jax.nn.log_softmax(plain[real]), jax.nn.log_softmax(quant[real])
    kl = float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)))
    max_diff, max_kl = TOLERANCE[mode]
    assert max_abs_diff_on_real_tokens(quant, plain, mask) <= max_diff and kl <= max_kl


def test_cached_decoding_and_merge_of_a_quantized_adapted_model():
    """Decoding runs the dequantized base too; `merge_lora` of a quantized model is dense (dequantized W + tau)."""
    from jax_cat.models.lora import merge_lora

    model = quantize_model(CausalLM(tiny_model_config(), rngs=nnx.Rngs(0), lora=LoRAConfig(rank=4)), "nf4")
    rng = np.random.default_rng(0)
    for _, _, _, adapter in adapters_of(model):
        adapter.lora_b.set_value(jnp.asarray(0.05 * rng.standard_normal(adapter.lora_b.shape), jnp.float32))
    ids = jnp.asarray(rng.integers(3, 100, (2, 7)), jnp.int32)
    full = np.asarray(model(ids))
    cache = model.init_cache(2, 8)
    logits, _ = model.forward_cached(ids, jnp.broadcast_to(jnp.arange(7), (2, 7)), cache, 0,
                                     jnp.ones((2, 8), bool).at[:, 7:].set(False))
    np.testing.assert_allclose(np.asarray(logits), full, atol=1e-5)
    merged = merge_lora(model)
    assert merged.lora is None and not any(isinstance(m, QuantizedKernel) for _, m in nnx.iter_graph(merged))
    np.testing.assert_allclose(np.asarray(merged(ids)), full, atol=1e-5)
    dense = dequantize_model(nnx.clone(model))
    np.testing.assert_allclose(np.asarray(dense(ids)), full, atol=1e-6)


# ------------------------------------------------------------------------------------------------ sharding
def test_codes_and_scales_carry_the_kernel_axes_and_shard_like_them():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = load_hf_placed(mesh)
    q = model.layers.self_attn.q_proj
    assert isinstance(q, QuantizedKernel)
    assert logical_axes(q.codes) == ("layers", "embed", "heads", "head_dim")
    assert q.codes.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.scale.get_value().sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor", None)  # 1 block
    o = model.layers.self_attn.o_proj  # (heads, head_dim) flattened: the axis keeps "heads"
    assert logical_axes(o.codes) == ("layers", "heads", "embed")
    assert o.codes.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    lora = model.layers.self_attn.q_proj_lora  # adapters added after quantizing: placed from the codes' mesh
    assert lora.lora_a.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, (4, 6)), jnp.int32)
    one = quantize_model(CausalLM(tiny_model_config(), rngs=nnx.Rngs(0), scan_layers=True), "nf4")
    with jax.set_mesh(mesh):
        sharded = np.asarray(model(ids))
    np.testing.assert_allclose(sharded, np.asarray(one(ids)), atol=1e-5)


def load_hf_placed(mesh):
    """The tiny scan model quantized on `mesh` the way load_hf(mesh=, quantize=, lora=) leaves it."""
    from jax_cat.models.lora import add_lora
    from jax_cat.sharding import shard_model

    model = shard_model(CausalLM(tiny_model_config(), rngs=nnx.Rngs(0), scan_layers=True), mesh)
    quantize_model(model, "nf4")
    return add_lora(model, LoRAConfig(rank=4))


def test_load_hf_quantizes_on_a_mesh_and_adds_adapters(tiny_hf_checkpoint):
    path = tiny_hf_checkpoint("qwen2")
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    model = load_hf(path, mesh=mesh, quantize="nf4", scan_layers=True, lora=LoRAConfig(rank=4))
    q = model.layers.self_attn.q_proj
    assert isinstance(q, QuantizedKernel) and q.codes.get_value().sharding.spec[1] == "fsdp"
    assert model.layers.self_attn.v_proj_lora.lora_b.get_value().sharding.mesh == mesh
    ids, mask = left_padded_batch(model.config.vocab_size)
    local = load_hf(path, quantize="nf4", scan_layers=True, lora=LoRAConfig(rank=4))
    with jax.set_mesh(mesh):
        got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(got, np.asarray(local(jnp.asarray(ids), jnp.asarray(mask))), atol=1e-5)
