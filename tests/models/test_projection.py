"""The vocabulary projection's and the MLP matmuls' CPU backward (models/projection.py) against autodiff of the
plain einsum / matmul: same values, same gradients w.r.t. inputs and weights (tied and untied head), inside a
cross-entropy loss and through a whole model; and the custom backward is what float32 on CPU actually runs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cat.models import decoder, layers, load_hf, projection

TOL = 1e-5  # |custom - autodiff| <= TOL * max |autodiff| of each tensor


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= TOL * max(np.max(np.abs(b)), 1e-30), np.max(np.abs(a - b))


def _ce(logits_fn, tied):
    """Mean cross-entropy of fixed targets through `logits_fn(hidden, weight, tied)` -> value and (dh, dW)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 7, 16)).astype(np.float32))
    w = jnp.asarray(rng.normal(scale=0.3, size=(50, 16) if tied else (16, 50)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 50, size=(3, 7)))

    def loss(h, w):
        logits = logits_fn(h, w, tied)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h, w)


@pytest.mark.parametrize("tied", [False, True])
def test_vocab_logits_grads_equal_autodiff(tied):
    value, (dh, dw) = _ce(lambda h, w, t: projection.vocab_logits(h, w, tied=t), tied)
    ref_value, (ref_dh, ref_dw) = _ce(projection._plain, tied)
    _close(value, ref_value)
    _close(dh, ref_dh)
    _close(dw, ref_dw)
    assert dw.shape == ((50, 16) if tied else (16, 50))


def test_dense_grads_equal_autodiff():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 7, 16)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(16, 24)).astype(np.float32))
    f = lambda d: jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(d(x, w)) ** 2), argnums=(0, 1)))(x, w)
    (value, (dx, dw)), (ref_value, (ref_dx, ref_dw)) = f(projection.dense), f(lambda x, w: x @ w)
    _close(value, ref_value)
    _close(dx, ref_dx)
    _close(dw, ref_dw)


def test_cpu_float32_takes_the_custom_backward():
    h, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda h, w: projection.vocab_logits(h, w, tied=False).sum(), 1))(h, w))
    assert "optimization_barrier" in jaxpr
    bf16 = str(jax.make_jaxpr(jax.grad(lambda h, w: projection.vocab_logits(h, w, tied=False).sum(), 1))(
        h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)))
    assert "optimization_barrier" not in bf16  # bf16 (the accelerator path) keeps plain autodiff


@pytest.mark.parametrize("tie", [False, True])
def test_model_gradients_equal_plain_projection(tiny_hf_checkpoint, monkeypatch, tie):
    """Every parameter's gradient of a model's CE loss equals the one with the plain einsum projection."""
    model = load_hf(tiny_hf_checkpoint("qwen2", tie_word_embeddings=tie))
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, model.config.vocab_size, size=(2, 9)))

    def grads():
        def loss(s):
            logits = nnx.merge(graphdef, s)(ids)[:, :-1]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))

        return jax.jit(jax.value_and_grad(loss))(state)

    value, got = grads()
    monkeypatch.setattr(decoder, "vocab_logits", lambda h, w, tied: projection._plain(h, w, tied))
    monkeypatch.setattr(layers, "dense", lambda x, w: x @ w)  # MLP (models/layers.py)
    ref_value, ref = grads()
    _close(value, ref_value)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        _close(a, b)
