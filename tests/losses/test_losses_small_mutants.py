"""reduce.py, state.py and config.py against hand-computed values (mutation testing, issue 15): the reduction
divisors, the reward history ring buffer and running normaliser, and every CATLossConfig validation."""
import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.losses.config import (REFERENCE_MAJORITY, REFERENCE_PASS_AT_N, CATLossConfig, resolve_config)
from jax_cat.losses.reduce import (LossDenominator, as_denominator, canonical_reduction, local_denominator,
                                   loss_denominator, reduce_sequences)
from jax_cat.losses.state import history_append, history_quantiles, init_cat_state, running_scale

# rows with 3, 1, 0 and 2 valid tokens
MASK = jnp.asarray([[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1]], bool)


# ------------------------------------------------------------------------------------------------------------
# reduce.py
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction,policy", [("token_mean", 6.0), ("sequence_mean", 3.0), ("token_sum", 4.0)])
def test_loss_denominator_counts_by_hand(reduction, policy):
    for den in (loss_denominator(MASK, reduction), local_denominator(MASK, reduction)):
        assert float(den.policy) == policy and float(den.sequences) == 3.0  # 3 non-empty rows
        assert den.policy.dtype == jnp.float32 and den.sequences.dtype == jnp.float32


def test_loss_denominator_padding_rows_and_floors():
    sm = jnp.asarray([True, True, False, True])
    assert float(loss_denominator(MASK, "token_sum", sample_mask=sm).policy) == 3.0  # only "token_sum" changes
    assert float(loss_denominator(MASK, "token_mean", sample_mask=sm).policy) == 6.0
    empty = jnp.zeros((2, 3), bool)
    for r in ("token_mean", "sequence_mean"):  # nothing to count: divisors floor at 1, never 0
        assert [float(x) for x in loss_denominator(empty, r)] == [1.0, 1.0]
        assert [float(x) for x in local_denominator(empty, r)] == [1.0, 1.0]
    assert float(loss_denominator(MASK, "token_sum", sample_mask=jnp.zeros(4, bool)).policy) == 1.0
    with pytest.raises(ValueError, match="sample_mask"):
        loss_denominator(MASK, "token_sum", sample_mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="mask must be"):
        loss_denominator(jnp.ones(3), "token_mean")
    with pytest.warns(DeprecationWarning, match="sequence_sum"):
        assert float(loss_denominator(MASK, "sequence_sum").policy) == 4.0


def test_canonical_reduction_and_as_denominator():
    with pytest.warns(DeprecationWarning, match="token_sum"):
        assert canonical_reduction("sequence_sum") == "token_sum"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the canonical names do not warn
        assert [canonical_reduction(r) for r in ("token_mean", "sequence_mean", "token_sum")] == [
            "token_mean", "sequence_mean", "token_sum"]
    with pytest.raises(ValueError, match="reduction must be one of.*'mean'"):
        canonical_reduction("mean")
    assert as_denominator(None, "token_mean", "f") is None
    d = as_denominator(LossDenominator(jnp.asarray(6), jnp.asarray(3)), "token_mean", "f")
    assert (float(d.policy), float(d.sequences), d.policy.dtype) == (6.0, 3.0, jnp.float32)
    d = as_denominator((8, 2), "token_mean", "f")
    assert (float(d.policy), float(d.sequences), d.sequences.dtype) == (8.0, 2.0, jnp.float32)
    d = as_denominator(5, "token_mean", "f")  # a scalar under token_mean leaves the sequence count unknown
    assert float(d.policy) == 5.0 and d.sequences is None
    for r in ("sequence_mean", "token_sum"):  # ... and serves as both divisors under the sequence reductions
        d = as_denominator(5, r, "f")
        assert float(d.policy) == 5.0 and float(d.sequences) == 5.0 and d.policy.dtype == jnp.float32
    with pytest.raises(ValueError, match="my_loss: loss_denominator must be a scalar"):
        as_denominator(jnp.ones(3), "token_mean", "my_loss")


def test_reduce_sequences_by_hand():
    per_seq, lengths = jnp.asarray([3.0, 1.0, 5.0, 4.0]), jnp.asarray([3, 1, 0, 2])
    # sequence_mean: 3/3 + 1/1 + (empty row -> 0) + 4/2 = 4, over the divisor 2
    np.testing.assert_allclose(reduce_sequences(per_seq, lengths, "sequence_mean", jnp.asarray(2.0)), 2.0)
    np.testing.assert_allclose(reduce_sequences(per_seq, lengths, "token_mean", jnp.asarray(2.0)), 6.5)
    np.testing.assert_allclose(reduce_sequences(per_seq, lengths, "token_sum", jnp.asarray(4.0)), 3.25)


