"""benchmarks/train_step.py times the trainer's own SFT/GRPO step (built from a Config by `steps.steps_for_config`)
against a torch loop. It must do the torch loop's work: on a tiny model, the first step's loss and gradient norm
agree to 1e-5 (float32) with a hand-written reference loss (below: mean next-token CE; the clipped token surrogate
with the benchmark's fixed advantages and old log-probs), and the advantages the library's GRPO step derives from
the rewards are the numbers the benchmark feeds torch."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests._load_script import load_script
from tests.training.conftest import make_model

ROOT = Path(__file__).resolve().parents[2]


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    return load_script("benchmarks/train_step.py", "bench_train_step", register=True)


ts = _load()
B, T = 8, 16


def handwritten_loss(graphdef, kind: str, grpo):
    """(params, ids [B, T]) -> the loss torch computes: mean next-token CE (SFT), or the clipped token surrogate
    over completion tokens with fixed advantages and old log-probs (GRPO)."""
    mask, adv, old = grpo

    def loss_fn(params, ids):
        m = nnx.merge(graphdef, params)
        logits = m.logits_from_hidden(m.hidden_states(ids)[:, :-1])
        logp = -optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        if kind == "sft":
            return -logp.mean()
        ratio = jnp.exp(logp - old)
        surrogate = jnp.minimum(ratio * adv[:, None], jnp.clip(ratio, 1 - ts.CLIP, 1 + ts.CLIP) * adv[:, None])
        return -jnp.sum(surrogate * mask) / jnp.sum(mask)

    return loss_fn


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_library_step_matches_the_handwritten_step(kind):
    model = make_model(0)
    ids = jnp.asarray(np.random.default_rng(0).integers(4, model.config.vocab_size, size=(B, T)).astype(np.int32))
    grpo = tuple(jnp.asarray(x) for x in ts.grpo_inputs(B, T, T // 4))

    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = handwritten_loss(graphdef, kind, grpo)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, ids)

    step, state, batch = ts.trainer_step(model, kind, ids, grpo)
    _, metrics = step(state, batch)
    assert float(metrics["ok"]) == 1.0
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-5)
    assert float(optax.global_norm(grads)) > 1e-3  # not a vacuous match (the clipped surrogate keeps a gradient)


def test_grpo_advantages_are_the_group_normalised_rewards():
    from jax_cat.losses import CATLossConfig, PassAtN, cat_advantages

    rewards, groups = ts.grpo_rewards(B)
    _, adv, _ = ts.grpo_inputs(B, T, T // 4)
    # by hand: groups [1,0,0,1] and [0,1,1,1]: mean 0.5, std 0.577..; mean 0.75, std 0.5 (ddof 1), eps 1e-4
    s1, s2 = np.std([1, 0, 0, 1], ddof=1), 0.5
    expected = np.array([0.5, -0.5, -0.5, 0.5]) / (s1 + 1e-4)
    expected = np.concatenate([expected, np.array([-0.75, 0.25, 0.25, 0.25]) / (s2 + 1e-4)])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    lib, _ = cat_advantages(PassAtN(1), rewards=jnp.asarray(rewards), group_ids=jnp.asarray(groups),
                            config=CATLossConfig())
    np.testing.assert_allclose(np.asarray(lib), expected, rtol=1e-5)
