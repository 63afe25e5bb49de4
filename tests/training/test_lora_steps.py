"""LoRA in the jitted SFT / GRPO steps: only the adapters move and only they have optimizer state; the update equals
optax AdamW on jax.grad of a hand-written cross-entropy of the DENSIFIED base (W + A.B.alpha/r written into the
kernels, no adapter code in the reference); checkpoints hold the adapters only and resume exactly."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_cat.losses import CATLossConfig, PassAtN
from jax_cat.models import CausalLM
from jax_cat.models.lora import LoRAConfig, adapter_params, strip_adapters
from jax_cat.models.tiny import tiny_model_config
from jax_cat.sharding import make_mesh
from jax_cat.training import run_sft, steps
from jax_cat.training.checkpoint import Checkpointer, flat_paths
from jax_cat.training.config import OptimizerConfig
from tests.training.conftest import one_device, rollout_batch, sft_batch, small_config

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.01, clip_norm=1.0,
                      eps=1e-4)
LORA = LoRAConfig(rank=4, alpha=8.0)
_MODELS: dict = {}


def lora_model(config: LoRAConfig = LORA, random_b: bool = True):
    """The tiny 1-layer model with adapters on every projection; B drawn non-zero so A gets gradients too."""
    key = (config, random_b)
    if key not in _MODELS:
        model = nnx.jit(lambda: CausalLM(tiny_model_config(num_hidden_layers=1), rngs=nnx.Rngs(0), lora=config))()
        if random_b:
            rng = np.random.default_rng(1)
            for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
                if v.get_value().shape[-1] != config.rank:  # B: [r, *out]
                    v.set_value(jnp.asarray(0.05 * rng.standard_normal(v.shape), jnp.float32))
        _MODELS[key] = model
    return _MODELS[key]


def _mesh():
    return make_mesh(data=1, devices=jax.devices()[:1])


def _put(batch, step):
    return jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, step.batch_sharding)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _densified_params(params, alpha_over_r):
    """Base params with each adapted kernel W replaced by W + tensordot(A, B) * alpha/r, adapters removed."""
    def walk(node):
        out = {}
        for k, v in node.items():
            if isinstance(k, str) and k.endswith("_lora"):
                continue
            if isinstance(v, dict):
                out[k] = walk(v)
            elif isinstance(k, str) and f"{k}_lora" in node:
                ad = node[f"{k}_lora"]
                out[k] = v + jnp.tensordot(ad["lora_a"], ad["lora_b"], axes=1) * alpha_over_r
            else:
                out[k] = v
        return out

    return walk(params)


_STEPS: dict = {}


def _sft_setup(model, mesh):
    """(step, fresh state); the jitted step is built once per model (one compile per setting a session)."""
    if id(model) not in _STEPS:
        tx = steps.make_optimizer(OPT, 10)
        sh = steps.state_shardings_for(tx, model, mesh)
        graphdef, _ = steps.split_model(model)
        _STEPS[id(model)] = tx, sh, steps.make_sft_step(graphdef, tx, sh, mesh, strategy=PassAtN(1))
    tx, sh, step = _STEPS[id(model)]
    return step, steps.init_state(model, tx, sh)


def test_sft_step_updates_only_adapters_as_adamw_on_the_densified_base():
    model = lora_model()
    batch = sft_batch(np.random.default_rng(0))
    step, state = _sft_setup(model, _mesh())
    # the optimizer state holds the adapters' moments only
    n_adapter = sum(x.size for x in jax.tree.leaves(adapter_params(state.params)))
    n_all = sum(x.size for x in jax.tree.leaves(state.params))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert n_opt == 2 * n_adapter < n_all
    graphdef, params = steps.split_model(model)
    params = jax.tree.map(jnp.array, params)
    plain = nnx.eval_shape(lambda: CausalLM(tiny_model_config(num_hidden_layers=1), rngs=nnx.Rngs(0)))
    plain_def, _ = nnx.split(plain)

    def ce(adapters):  # independent of the adapter forward: a plain model on densified kernels
        dense = _densified_params(steps.with_trainable(params, adapters), LORA.scale)
        logits = nnx.merge(plain_def, dense)(batch["input_ids"], batch["attention_mask"])[:, :-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["input_ids"][:, 1:])
        mask = batch["loss_mask"][:, 1:]
        return jnp.sum(nll * mask) / jnp.sum(mask)

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-4, weight_decay=0.01))

    @jax.jit
    def reference(adapters):
        loss, grads = jax.value_and_grad(ce)(adapters)
        updates, _ = tx.update(grads, tx.init(adapters), adapters)
        return loss, optax.apply_updates(adapters, updates)

    loss, expected = reference(adapter_params(params))
    new_state, metrics = step(state, _put(batch, step))
    new = jax.device_get(new_state.params)
    assert abs(float(metrics["loss"]) - float(loss)) < 1e-5
    assert _max_diff(adapter_params(new), expected) < 1e-5
    base_before, base_after = strip_adapters(jax.device_get(params)), strip_adapters(new)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after)))
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(adapter_params(jax.device_get(params))),
                                                          jax.tree.leaves(adapter_params(new)))]
    assert min(moved) > 1e-4  # every adapter leaf (A and B) moved


def test_grpo_step_updates_only_adapters_and_micro_batches_agree():
    model = lora_model()
    mesh = _mesh()
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, params = steps.split_model(model)
    batch = rollout_batch(np.random.default_rng(0))
    results = []
    for k in (1, 2):
        step = steps.make_grpo_step(graphdef, tx, sh, mesh, strategy=PassAtN(2), loss_cfg=CATLossConfig(),
                                    prompt_len=5, micro_batches=k)
        state, metrics = step(steps.init_state(model, tx, sh), _put(batch, step))
        assert float(metrics["ok"]) == 1.0
        results.append(jax.device_get(state.params))
    before = jax.device_get(params)
    assert _max_diff(strip_adapters(before), strip_adapters(results[0])) == 0.0
    assert _max_diff(adapter_params(before), adapter_params(results[0])) > 1e-4
    assert _max_diff(results[0], results[1]) < 1e-6


def test_lora_dropout_is_a_function_of_step_and_only_in_training():
    dropped = dataclasses.replace(LORA, dropout=0.5)
    model = lora_model(dropped)
    mesh = _mesh()
    batch = sft_batch(np.random.default_rng(0))
    step, state = _sft_setup(model, mesh)
    first, m1 = step(state, _put(batch, step))
    step_nodrop, state_nodrop = _sft_setup(lora_model(), mesh)
    _, m0 = step_nodrop(state_nodrop, _put(batch, step_nodrop))
    assert abs(float(m1["loss"]) - float(m0["loss"])) > 1e-4  # dropout changed the training forward
    _, again = step(_sft_setup(model, mesh)[1], _put(batch, step))
    assert float(again["loss"]) == float(m1["loss"])  # same step, same masks
    # outside the training step (sampling, log-probs, evaluation) the adapters never drop
    ids = jnp.asarray(batch["input_ids"])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(lora_model()(ids)))


def test_lora_checkpoint_holds_adapters_only_and_resumes_exactly(tokenizer, tmp_path):
    cfg = small_config(**{"train.steps": 4, "train.checkpoint_every": 2, "data.batch_size": 8,
                          "optimizer.learning_rate": 3e-3})
    straight = run_sft(cfg, model=lora_model(random_b=False), tokenizer=tokenizer, mesh=one_device(),
                       out=tmp_path / "a")
    run_sft(cfg.replace(**{"train.stop_after": 2}), model=lora_model(random_b=False), tokenizer=tokenizer,
            mesh=one_device(), out=tmp_path / "b")
    ckpt = Checkpointer(tmp_path / "b" / "checkpoints" / "sft")
    shapes = ckpt.param_shapes(2)
    assert shapes and all("_lora." in path for path in shapes)  # no base weight in the checkpoint
    ckpt.close()
    resumed = run_sft(cfg, model=lora_model(random_b=False), tokenizer=tokenizer, mesh=one_device(),
                      out=tmp_path / "b", resume=True)
    assert int(resumed.state.step) == 4
    assert _max_diff(jax.device_get(straight.state.params), jax.device_get(resumed.state.params)) <= 1e-6
    assert _max_diff(jax.device_get(straight.state.opt_state), jax.device_get(resumed.state.opt_state)) <= 1e-6
    assert set(flat_paths(adapter_params(straight.state.params))) == set(shapes)
    moved = _max_diff(adapter_params(jax.device_get(steps.split_model(lora_model(random_b=False))[1])),
                      adapter_params(jax.device_get(straight.state.params)))
    assert moved > 1e-4


def test_sharded_lora_step_equals_one_device_and_places_adapters_by_their_axes():
    model = lora_model()
    batch = sft_batch(np.random.default_rng(0))
    one_step, one_state = _sft_setup(model, _mesh())
    expected, _ = one_step(one_state, _put(batch, one_step))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    tx = steps.make_optimizer(OPT, 10)
    sh = steps.state_shardings_for(tx, model, mesh)
    graphdef, _ = steps.split_model(model)
    step = steps.make_sft_step(graphdef, tx, sh, mesh, strategy=PassAtN(1))
    state, _ = step(steps.init_state(model, tx, sh), _put(batch, step))
    q = state.params["layers"][0]["self_attn"]["q_proj_lora"]
    assert q["lora_a"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)  # like q_proj's embed dim
    assert q["lora_b"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None)  # like its heads
    mu = state.opt_state[1][0].mu  # AdamW's first moment: adapters only, placed like them
    assert set(mu) == {"layers"} and mu["layers"][0]["self_attn"]["q_proj_lora"]["lora_a"].sharding.spec == \
        jax.sharding.PartitionSpec("fsdp", None)
    assert _max_diff(jax.device_get(state.params), jax.device_get(expected.params)) < 1e-5