# ------------------------------------------------------------------------------------------------------------
# state.py
# ------------------------------------------------------------------------------------------------------------
def test_init_cat_state_shapes_and_errors():
    st = init_cat_state(5)
    assert st.history.shape == (5,) and st.history.dtype == jnp.float32
    assert [int(x) for x in (st.norm_steps, st.history_len, st.history_pos)] == [0, 0, 0]
    assert float(st.norm_mean) == 0.0 and st.norm_mean.dtype == jnp.float32
    assert st.norm_steps.dtype == jnp.int32 and st.history_len.dtype == jnp.int32 and st.history_pos.dtype == jnp.int32
    assert init_cat_state().history.shape == (4000,)  # the reference's FIFO length
    assert init_cat_state(1).history.shape == (1,)
    for bad in (0, -3, 2.0, True, "4"):
        with pytest.raises(ValueError, match="history_capacity"):
            init_cat_state(bad)


def test_history_ring_buffer_with_padding_and_wraparound():
    st = init_cat_state(4)
    st = history_append(st, jnp.asarray([1.0, 9.0, 2.0]), jnp.asarray([True, False, True]))  # 9 is padding
    assert int(st.history_len) == 2 and int(st.history_pos) == 2
    np.testing.assert_array_equal(np.asarray(st.history)[:2], [1.0, 2.0])
    # history {1, 2}: q(r) = (#{h < r} + 1) / (2 + 2)
    np.testing.assert_allclose(history_quantiles(st, jnp.asarray([0.0, 1.0, 1.5, 3.0])), [0.25, 0.25, 0.5, 0.75])
    st = history_append(st, jnp.asarray([3.0, 4.0, 5.0]))  # 5 wraps to slot 0, overwriting the oldest (1)
    assert int(st.history_len) == 4 and int(st.history_pos) == 1
    np.testing.assert_array_equal(st.history, [5.0, 2.0, 3.0, 4.0])
    st = history_append(st, jnp.asarray([6.0, 7.0, 8.0, 9.0, 10.0, 11.0]))  # more than capacity: the last 4 stay
    assert sorted(np.asarray(st.history).tolist()) == [8.0, 9.0, 10.0, 11.0]
    assert int(st.history_len) == 4 and int(st.history_pos) == (1 + 6) % 4
    np.testing.assert_allclose(history_quantiles(st, jnp.asarray([8.5])), [2 / 6])


def test_running_scale_by_hand():
    st = init_cat_state(1)
    scale, st1 = running_scale(st, jnp.asarray(2.0), 0.9)  # m1 = 0.1 * 2 = 0.2; debiased 0.2 / (1 - 0.9) = 2
    np.testing.assert_allclose(scale, 2.0, rtol=1e-6)
    assert int(st1.norm_steps) == 1
    np.testing.assert_allclose(st1.norm_mean, 0.2, rtol=1e-6)
    scale, st2 = running_scale(st1, jnp.asarray(4.0), 0.9)  # m2 = 0.18 + 0.4 = 0.58; / (1 - 0.81) = 3.0526
    np.testing.assert_allclose(scale, 0.58 / 0.19, rtol=1e-5)
    for skipped in (0.0, -1.0, math.nan, math.inf):  # not a usable mean: state and scale unchanged
        s, st3 = running_scale(st2, jnp.asarray(skipped), 0.9)
        np.testing.assert_allclose(s, 0.58 / 0.19, rtol=1e-5)
        assert int(st3.norm_steps) == 2
    s, st0 = running_scale(st, jnp.asarray(0.0), 0.5)  # nothing yet: scale 1
    assert float(s) == 1.0 and int(st0.norm_steps) == 0
    s, _ = jax.jit(running_scale, static_argnums=2)(st, jnp.asarray(3.0), 0.5)  # m1 = 1.5, / (1 - 0.5) = 3
    np.testing.assert_allclose(s, 3.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# config.py
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,bad", [
    ("form", "sqrt"), ("p_source", "token"), ("no_answer", "none"), ("normalize", "prompt"),
    ("bon_quantile", "global"), ("surrogate", "step"), ("kl", "mean"),
    ("smoothing", -1.0), ("smoothing", math.inf), ("smoothing", True), ("smoothing", "1"),
    ("adv_eps", -1e-4), ("all_wrong_penalty", math.nan), ("beta", -0.1),
    ("weight_clip", 0.0), ("weight_clip", -1.0), ("weight_clip", math.inf), ("weight_clip", True),
    ("advantage_clip", 0), ("clip_eps_low", "0.2"), ("clip_eps_high", -0.2),
    ("logp_floor", 0.0), ("logp_floor", 5.0), ("logp_floor", "x"),
    ("norm_decay", 1.0), ("norm_decay", -0.1),
    ("min_k", 0), ("min_k", 2.0), ("min_k", True), ("std_ddof", -1), ("std_ddof", 1.0), ("std_ddof", False),
])
def test_config_refuses_each_bad_field_by_name(field, bad):
    with pytest.raises(ValueError, match=f"CATLossConfig.{field} must"):
        CATLossConfig(**{field: bad})


