"""LoRA adapter folders as task vectors, against peft itself: adapters written by `peft` (random A and B) and the
same models merged by peft's `merge_and_unload` (the dense reference). The adapter's task vector equals the dense
one (1e-6), streamed merges and the DoTS analysis over adapter folders equal those over the merged checkpoints,
row-block streaming included."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from merging import DotsMerge, TaskArithmeticMerge, analyze_checkpoints, merge_checkpoints, task_vector
from merging.adapters import AdapterCheckpoint, AdapterFormatError, open_checkpoint
from merging.checkpoint import Checkpoint, CheckpointMismatchError
from tests.merging.conftest import load_state

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TARGETS = {"sft": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           "rl": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def adapters(family_f32, tmp_path_factory):
    """{"base", "sft_adapter", "rl_adapter", "sft_dense", "rl_dense"}: peft-written adapters on the f32 family's base
    and peft's own merges of them (full checkpoints)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {"base": family_f32["base"]}
    for i, (name, targets) in enumerate(TARGETS.items()):
        torch.manual_seed(10 + i)
        base = transformers.AutoModelForCausalLM.from_pretrained(family_f32["base"], dtype=torch.float32)
        config = peft.LoraConfig(r=4, lora_alpha=8 + 8 * i, target_modules=targets, init_lora_weights=False,
                                 task_type="CAUSAL_LM")
        model = peft.get_peft_model(base, config)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.mul_(0.5)
        model.save_pretrained(root / f"{name}_adapter")
        model.merge_and_unload().save_pretrained(root / f"{name}_dense")
        out[f"{name}_adapter"], out[f"{name}_dense"] = root / f"{name}_adapter", root / f"{name}_dense"
    return out


def test_adapter_task_vector_equals_the_dense_task_vector(adapters):
    base = {k: jnp.asarray(v) for k, v in load_state(adapters["base"]).items()}
    dense = {k: jnp.asarray(v) for k, v in load_state(adapters["rl_dense"]).items()}
    ref = task_vector(dense, base)
    tau = task_vector(str(adapters["rl_adapter"]), base)
    assert sorted(tau) == sorted(ref)
    changed = [k for k in tau if float(jnp.max(jnp.abs(tau[k]))) > 0]
    assert len(changed) == 3 * 2 and all(any(t in k for t in TARGETS["rl"]) for k in changed)
    for k in tau:
        np.testing.assert_allclose(np.asarray(tau[k]), np.asarray(ref[k]), atol=1e-6, err_msg=k)
    only_v = task_vector(str(adapters["rl_adapter"]), base, filter=r"v_proj")
    assert sum(float(jnp.max(jnp.abs(v))) > 0 for v in only_v.values()) == 2


@pytest.mark.parametrize("spec", [TaskArithmeticMerge(coefficients=(0.7, 1.3)),
                                  DotsMerge(coefficients=(0.5, 1.0), topk_scope="global")], ids=lambda s: s.name)
def test_streamed_merge_of_adapters_equals_merge_of_dense_checkpoints(adapters, tmp_path, spec):
    ours = merge_checkpoints(adapters["base"], [adapters["sft_adapter"], adapters["rl_adapter"]], spec,
                             tmp_path / "a", progress=False, block_size=4096)  # small tensors go in row blocks
    ref = merge_checkpoints(adapters["base"], [adapters["sft_dense"], adapters["rl_dense"]], spec, tmp_path / "d",
                            progress=False)
    a, d = load_state(ours), load_state(ref)
    assert sorted(a) == sorted(d)
    for k in a:
        np.testing.assert_allclose(a[k], d[k], atol=1e-6, err_msg=k)


def test_dots_analysis_accepts_adapter_folders(adapters):
    ours = analyze_checkpoints(adapters["base"], adapters["sft_adapter"], adapters["rl_adapter"], progress=False)
    ref = analyze_checkpoints(adapters["base"], adapters["sft_dense"], adapters["rl_dense"], progress=False)
    t, r = ours.total(), ref.total()
    assert t.n == r.n and t.b_nonzero == r.b_nonzero
    np.testing.assert_allclose([t.a2, t.b2, t.ab], [r.a2, r.b2, r.ab], rtol=1e-5)
    assert abs(t.conflict - r.conflict) <= 2  # entries within float round-off of zero may flip
    assert set(ours.by_module()) == set(ref.by_module())


def test_adapter_checkpoint_reads_rows_like_whole_tensors(adapters):
    ckpt = open_checkpoint(adapters["sft_adapter"], Checkpoint(adapters["base"]))
    assert isinstance(ckpt, AdapterCheckpoint) and ckpt.names == Checkpoint(adapters["base"]).names
    name = "model.layers.1.mlp.down_proj.weight"
    whole = ckpt.get(name)
    np.testing.assert_array_equal(np.concatenate([ckpt.get_rows(name, 0, 5), ckpt.get_rows(name, 5, 10 ** 6)]),
                                  whole)


def test_adapters_that_do_not_fit_are_refused_by_name(adapters, tiny_hf_checkpoint, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="proj"):
        AdapterCheckpoint(adapters["sft_adapter"], Checkpoint(tiny_hf_checkpoint("qwen2")))  # another model's shapes
    with pytest.raises(ValueError, match="needs its base"):
        open_checkpoint(adapters["sft_adapter"])
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "use_dora": true}')
    with pytest.raises(AdapterFormatError, match="use_dora"):
        AdapterCheckpoint(tmp_path, Checkpoint(adapters["base"]))
