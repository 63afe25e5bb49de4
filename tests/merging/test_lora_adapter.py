"""In-memory LoRA adapters (`merging.LoRAAdapter`) as task vectors, against peft's `merge_and_unload` (the dense
reference): from a peft model's state dict (torch tensors), from a jax_cat LoRA model (`lora_weights`), their task
vector, in-memory merges (row blocks too), streamed merges and the DoTS analysis equal those of the dense
checkpoints (1e-6)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from merging import DotsMerge, LoRAAdapter, TaskArithmeticMerge, analyze_checkpoints, merge_checkpoints, task_vector
from merging.checkpoint import CheckpointMismatchError
from merging.methods import merge
from tests.merging.conftest import load_state
from tests.merging.test_adapters import adapters  # noqa: F401 - the peft-written adapters and their dense merges

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _as_jnp(state):
    return {k: jnp.asarray(v) for k, v in state.items()}


@pytest.fixture(scope="module")
def in_memory(adapters):  # noqa: F811
    """The two peft adapters as in-memory adapters, from the state dict of the peft model holding them."""
    out = {}
    for name in ("sft", "rl"):
        base = transformers.AutoModelForCausalLM.from_pretrained(adapters["base"], dtype=torch.float32)
        model = peft.PeftModel.from_pretrained(base, adapters[f"{name}_adapter"])
        config = model.peft_config["default"]
        out[name] = LoRAAdapter.from_state_dict(peft.get_peft_model_state_dict(model), alpha=config.lora_alpha,
                                                rank=config.r)
    return out


def test_in_memory_task_vector_equals_the_dense_one(adapters, in_memory):  # noqa: F811
    base = _as_jnp(load_state(adapters["base"]))
    for name in ("sft", "rl"):
        ref = task_vector(_as_jnp(load_state(adapters[f"{name}_dense"])), base)
        tau = task_vector(in_memory[name], base)
        folder = task_vector(LoRAAdapter.from_folder(adapters[f"{name}_adapter"]), base)
        assert sorted(tau) == sorted(ref)
        for k in tau:
            np.testing.assert_allclose(np.asarray(tau[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)
            np.testing.assert_array_equal(np.asarray(folder[k]), np.asarray(tau[k]))


@pytest.mark.parametrize("block_bytes", [None, 256])
@pytest.mark.parametrize("spec", [TaskArithmeticMerge(coefficients=(0.7, 1.3)),
                                  DotsMerge(coefficients=(0.5, 1.0), topk_scope="global")], ids=lambda s: s.name)
def test_in_memory_merge_equals_merge_of_dense_models(adapters, in_memory, spec, block_bytes):  # noqa: F811
    base = _as_jnp(load_state(adapters["base"]))
    dense = [_as_jnp(load_state(adapters[f"{n}_dense"])) for n in ("sft", "rl")]
    ours = merge(base, [in_memory["sft"], in_memory["rl"]], spec, block_bytes=block_bytes)
    mixed = merge(base, [in_memory["sft"], dense[1]], spec)  # an adapter next to a full fine-tune
    ref = merge(base, dense, spec)
    for k in ref:
        np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)
        np.testing.assert_allclose(np.asarray(mixed[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)


def test_streamed_merge_and_analysis_take_in_memory_adapters(adapters, in_memory, tmp_path):  # noqa: F811
    spec = DotsMerge(coefficients=(0.5, 1.0))
    ours = merge_checkpoints(adapters["base"], [in_memory["sft"], adapters["rl_adapter"]], spec, tmp_path / "a",
                             progress=False, block_size=4096)
    ref = merge_checkpoints(adapters["base"], [adapters["sft_dense"], adapters["rl_dense"]], spec, tmp_path / "d",
                            progress=False)
    a, d = load_state(ours), load_state(ref)
    for k in d:
        np.testing.assert_allclose(a[k], d[k], atol=1e-6, err_msg=k)
    t = analyze_checkpoints(adapters["base"], in_memory["sft"], in_memory["rl"], progress=False).total()
    r = analyze_checkpoints(adapters["base"], adapters["sft_dense"], adapters["rl_dense"], progress=False).total()
    assert t.n == r.n and t.b_nonzero == r.b_nonzero
    np.testing.assert_allclose([t.a2, t.b2, t.ab], [r.a2, r.b2, r.ab], rtol=1e-5)


def test_a_jax_cat_lora_model_is_an_in_memory_adapter(adapters, tmp_path):  # noqa: F811
    """Our model's adapters (`lora_weights`) against peft's merge of the folder `save_peft` wrote for them."""
    from flax import nnx

    from jax_cat.models import load_hf
    from jax_cat.models.lora import LoRAConfig
    from jax_cat.models.peft import lora_weights, save_peft

    model = load_hf(adapters["base"], lora=LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj")))
    rng = np.random.default_rng(0)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if v.get_value().shape[-1] != 4:  # B [r, *out]
            v.set_value(jnp.asarray(0.05 * rng.standard_normal(v.shape), jnp.float32))
    save_peft(model, tmp_path / "ours", base_model=str(adapters["base"]))
    torch_base = transformers.AutoModelForCausalLM.from_pretrained(adapters["base"], dtype=torch.float32)
    dense = peft.PeftModel.from_pretrained(torch_base, tmp_path / "ours").merge_and_unload()
    dense_state = {k: jnp.asarray(v.detach().numpy()) for k, v in dense.state_dict().items()}
    base = _as_jnp(load_state(adapters["base"]))
    dense_state = {k: dense_state[k] for k in base}
    adapter = LoRAAdapter(lora_weights(model), model.lora.scale)
    ref = task_vector(dense_state, base)
    tau = task_vector(adapter, base)
    changed = [k for k in tau if float(jnp.max(jnp.abs(tau[k]))) > 0]
    assert len(changed) == 3 * 2  # two layers x three targets
    for k in tau:
        np.testing.assert_allclose(np.asarray(tau[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)
    spec = DotsMerge(coefficients=(0.8,))
    ours, want = merge(base, [adapter], spec), merge(base, [dense_state], spec)
    for k in want:
        np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(want[k]), atol=1e-6, err_msg=k)


def test_in_memory_adapters_that_do_not_fit_are_refused_by_name(adapters, in_memory):  # noqa: F811
    base = _as_jnp(load_state(adapters["base"]))
    name = "model.layers.0.self_attn.q_proj.weight"
    a, b = in_memory["sft"].weights[name]
    wrong = LoRAAdapter({name: (a[:, :-1], b)}, 1.0)
    with pytest.raises(CheckpointMismatchError, match="q_proj"):
        task_vector(wrong, base)
    with pytest.raises(CheckpointMismatchError, match="not_there"):
        merge(base, [LoRAAdapter({"not_there.weight": (a, b)}, 1.0)], TaskArithmeticMerge(coefficients=(1.0,)))
    with pytest.raises(ValueError, match="q_proj"):
        LoRAAdapter({name: (a, b[:, :-1])}, 1.0)
    with pytest.raises(ValueError, match="only one of"):
        LoRAAdapter.from_state_dict({"base_model.model.x.lora_A.weight": a}, alpha=8, rank=4)
