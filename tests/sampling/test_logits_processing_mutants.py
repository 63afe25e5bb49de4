"""Cases that the mutation run of logits_processing.py showed untested (issue 15): logits with more than one batch axis,
top-k larger than the vocabulary, top_p = 1 with a negligible token, the exact top-p boundary, the defaults of
process_logits / sample_from_logits, dtypes, and the top_k type error. References: transformers' TopK/TopP warpers,
closed forms of softmax, hand-computed numbers. Eager only (no jit), so every case costs milliseconds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from jax_cat.sampling.logits_processing import (
    apply_temperature,
    process_logits,
    sample_from_logits,
    top_k_mask,
    top_p_mask,
)


def hf_rows(warper, logits: np.ndarray) -> np.ndarray:
    """Apply a transformers warper (which takes [N, V]) to every row of [..., V] logits."""
    flat = torch.from_numpy(logits.reshape(-1, logits.shape[-1]).copy())
    return warper(None, flat).numpy().reshape(logits.shape)


# [2, 3, 7]: two leading axes, neither equal to V, so an axis mix-up changes shapes or values rather than hiding.
LOGITS_3D = (np.random.default_rng(5).normal(size=(2, 3, 7)) * 1.5).astype(np.float32)


@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_top_k_on_two_batch_axes_matches_transformers(top_k):
    ours = np.asarray(top_k_mask(jnp.asarray(LOGITS_3D), top_k))
    np.testing.assert_array_equal(ours, hf_rows(TopKLogitsWarper(top_k), LOGITS_3D))


def test_top_k_at_or_above_the_vocabulary_is_a_no_op():
    logits = jnp.asarray(LOGITS_3D)
    for k in (7, 8, 100):  # V = 7
        np.testing.assert_array_equal(top_k_mask(logits, k), LOGITS_3D)


def test_top_k_type_error_names_the_type_given():
    with pytest.raises(TypeError, match=r"top_k must be a Python int.*got float"):
        top_k_mask(jnp.zeros((1, 4)), 2.0)


@pytest.mark.parametrize("top_p", [0.4, 0.6, 0.8, 0.95])
def test_top_p_on_two_batch_axes_matches_transformers(top_p):
    ours = np.asarray(top_p_mask(jnp.asarray(LOGITS_3D), top_p))
    hf = hf_rows(TopPLogitsWarper(top_p), LOGITS_3D)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(hf))
    np.testing.assert_array_equal(ours[np.isfinite(ours)], LOGITS_3D[np.isfinite(ours)])  # kept logits unchanged
    # rows differ in how many tokens they keep, so a mask computed for the wrong row would show
    assert len(set(np.isfinite(ours).sum(-1).ravel().tolist())) > 1


def test_top_p_boundary_keeps_one_token_like_transformers():
    """probs [.5, .25, .25] at top_p = .5: the mass before the 2nd token is exactly .5, not < .5: one token kept."""
    logits = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    hf = np.isfinite(TopPLogitsWarper(0.5)(None, torch.from_numpy(logits)).numpy())
    ours = np.isfinite(np.asarray(top_p_mask(jnp.asarray(logits), 0.5)))
    assert ours.tolist() == hf.tolist() == [[True, False, False]]


def test_top_p_one_keeps_a_negligible_token():
    """p(second) ~ e^-25 ~ 1.4e-11: in float32 the mass before it rounds to 1.0, yet top_p = 1 keeps it (HF too)."""
    logits = np.array([[0.0, -25.0, -3.0]], np.float32)
    np.testing.assert_array_equal(top_p_mask(jnp.asarray(logits), 1.0), logits)
    np.testing.assert_array_equal(TopPLogitsWarper(1.0)(None, torch.from_numpy(logits)).numpy(), logits)


def test_apply_temperature_keeps_the_logits_dtype():
    logits = jnp.array([2.0, 1.0, 0.0, -1.0], jnp.bfloat16)
    out = apply_temperature(logits, jnp.float32(2.0))  # a float32 temperature array must not promote bf16 logits
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), [1.0, 0.5, 0.0, -0.5])


def test_process_logits_defaults_change_nothing():
    """Defaults: temperature 1, top-k off, top-p off: the logits come back unchanged (as float32)."""
    out = process_logits(jnp.asarray(LOGITS_3D))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, LOGITS_3D)


def test_sample_from_logits_defaults_sample_the_model_distribution():
    """With the defaults, the draw follows softmax(logits) itself: frequencies, and sample log-prob = model log-prob."""
    probs = np.array([0.6, 0.3, 0.1])
    n = 4000
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 1))
    tok, lp, slp = sample_from_logits(jax.random.split(jax.random.key(3), n), logits)
    assert tok.dtype == jnp.int32 and tok.shape == (n,)
    tok = np.asarray(tok)
    assert stats.chisquare(np.bincount(tok, minlength=3), probs * n).pvalue > 1e-3
    np.testing.assert_allclose(np.asarray(lp), np.log(probs)[tok], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(slp), np.log(probs)[tok], rtol=1e-5)


def test_dtypes_stay_float32_and_int32_under_x64():
    """With jax_enable_x64 on (a user's choice), the sampling functions still hand out float32 logits / log-probs and
    int32 tokens: the documented dtypes, and the ones the decode loop's buffers hold. (Greedy only: the sampled
    path's log-probs come from process_logits, checked here, and a second x64 compile would cost seconds.)"""
    logits = jnp.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]], jnp.bfloat16)
    with jax.enable_x64(True):
        assert process_logits(logits, temperature=0.5, top_k=2, top_p=0.9).dtype == jnp.float32
        tok, lp, slp = sample_from_logits(None, logits, greedy=True)
        assert (tok.dtype, lp.dtype, slp.dtype) == (jnp.int32, jnp.float32, jnp.float32)
        np.testing.assert_array_equal(tok, [1, 0])
        p_argmax = [np.exp(3) / (1 + np.exp(3) + np.e), np.exp(2) / (np.exp(2) + 1 + np.e)]
        np.testing.assert_allclose(lp, np.log(p_argmax), rtol=1e-6)
        np.testing.assert_array_equal(slp, [0.0, 0.0])
