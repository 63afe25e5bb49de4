"""`lora.rollout`: GRPO rollouts sample from the adapted model ("adapters") or from W + A.B.alpha/r merged once per
rollout batch ("merged"). In both modes the sampler's per-token log-probs equal the train step's log-prob pass (the
adapter path on the frozen base, `steps.make_logprob_fn`) within 1e-5, and the state's params are left as they were."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import CausalLM
from jax_cat.models.lora import LoRAConfig, has_adapters
from jax_cat.models.tiny import tiny_model_config
from jax_cat.sampling import sample_tokens
from jax_cat.training import steps
from jax_cat.training.config import ConfigError, load_config
from jax_cat.training.rollout import _assemble_rows
from jax_cat.training.rollout_policy import rollout_policy
from tests.training.conftest import one_device

P, N, G = 6, 8, 4


def _lora_model(scan: bool):
    model = nnx.jit(lambda: CausalLM(tiny_model_config(num_hidden_layers=2), rngs=nnx.Rngs(0), scan_layers=scan,
                                     lora=LoRAConfig(rank=4, alpha=8.0)))()
    rng = np.random.default_rng(1)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if v.get_value().shape[-1] != 4:  # B [r, *out]: non-zero, so the adapters change the logits
            v.set_value(jnp.asarray(0.1 * rng.standard_normal(v.shape), jnp.float32))
    return model


@pytest.mark.parametrize("scan", [False, True])
def test_sampler_logprobs_equal_the_train_steps_in_both_modes(scan):
    mesh = one_device()
    model = _lora_model(scan)
    graphdef, params = steps.split_model(model)
    before = jax.tree.map(np.asarray, params)
    logprob_fn = steps.make_logprob_fn(graphdef, steps.state_shardings_for(
        steps.make_optimizer(load_config(None, {}).optimizer, 1), model, mesh), mesh, prompt_len=P)
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, 100, size=(2, P)).astype(np.int32)
    mask = np.ones_like(prompts)
    mask[0, :2] = 0  # a left-padded prompt
    group_ids = jnp.repeat(jnp.arange(2, dtype=jnp.int32), G)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(7), r))(jnp.arange(2 * G, dtype=jnp.uint32))
    tokens = {}
    for mode in ("adapters", "merged"):
        policy = rollout_policy(graphdef, params, mode)
        assert (getattr(policy, "lora", None) is None) == (mode == "merged")
        assert has_adapters(nnx.to_pure_dict(nnx.state(policy))) == (mode == "adapters")
        out = sample_tokens(policy, jnp.asarray(prompts), jnp.asarray(mask), max_new_tokens=N, row_keys=row_keys,
                            temperature=1.0, eos_token_ids=(), pad_token_id=0, group_ids=group_ids)
        batch = _assemble_rows(jnp.asarray(prompts), jnp.asarray(mask), out.tokens, out.lengths,
                               jnp.zeros(2 * G), jnp.zeros(2 * G, jnp.int32), group_size=G)
        step_logprobs = np.asarray(logprob_fn(params, batch.arrays()))
        completion = np.asarray(batch.completion_mask, bool)
        assert completion.sum() == 2 * G * N
        np.testing.assert_allclose(np.asarray(out.logprobs)[completion], step_logprobs[completion], atol=1e-5)
        tokens[mode] = np.asarray(out.tokens)
    assert np.mean(tokens["adapters"] == tokens["merged"]) > 0.9  # the same distribution, the same keys
    plain = rollout_policy(graphdef, jax.tree.map(jnp.asarray, before), "merged")
    base_only = nnx.to_pure_dict(nnx.state(plain))
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), before, params))  # untouched
    kernel = base_only["layers"]["self_attn"]["q_proj"] if scan else base_only["layers"][0]["self_attn"]["q_proj"]
    q = params["layers"]["self_attn"] if scan else params["layers"][0]["self_attn"]
    delta = (jax.vmap(lambda a, b: jnp.tensordot(a, b, 1)) if scan else (lambda a, b: jnp.tensordot(a, b, 1)))(
        q["q_proj_lora"]["lora_a"], q["q_proj_lora"]["lora_b"]) * 2.0
    np.testing.assert_allclose(np.asarray(kernel), np.asarray(q["q_proj"]) + np.asarray(delta), atol=1e-6)


def test_rollout_mode_is_a_checked_config_key():
    assert load_config(None, {}).lora.rollout in ("adapters", "merged")
    assert load_config(None, {"lora.rollout": "merged"}).lora.rollout == "merged"
    with pytest.raises(ConfigError, match="lora.rollout"):
        load_config(None, {"lora.rollout": "dense"})