def test_config_accepts_the_edges_and_canonicalises():
    cfg = CATLossConfig(smoothing=0, adv_eps=0.0, all_wrong_penalty=0, beta=0, weight_clip=1e-3, advantage_clip=2,
                        clip_eps_low=0.1, clip_eps_high=10, logp_floor=-1e-6, norm_decay=0.0, min_k=1, std_ddof=0)
    assert (cfg.min_k, cfg.std_ddof, cfg.norm_decay) == (1, 0, 0.0)
    for field, values in {"form": ("raw", "log"), "p_source": ("group", "sequence"), "no_answer": ("rival", "abstain"),
                          "normalize": ("batch", "mixed", "none", "running"), "bon_quantile": ("group", "history"),
                          "surrogate": ("token", "sequence"), "kl": ("sequence_mean", "token"),
                          "reduction": ("token_mean", "sequence_mean", "token_sum")}.items():
        for v in values:  # every documented choice is accepted
            assert getattr(CATLossConfig(**{field: v}), field) == v
    with pytest.raises(ValueError, match="CATLossConfig.min_k must be an int >= 1, got 0"):
        CATLossConfig(min_k=0)
    with pytest.raises(ValueError, match="CATLossConfig.std_ddof must be an int >= 0, got -1"):
        CATLossConfig(std_ddof=-1)
    for old in (True, False):  # the bool switch is gone (CHANGELOG.md)
        with pytest.raises(ValueError, match=r"^CATLossConfig.normalize takes a mode: 'batch' \(was True\)"):
            CATLossConfig(normalize=old)
    with pytest.warns(DeprecationWarning):
        assert CATLossConfig(reduction="sequence_sum").reduction == "token_sum"
    with pytest.raises(ValueError, match="reduction"):
        CATLossConfig(reduction="sum")
    with pytest.raises(ValueError, match="CATLossConfig.beta"):
        CATLossConfig().replace(beta=-1.0)  # replace validates again
    assert CATLossConfig().replace(beta=0.5).beta == 0.5


def test_resolve_config_applies_only_keywords_that_differ_from_the_default():
    assert resolve_config(None) == CATLossConfig()
    assert resolve_config(REFERENCE_MAJORITY) is REFERENCE_MAJORITY
    # weight_clip=None is the field default: it does NOT reset the preset's 50 (use dataclasses.replace for that)
    assert resolve_config(REFERENCE_PASS_AT_N, weight_clip=None).weight_clip == 50.0
    assert resolve_config(REFERENCE_PASS_AT_N, weight_clip=5.0).weight_clip == 5.0
    # normalize="batch" is the default: so it does not override the preset's "none" either
    assert resolve_config(REFERENCE_PASS_AT_N, normalize="batch").normalize == "none"
    assert resolve_config(REFERENCE_PASS_AT_N, normalize="running").normalize == "running"
    assert resolve_config(None, normalize="none").normalize == "none"
    assert resolve_config(REFERENCE_PASS_AT_N, form="log") == dataclasses.replace(REFERENCE_PASS_AT_N, form="log")
    with pytest.raises(TypeError, match="unknown CAT setting 'temperature'"):
        resolve_config(None, temperature=1.0)
    with pytest.raises(TypeError, match="config must be a CATLossConfig, got dict"):
        resolve_config({"beta": 0.1})


def test_state_and_divisors_keep_float32_and_int32_under_x64():
    """The state is carried through jit from step to step (and checkpointed): its dtypes must not drift to
    float64 when x64 is on, nor the divisors'."""
    with jax.enable_x64(True):
        st = init_cat_state(3)
        assert [x.dtype for x in st] == [jnp.float32, jnp.int32, jnp.float32, jnp.int32, jnp.int32]
        st = history_append(st, jnp.asarray([1.0, 2.0], jnp.float64))
        q = history_quantiles(st, jnp.asarray([1.5], jnp.float64))
        assert q.dtype == jnp.float32 and st.history.dtype == jnp.float32
        np.testing.assert_allclose(q, [0.5])  # (1 + 1) / (2 + 2)
        scale, st = running_scale(st, jnp.asarray(2.0, jnp.float64), 0.9)
        assert scale.dtype == jnp.float32 and st.norm_mean.dtype == jnp.float32
        for r in ("token_mean", "sequence_mean", "token_sum"):
            den = loss_denominator(MASK, r, sample_mask=jnp.ones(4, bool))
            assert den.policy.dtype == jnp.float32 and den.sequences.dtype == jnp.float32
    d = as_denominator((8, 2), "token_mean", "f")
    assert d.policy.dtype == jnp.float32  # an int pair still gives float32 divisors
    one = jnp.asarray([[1, 1, 0]], bool)  # a batch of one row: token_sum divides by 1
    assert float(local_denominator(one, "token_sum").policy) == 1.0
    with pytest.raises(ValueError, match=r"sample_mask \(3,\) must be \[B\]=\(4,\)"):
        loss_denominator(MASK, "token_sum", sample_mask=jnp.ones(3, bool))
