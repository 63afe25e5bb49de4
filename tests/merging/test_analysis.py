"""DoTS task-vector statistics against hand-computed values."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from merging import analysis

Q = "model.layers.0.self_attn.q_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"
HEAD = "lm_head.weight"
A = {Q: jnp.asarray([1.0, -2, 3, 0]), DOWN: jnp.asarray([0.5, 0.5, -1, 2]), HEAD: jnp.asarray([4.0, 0, 0, 0])}
B = {Q: jnp.asarray([-1.0, 2, 0, 1]), DOWN: jnp.asarray([1.0, -0.5, -1, 0]), HEAD: jnp.asarray([2.0, 0, 0, 0])}


def test_global_statistics_by_hand():
    cmp = analysis.compare(A, B, top_fraction=0.5, labels=("sft", "rl"))
    t = cmp.total()
    # sum a^2 = 14 + 5.5 + 16, sum b^2 = 6 + 2.25 + 4, <a,b> = -5 + 1.25 + 8
    assert (t.n, t.a2, t.b2, t.ab, t.a1, t.b1) == (12, 35.5, 12.25, 4.25, 14.0, 8.5)
    assert t.ratio_l2 == pytest.approx(math.sqrt(35.5 / 12.25))
    assert t.ratio_mean_abs == pytest.approx(14 / 8.5)
    assert t.cosine == pytest.approx(4.25 / math.sqrt(35.5 * 12.25))
    # entries changed by both: q idx 0,1 (both conflict), down idx 0,1,2 (idx 1 conflicts), head idx 0
    assert (t.both_nonzero, t.conflict) == (6, 3) and t.conflict_rate == 0.5
    # top half per tensor in both: q idx 1 (conflict), down idx 2 (agree), head idx 0 (agree)
    assert (t.both_significant, t.conflict_significant) == (3, 1)
    assert analysis.sign_conflict(A, B) == 0.5
    assert analysis.sign_conflict(A, B, top_fraction=0.5) == pytest.approx(1 / 3)
    assert analysis.cosine_similarity(A, B) == pytest.approx(t.cosine)
    assert analysis.magnitude_ratio(A, B, kind="mean_abs") == pytest.approx(14 / 8.5)


def test_module_mass_and_groupings():
    cmp = analysis.compare(A, B, labels=("sft", "rl"))
    mass = cmp.mass()
    assert list(mass) == ["q", "down", "lm_head"]
    assert mass["q"]["sft"] == pytest.approx(14 / 35.5) and mass["q"]["rl"] == pytest.approx(6 / 12.25)
    assert mass["lm_head"]["sft"] == pytest.approx(16 / 35.5) and mass["down"]["params"] == pytest.approx(1 / 3)
    assert sum(v["sft"] for v in mass.values()) == pytest.approx(1.0)
    assert analysis.module_mass(A)["down"] == pytest.approx(5.5 / 35.5)
    assert list(cmp.by_layer()) == [0] and cmp.by_layer()[0].n == 8
    assert set(cmp.by_family()) == {"attention", "mlp", "lm_head"}
    assert cmp.by_module_layer()[("down", 0)].conflict == 1
    summary = cmp.summary()
    assert summary["global"]["conflict_rate"] == 0.5 and "q.0" in summary["per_module_layer"]
    table = cmp.table()
    assert "ratio L2 sft/rl" in table and "lm_head" in table


def test_pair_stats_are_additive_over_chunks():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    whole = analysis.tensor_pair_stats(a, b, top_fraction=1.0)
    parts = analysis.PairStats.sum([analysis.tensor_pair_stats(a[:300], b[:300], top_fraction=1.0),
                                    analysis.tensor_pair_stats(a[300:], b[300:], top_fraction=1.0)])
    assert whole.conflict == parts.conflict == int(np.sum(np.sign(a) != np.sign(b)))
    assert whole.ab == pytest.approx(float(a @ b), rel=1e-12) and parts.a2 == pytest.approx(float(a @ a), rel=1e-12)
