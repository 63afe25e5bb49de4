"""Temperature / top-k / top-p on hand-made logits, and against transformers' logits warpers on random ones."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from jax_cat.sampling.logits_processing import (
    apply_temperature,
    process_logits,
    sample_from_logits,
    top_k_mask,
    top_p_mask,
)

NEG = -np.inf


def kept(x) -> list[bool]:
    return list(np.isfinite(np.asarray(x)))


def test_top_k_hand_made():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 4.0, 4.5]])
    np.testing.assert_array_equal(top_k_mask(logits, 2), [[NEG, 3.0, 2.0, NEG], [5.0, NEG, NEG, 4.5]])
    np.testing.assert_array_equal(top_k_mask(logits, 1), [[NEG, 3.0, NEG, NEG], [5.0, NEG, NEG, NEG]])
    np.testing.assert_array_equal(top_k_mask(logits, 0), logits)  # off
    np.testing.assert_array_equal(top_k_mask(logits, 4), logits)  # k >= V: off
    # ties with the k-th largest are kept (transformers' convention)
    np.testing.assert_array_equal(top_k_mask(jnp.array([1.0, 2.0, 2.0, 0.0]), 1), [NEG, 2.0, 2.0, NEG])
    with pytest.raises(TypeError, match="top_k"):
        top_k_mask(logits, jnp.int32(2))


def test_top_p_hand_made():
    probs = np.array([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)
    logits = jnp.asarray(np.log(probs), jnp.float32)
    assert kept(top_p_mask(logits, 0.3)) == [False, True, False, False]
    assert kept(top_p_mask(logits, 0.79)) == [False, True, False, True]  # 0.5 + 0.3 >= 0.79
    assert kept(top_p_mask(logits, 0.81)) == [True, True, False, True]  # needs the 0.15 too
    assert kept(top_p_mask(logits, 0.96)) == [True, True, True, True]
    assert kept(top_p_mask(logits, 0.0)) == [False, True, False, False]  # argmax always survives
    np.testing.assert_array_equal(top_p_mask(logits, 1.0), logits)  # off
    # kept logits are unchanged, and rows are independent
    batch = jnp.stack([logits, logits[::-1]])
    out = np.asarray(top_p_mask(batch, 0.79))
    assert kept(out[0]) == [False, True, False, True] and kept(out[1]) == [True, False, True, False]
    np.testing.assert_array_equal(out[0][[1, 3]], np.asarray(logits)[[1, 3]])
    # top_p may be traced
    traced = jax.jit(top_p_mask)(logits, jnp.float32(0.81))
    assert kept(traced) == [True, True, False, True]


def nucleus_brute_force(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Smallest prefix of the descending-probability order whose mass reaches top_p (float64)."""
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    mass = 0.0
    for idx in order:
        keep[idx] = True
        mass += p[idx]
        if mass >= top_p:
            break
    return keep


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_brute_force_and_transformers(top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 50)).astype(np.float32) * 3
    ours = np.isfinite(np.asarray(top_p_mask(jnp.asarray(logits), top_p)))
    brute = np.stack([nucleus_brute_force(row.astype(np.float64), top_p) for row in logits])
    np.testing.assert_array_equal(ours, brute)
    hf = TopPLogitsWarper(top_p)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(ours, np.isfinite(hf))


@pytest.mark.parametrize("top_k", [1, 5, 49])
def test_top_k_matches_transformers(top_k):
    logits = np.random.default_rng(1).normal(size=(8, 50)).astype(np.float32)
    ours = np.asarray(top_k_mask(jnp.asarray(logits), top_k))
    hf = TopKLogitsWarper(top_k)(None, torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(hf))
    np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


def test_temperature_and_composition():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
    np.testing.assert_allclose(apply_temperature(logits, 0.5), [[4.0, 2.0, 0.0, -2.0]])
    # order: temperature, then top-k, then top-p on the tempered distribution
    out = process_logits(logits, temperature=0.5, top_k=3, top_p=0.9)
    p = np.exp([4.0, 2.0, 0.0]) / np.exp([4.0, 2.0, 0.0]).sum()  # 0.867, 0.117, 0.016
    assert p[0] < 0.9 <= p[0] + p[1]
    np.testing.assert_array_equal(np.asarray(out), [[4.0, 2.0, NEG, NEG]])


def test_sample_from_logits_greedy_and_logprobs():
    logits = jnp.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    keys = jax.random.split(jax.random.key(0), 2)
    tok, lp, slp = sample_from_logits(keys, logits, greedy=True)
    np.testing.assert_array_equal(tok, [1, 0])
    np.testing.assert_allclose(lp, np.asarray(jax.nn.log_softmax(logits))[[0, 1], [1, 0]], rtol=1e-6)
    np.testing.assert_array_equal(slp, [0.0, 0.0])
    # a tiny temperature and top_k=1 both give the argmax
    for kwargs in ({"temperature": 1e-4}, {"top_k": 1}, {"top_p": 0.0}):
        tok2, lp2, slp2 = sample_from_logits(keys, logits, **kwargs)
        np.testing.assert_array_equal(tok2, [1, 0])
        np.testing.assert_allclose(lp2, lp, rtol=1e-6)  # the policy log-prob ignores the sampling settings
        np.testing.assert_allclose(slp2, [0.0, 0.0], atol=1e-5)  # ~certain under the sampling distribution


def test_sample_from_logits_frequencies_follow_the_nucleus():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (20000, 1))
    keys = jax.random.split(jax.random.key(1), 20000)
    tok, lp, slp = sample_from_logits(keys, logits, temperature=1.0, top_p=0.79)
    tok = np.asarray(tok)
    assert set(np.unique(tok)) == {0, 1}
    freq = np.mean(tok == 0)
    assert abs(freq - 0.5 / 0.8) < 0.02  # renormalised over the nucleus: 0.625
    np.testing.assert_allclose(np.asarray(lp), np.log(probs)[tok], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(slp), np.log(probs[tok] / 0.8), rtol=1e-5)
    # temperature 2 flattens: p ∝ sqrt(probs)
    tok_t, _, slp_t = sample_from_logits(keys, logits, temperature=2.0)
    q = np.sqrt(probs) / np.sqrt(probs).sum()
    np.testing.assert_allclose(np.bincount(np.asarray(tok_t), minlength=4) / 20000, q, atol=0.015)
    np.testing.assert_allclose(np.asarray(slp_t), np.log(q)[np.asarray(tok_t)], rtol=1e-5)
    assert math.isclose(float(np.mean(tok_t == 3)), q[3], abs_tol=0.01)
