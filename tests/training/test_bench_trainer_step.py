"""benchmarks/train_step.py times two JAX steps against the same torch loop: a hand-written jitted loss + optax AdamW,
and the library's real SFT/GRPO step (`jax_cat.training.steps`). They must do the same work: on a tiny model, the
first step's loss and gradient norm of the two agree to 1e-5 (float32), and the advantages the library's GRPO step
derives from the rewards are the numbers the benchmark feeds the hand-written step and torch."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.training.conftest import make_model

ROOT = Path(__file__).resolve().parents[2]


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


ts = _load()
B, T = 8, 16


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_library_step_matches_the_handwritten_step(kind):
    model = make_model(0)
    ids = jnp.asarray(np.random.default_rng(0).integers(4, model.config.vocab_size, size=(B, T)).astype(np.int32))
    grpo = tuple(jnp.asarray(x) for x in ts.grpo_inputs(B, T, T // 4))

    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = ts.handwritten_loss(graphdef, kind, grpo)
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
