"""scripts/regime_table.py: each criterion of the CAT picture judged by its stated rule on hand-made differences."""
from __future__ import annotations

import json

import pytest

from tests._load_script import load_script


@pytest.fixture(scope="module")
def rt():
    return load_script("scripts/regime_table.py")


def _diff(at1, atk):
    """A difference row at k = 1 and 64 from (mean, low, high) triples."""
    return {"mean": [at1[0], atk[0]], "ci_low": [at1[1], atk[1]], "ci_high": [at1[2], atk[2]]}


def _combined(p1, plain_warm, cat_warm, cat_plain, rewards=((0.20, 0.25),)):
    rows = [{"seed": s, "sft": {"pass@k": [p1[0], 0.97]}, "grpo": {"pass@k": [p1[1], 0.9],
             "train": {"first_reward": r[0], "last_reward": r[1]}}, "grpo_cat": {"pass@k": [p1[2], 0.97]}}
            for s, r in enumerate(rewards)]
    return {"ks": [1, 64], "seeds": [r["seed"] for r in rows], "per_seed": rows,
            "differences": {"plain - warm start": _diff(*plain_warm), "CAT - warm start": _diff(*cat_warm),
                            "CAT - plain": _diff(*cat_plain)}}


def test_the_paper_picture_is_yes_on_every_criterion(rt):
    c = _combined((0.20, 0.26, 0.23), ((0.06, 0.03, 0.10), (-0.06, -0.10, -0.02)),
                  ((0.03, 0.01, 0.05), (-0.003, -0.03, 0.02)), ((-0.03, -0.08, 0.0), (0.058, 0.005, 0.11)),
                  rewards=((0.20, 0.24), (0.22, 0.26)))
    j = rt.judge(c)
    assert j["criteria"] == {"RL sharpens": True, "RL narrows": True, "CAT keeps coverage": True, "CAT between": True,
                             "reward rises": True, "CAT > plain at K": True}
    assert j["plain_reward"] == pytest.approx((0.21, 0.25)) and j["kmax"] == 64
    table = rt.to_markdown([("chosen", j)])
    assert "| chosen | 0,1 | +0.060 [+0.030, +0.100] |" in table and "0.210 -> 0.250" in table
    assert table.splitlines()[2].endswith("| yes | yes | yes | yes | yes | yes |")


def test_each_rule_says_no_at_its_boundary(rt):
    # plain's pass@1 CI touches 0 (not above it), pass@64 CI touches 0 (not below), CAT's coverage CI below 0,
    # CAT's pass@1 above plain's, one seed's reward flat while the other's rises, CAT - plain's CI touching 0:
    # every criterion no
    c = _combined((0.20, 0.22, 0.25), ((0.02, 0.0, 0.04), (-0.03, -0.06, 0.0)),
                  ((0.05, 0.02, 0.08), (-0.05, -0.08, -0.01)), ((0.03, 0.0, 0.06), (0.02, 0.0, 0.04)),
                  rewards=((0.20, 0.30), (0.25, 0.25)))
    assert not any(rt.judge(c)["criteria"].values())


def test_cli_writes_both_files_and_names_a_bad_argument(rt, tmp_path, capsys):
    c = _combined((0.20, 0.26, 0.23), ((0.06, 0.03, 0.10), (-0.06, -0.10, -0.02)),
                  ((0.03, 0.01, 0.05), (0.0, -0.03, 0.02)), ((-0.03, -0.08, 0.0), (0.06, 0.005, 0.11)))
    src = tmp_path / "c.json"
    src.write_text(json.dumps(c))
    assert rt.main([f"a, b=c={src}", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t.md").read_text().splitlines()[2].startswith("| a, b=c |")
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["label"] == "a, b=c"
    assert rt.main([f"a={src}", "--out", str(tmp_path / "lr2.5e-4")]) == 0  # a dot in the name is not a suffix
    assert (tmp_path / "lr2.5e-4.md").is_file() and (tmp_path / "lr2.5e-4.json").is_file()
    with pytest.raises(SystemExit):
        rt.main([str(src), "--out", str(tmp_path / "u")])
    assert "LABEL=COMBINED_JSON" in capsys.readouterr().err
