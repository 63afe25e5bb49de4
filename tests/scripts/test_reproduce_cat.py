"""scripts/reproduce_cat.py: CAT - plain with a CI over training seeds and problems, against hand-computed values."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("reproduce_cat", ROOT / "scripts" / "reproduce_cat.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _seed(num_correct, n=4):
    return {"num_correct": num_correct, "n": n, "pass@k": {"k": [1, 2, 4]}}


def test_seed_and_problem_ci_is_a_point_for_constant_differences_and_widens_with_seed_spread(rc):
    assert rc.seed_and_problem_ci(np.full((3, 5), 0.25)) == pytest.approx((0.25, 0.25))
    # seeds that disagree (+.5 / -.5 on every problem): the problem-only CI of one seed would be a point; over seeds
    # the CI must cover both signs
    low, high = rc.seed_and_problem_ci(np.array([[0.5] * 6, [-0.5] * 6, [0.5] * 6]))
    assert low < 0 < high


def test_paired_differences_by_hand(rc):
    # 2 problems, n = 4. seed 0: CAT 2/4 and 0/4 correct, plain 1/4 and 0/4; seed 1: CAT 4/4, 0/4, plain 4/4, 4/4.
    per_seed = {"grpo": {0: _seed([1, 0]), 1: _seed([4, 4])}, "grpo_cat": {0: _seed([2, 0]), 1: _seed([4, 0])}}
    d = rc.paired_differences(per_seed)["grpo_cat"]
    # pass@1 = c/n; seed 0: (.5-.25)/2 = .125; seed 1: (1-1 + 0-1)/2 = -.5
    assert d["seed_min"][0] == pytest.approx(-0.5) and d["seed_max"][0] == pytest.approx(0.125)
    assert d["mean"][0] == pytest.approx((0.125 - 0.5) / 2)
    # pass@2 = 1 - C(n-c,2)/C(4,2): c=2 -> 1 - 1/6, c=1 -> 1 - 3/6; seed 0: (5/6 - 1/2)/2 = 1/6
    assert d["seed_max"][1] == pytest.approx(1 / 6)
    assert d["ci_low"][0] <= d["mean"][0] <= d["ci_high"][0] and d["seeds"] == [0, 1]
    table = rc.differences_table({"grpo_cat": d}, {"grpo_cat": "CAT-GRPO pass@8"})
    assert "CAT-GRPO pass@8 (2 seeds)" in table and "-0.188" in table
