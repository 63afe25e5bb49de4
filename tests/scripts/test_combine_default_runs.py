"""scripts/combine_default_runs.py: per-seed curves and CAT - plain over seeds, on hand-worked counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._load_script import load_script


@pytest.fixture(scope="module")
def cdr():
    return load_script("scripts/combine_default_runs.py")


def _run(folder: Path, seed: int, counts: dict[str, list[int]], *, lr: float = 3e-4) -> Path:
    """A default-run folder with n = 4 samples on 2 problems, k = 1 and 4 (pass@1 = c/4, pass@4 = [c > 0])."""
    models = {m: {"n": 4, "num_correct": c,
                  "pass@k": {"k": [1, 4], "mean": [sum(x / 4 for x in c) / 2, sum(x > 0 for x in c) / 2]}}
              for m, c in counts.items()}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "config": {"train": {"seed": seed}, "optimizer": {"learning_rate": lr}, "model": {"path": str(folder)}},
        "models": models, "provenance": {"commit": "abc"}}))
    return folder


def test_differences_over_seeds_match_the_hand_worked_means_and_ranges(cdr, tmp_path):
    a = _run(tmp_path / "s0", 0, {"sft": [2, 0], "grpo": [4, 0], "grpo_cat": [2, 1]})
    b = _run(tmp_path / "s1", 1, {"sft": [1, 1], "grpo": [3, 1], "grpo_cat": [3, 1]})
    out = cdr.combine([cdr.load_run(a), cdr.load_run(b)])
    d = out["differences"]["CAT - plain"]
    # seed 0: pass@1 (.375 - .5) = -.125, pass@4 (1 - .5) = +.5; seed 1: 0 and 0
    assert d["mean"] == pytest.approx([-0.0625, 0.25])
    assert d["seed_min"] == pytest.approx([-0.125, 0.0]) and d["seed_max"] == pytest.approx([0.0, 0.5])
    assert d["ci_low"][1] <= 0.25 <= d["ci_high"][1]
    plain = out["differences"]["plain - warm start"]  # seed 0: +.25, 0; seed 1: +.25, 0
    assert plain["mean"] == pytest.approx([0.25, 0.0])
    assert out["seeds"] == [0, 1] and out["num_problems"] == 2
    table = cdr.to_markdown(out)
    assert "| 0 | plain GRPO | 0.500 | 0.500 |" in table and "-0.062" in table


def test_runs_that_differ_beyond_the_seed_are_refused_naming_the_key(cdr, tmp_path):
    a = _run(tmp_path / "s0", 0, {"sft": [1, 1], "grpo": [1, 1], "grpo_cat": [1, 1]})
    b = _run(tmp_path / "s1", 1, {"sft": [1, 1], "grpo": [1, 1], "grpo_cat": [1, 1]}, lr=1e-3)
    with pytest.raises(SystemExit, match="optimizer.learning_rate"):
        cdr.combine([cdr.load_run(a), cdr.load_run(b)])
    c = _run(tmp_path / "s0b", 0, {"sft": [1, 1], "grpo": [1, 1], "grpo_cat": [1, 1]})
    with pytest.raises(SystemExit, match="repeated training seeds"):
        cdr.combine([cdr.load_run(a), cdr.load_run(c)])
