"""The trainer's own steps take chunked log-probs and run under the mesh (issue 20, item 1).

References: the same step with `logprob_chunk=None` (the whole [B, T, vocab] logits, as the step computed before) on
one device; with plain SGD at learning rate 1 the parameter change of one step IS the gradient, so comparing the
updated parameters compares the gradients. On 8 devices (conftest forces 8 CPU devices) the chunked step must give
the one-device full-logit numbers. The mesh context is checked where it matters: inside the traced step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cat.losses import CATLossConfig, MajorityAtN, PassAtN
from jax_cat.models import decoder, layer_stack
from jax_cat.sharding import make_mesh
from jax_cat.training import steps
from tests.training.conftest import make_model, rollout_batch, sft_batch

SGD = optax.sgd(1.0)  # params_after = params - grads: an update equal to 1e-5 is a gradient equal to 1e-5
TOL = 1e-5


def _meshes():
    return {"one": make_mesh(data=1, devices=jax.devices()[:1]), "eight": make_mesh(data=2, fsdp=4)}


def _run(kind: str, mesh, chunk, batch):
    """(loss, metrics, params after one SGD step) of the library's step on `mesh` with `logprob_chunk=chunk`."""
    model = make_model(0)
    sh = steps.state_shardings_for(SGD, model, mesh)
    graphdef, _ = steps.split_model(model)
    if kind == "sft":
        step = steps.make_sft_step(graphdef, SGD, sh, mesh, strategy=PassAtN(4), reduction="token_mean",
                                   logprob_chunk=chunk)
    else:
        cfg = CATLossConfig(surrogate="token", reduction="token_mean")
        step = steps.make_grpo_step(graphdef, SGD, sh, mesh, strategy=MajorityAtN(4), loss_cfg=cfg, prompt_len=5,
                                    logprob_chunk=chunk)
    state = steps.init_state(model, SGD, sh)
    data = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, step.batch_sharding)
    new_state, metrics = step(state, data)
    return float(metrics["loss"]), jax.device_get(metrics), jax.device_get(new_state.params)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_chunked_step_equals_full_logit_step_on_one_and_eight_devices(kind):
    rng = np.random.default_rng(0)
    batch = sft_batch(rng) if kind == "sft" else rollout_batch(rng, prompts=2, group=4, prompt=5, new=7)
    meshes = _meshes()
    ref_loss, ref_metrics, ref_params = _run(kind, meshes["one"], None, batch)
    model = make_model(0)
    _, before = steps.split_model(model)
    assert _max_diff(ref_params, before) > 1e-4  # the update moved the params: the comparison sees the gradients
    # chunk 3 does not divide the 10 (SFT) / 7 (GRPO) positions: padded last chunk included
    for name, chunk in (("one", 3), ("eight", 3)):
        loss, metrics, params = _run(kind, meshes[name], chunk, batch)
        assert abs(loss - ref_loss) <= TOL * max(1.0, abs(ref_loss)), (name, chunk, loss, ref_loss)
        assert abs(float(metrics["grad_norm"]) - float(ref_metrics["grad_norm"])) <= TOL, (name, chunk)
        assert _max_diff(params, ref_params) <= TOL, (name, chunk, _max_diff(params, ref_params))


def test_chunked_logprob_fn_equals_full_logits_on_eight_devices():
    batch = rollout_batch(np.random.default_rng(1), prompts=2, group=4, prompt=5, new=7)
    model = make_model(0)
    graphdef, params = steps.split_model(model)
    meshes = _meshes()
    out = {}
    for name, chunk in (("one", None), ("one", 2), ("eight", 2)):
        mesh = meshes[name]
        sh = steps.state_shardings_for(SGD, model, mesh)
        fn = steps.make_logprob_fn(graphdef, sh, mesh, prompt_len=5, logprob_chunk=chunk)
        data = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, steps.batch_sharding(mesh))
        out[name, chunk] = np.asarray(fn(jax.device_put(params, sh.params), data))
    # an outside reference: log_softmax of the model's own [B, T, V] logits at the completion positions
    logits = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))[:, 4:-1]
    ref = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["input_ids"][:, 5:, None], -1)[..., 0]
    for key, value in out.items():
        assert np.max(np.abs(value - ref)) <= TOL, key


def _record_meshes(monkeypatch):
    """Every shard_batch call during tracing records whether a mesh was in context."""
    seen: list[bool] = []
    original = decoder.shard_batch

    def spy(x):
        seen.append(not jax.sharding.get_abstract_mesh().empty)
        return original(x)

    monkeypatch.setattr(decoder, "shard_batch", spy)  # the embedding
    monkeypatch.setattr(layer_stack, "shard_batch", spy)  # every DecoderLayer (models/layer_stack.py)
    monkeypatch.setattr(steps, "shard_batch", spy)
    return seen


@pytest.mark.parametrize("how", ["call", "lower", "fn_without_mesh"])
def test_the_step_traces_under_the_mesh_so_activation_constraints_hold(monkeypatch, how):
    seen = _record_meshes(monkeypatch)
    mesh = make_mesh(data=2, fsdp=4)
    model = make_model(0)
    sh = steps.state_shardings_for(SGD, model, mesh)
    graphdef, _ = steps.split_model(model)
    step = steps.make_sft_step(graphdef, SGD, sh, mesh, strategy=PassAtN(1), logprob_chunk=4)  # fresh: traces
    state = steps.init_state(model, SGD, sh)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in sft_batch(np.random.default_rng(0)).items()},
                           step.batch_sharding)
    if how == "call":
        step(state, batch)
    elif how == "lower":
        text = step.lower(state, batch).as_text()
        assert "sharding_constraint" in text  # the constraints are in the program the trainer compiles
    else:  # the control: the bare jitted function outside the mesh (what the trainer ran before) sees no mesh
        step.fn.lower(state, batch)
    assert seen, "shard_batch was never traced"
    assert all(seen) if how != "fn_without_mesh" else not any(seen)


def test_logprob_chunk_is_a_config_key_default_on():
    from jax_cat.training import load_config
    from jax_cat.training.config import ConfigError

    assert load_config(None, {}).model.logprob_chunk == steps.LOGPROB_CHUNK == 128
    assert load_config(None, {"model.logprob_chunk": "none"}).model.logprob_chunk is None
    with pytest.raises(ConfigError, match="model.logprob_chunk"):
        load_config(None, {"model.logprob_chunk": 0})


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_the_vocabulary_projection_sees_at_most_a_chunk_of_positions(kind, monkeypatch):
    """The [B, T, vocab] logits are never built: every call of the vocabulary projection inside the step holds at
    most `logprob_chunk` positions (the SFT step built the whole logits while its log-probs equalled the chunked
    ones, so only the shapes tell)."""
    seen = []
    original = decoder.CausalLM.logits_from_hidden

    def recording(self, hidden):
        seen.append(hidden.shape[-2])
        return original(self, hidden)

    monkeypatch.setattr(decoder.CausalLM, "logits_from_hidden", recording)
    rng = np.random.default_rng(0)
    batch = sft_batch(rng) if kind == "sft" else rollout_batch(rng, prompts=2, group=4, prompt=5, new=7)
    _run(kind, _meshes()["one"], 3, batch)
    assert seen and max(seen) <= 3, seen
