"""scripts/reproduce_dots.py: the DoTS reproduction's pieces against hand-computed values, its bad-input error, and
one end-to-end run with tiny settings (every stage, every method, the three searches) that must write its tables."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("reproduce_dots", ROOT / "scripts" / "reproduce_dots.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


rd = _load()


def test_vector_properties_match_hand_computed_values():
    # sft entries 3,-3,0,4 | 1,2 ; rl entries 1,1,1,0 | 1,-1
    sft = {"model": {"layers": {"0": {"mlp": {"up_proj": {"kernel": jnp.array([[3.0, -3.0], [0.0, 4.0]])}}}},
                     "lm_head": {"kernel": jnp.array([1.0, 2.0])}}}
    rl = {"model": {"layers": {"0": {"mlp": {"up_proj": {"kernel": jnp.array([[1.0, 1.0], [1.0, 0.0]])}}}},
                    "lm_head": {"kernel": jnp.array([1.0, -1.0])}}}
    p = rd.vector_properties(sft, rl, 0.5)
    assert p["total"]["ratio_l2"] == pytest.approx(math.sqrt(39 / 5))  # ||sft||^2 = 9+9+16+1+4, ||rl||^2 = 5
    assert p["total"]["conflict_rate"] == pytest.approx(0.5)  # both non-zero at 4 entries, opposite signs at 2
    assert p["per_tensor_ratio_min"] == pytest.approx(math.sqrt(5 / 2))  # lm_head
    assert p["per_tensor_ratio_max"] == pytest.approx(math.sqrt(34 / 3))  # up_proj
    assert p["by_module"]["up"]["share_sft"] == pytest.approx(34 / 39)
    assert p["by_module"]["up"]["share_rl"] == pytest.approx(3 / 5)


def test_results_table_mean_is_the_mean_of_the_two_skills():
    res = {"settings": {"rl_task": "add2", "sft_task": "sub2", "eval_samples": 4},
           "models": {"dots": {"eval": {"sub2": {"pass@1": 0.25, "pass@4": 0.5}, "add2": {"pass@1": 0.75, "pass@4": 1.0}},
                               "seconds": 12.4, "coefficients": [0.5, 1.25]}}}
    row = rd.results_table(res).splitlines()[-1]
    assert row == "| DoTS (sparse + rescale + search) | 0.250 | 0.500 | 0.750 | 1.000 | 0.500 | 0.50, 1.25 | 12 |"


def test_seeds_table_is_mean_and_sample_std_over_seeds():
    def run(sub2, add2, coeffs, ratio):
        return {"settings": {"rl_task": "add2", "sft_task": "sub2"}, "wall_seconds": 100.0,
                "properties": {"total": {"ratio_l2": ratio, "conflict_rate": 0.5}},
                "models": {"dots": {"eval": {"sub2": {"pass@1": sub2}, "add2": {"pass@1": add2}}, "seconds": 10.0,
                                    "coefficients": coeffs}}}
    table = rd.seeds_table({0: run(0.1, 0.5, [1.0, 0.5], 20.0), 1: run(0.3, 0.5, [0.25, 1.5], 30.0)})
    # sub2: mean .2, std sqrt(((.1-.2)^2 + (.3-.2)^2) / 1) = .1414; skill mean per seed .3 and .4 -> .35 +- .0707
    assert table.splitlines()[2] == ("| DoTS (sparse + rescale + search) | 0.200 +- 0.141 | 0.500 +- 0.000 | "
                                     "0.350 +- 0.071 | 1.00, 0.50; 0.25, 1.50 | 10 |")
    assert "magnitude ratio 25.000 +- 7.071" in table


def test_bad_seeds_is_one_line_exit_2(capsys):
    assert rd.main(["--seeds", "0,0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds" in err[0]


def test_bad_setting_is_one_line_exit_2(capsys):
    assert rd.main(["--density", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "density" in err[0]


@pytest.mark.slow
def test_end_to_end_tiny_run_writes_every_method(tmp_path):
    out = tmp_path / "run"
    code = rd.main(["--out", str(out), "--train-records", "256", "--base-steps", "1", "--sft-steps", "1",
                    "--base-lr", "1e-3", "--sft-lr", "1e-3",
                    "--rl-steps", "1", "--rl-prompts", "2", "--group-size", "2", "--batch-size", "4", "--mesh", "1,1,1",
                    "--joint-rounds", "1", "--eval-problems", "4", "--eval-samples", "1", "--trials", "1",
                    "--queries-per-task", "1", "--votes", "2"])  # DotsConfig: >= 2
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == set(rd.LABELS)
    for m in res["models"].values():
        for skill in ("add2", "sub2"):
            assert 0.0 <= m["eval"][skill]["pass@1"] <= 1.0
    # the plain average of the two models is base + 1/2 tau_sft + 1/2 tau_rl (float32 rounding only)
    assert res["average_equals_half_vectors_max_abs_diff"] < 1e-6
    for name in ("dots", "dots_dense", "dots_norescale"):
        assert len(res["searches"][name]["trials"]) == 1
    assert (out / "results.md").is_file() and (out / "dots_methods.png").is_file()
