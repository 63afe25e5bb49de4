"""scripts/results_tables.py: docs tables written from results.json between markers, with provenance; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._load_script import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rt():
    return load_script("scripts/results_tables.py", register=True)


def _result(seed: int, cat64: float) -> dict:
    ks = [1, 2, 4, 8, 16, 32, 64]
    curve = lambda v: {"k": ks, "mean": [v] * 6 + [v + 0.5], "ci_low": [0] * 7, "ci_high": [1] * 7}  # noqa: E731
    return {"settings": {"seed": seed, "preset": "sum3_2d", "sft_steps": 10, "grpo_steps": 5, "grpo_learning_rate": 1e-4,
                         "grpo_warmup_steps": 2, "grpo_prompts": 4, "group_size": 4, "cat_strategy": "pass@8",
                         "eval_samples": 64},
            "num_problems": 7, "wall_seconds": 12.0,
            "provenance": {"commit": "abc123", "dirty": False, "cpu": "Test CPU", "cores": 2, "jax": "0.0",
                           "utc": "2026-12-07 06:00"},
            "models": {"sft": {"label": "SFT warm start", "pass@k": curve(0.1)},
                       "grpo": {"label": "plain GRPO", "pass@k": curve(0.2)},
                       "grpo_cat": {"label": "CAT GRPO pass@8", "pass@k": curve(0.2)}},
            "cat_minus_plain": {"k": ks, "mean": [0.0] * 6 + [cat64], "ci_low": [-0.1] * 7, "ci_high": [0.1] * 7}}


def test_tables_go_between_the_markers_with_provenance(rt, tmp_path):
    files = []
    for seed, cat64 in ((0, 0.05), (1, 0.15)):
        files.append(tmp_path / f"r{seed}.json")
        files[-1].write_text(json.dumps(_result(seed, cat64)))
    doc = tmp_path / "results.md"
    doc.write_text("# title\nkept\n<!-- default-run:begin -->\nold table\n<!-- default-run:end -->\ntail kept\n")
    assert rt.main(["--default", *map(str, files), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# title\nkept\n") and text.endswith("<!-- default-run:end -->\ntail kept\n")
    assert "old table" not in text and "commit abc123" in text and "Test CPU" in text
    assert "| seed 1 | plain GRPO | 0.200 | 0.200 | 0.200 | 0.700 |" in text
    assert "k=64: +0.050 .. +0.150" in text  # the range over seeds, not one draw
    assert "--seed 1" in text


def test_bad_input_is_one_line_exit_2(rt, tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text("no markers\n")
    good = tmp_path / "r.json"
    good.write_text(json.dumps(_result(0, 0.1)))
    assert rt.main(["--default", str(good), "--doc", str(doc)]) == 2
    assert "markers" in capsys.readouterr().err and doc.read_text() == "no markers\n"
    assert rt.main(["--default", str(tmp_path / "missing.json"), "--doc", str(doc)]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and len(err.strip().splitlines()) == 1


def test_committed_doc_matches_its_shipped_results(rt):
    # docs/results.md's generated sections name the results.json they came from (docs/results_data/); regenerating
    # them must give the committed text, so a number in the doc cannot drift from the file it cites
    doc = (ROOT / "docs" / "results.md").read_text()
    assert rt.section_sources(doc, "default-run"), "the default-run section names no results.json"
    assert rt.regenerate(doc) == doc
    assert rt.main(["--check"]) == 0


def test_check_reports_a_drifted_doc(rt, tmp_path, capsys):
    f = tmp_path / "r0.json"
    f.write_text(json.dumps(_result(0, 0.05)))
    doc = tmp_path / "results.md"
    doc.write_text("<!-- default-run:begin -->\n<!-- default-run:end -->\n")
    assert rt.main(["--default", str(f), "--doc", str(doc)]) == 0
    assert rt.main(["--check", "--doc", str(doc)]) == 0
    doc.write_text(doc.read_text().replace("| 0.200 |", "| 0.201 |", 1))
    assert rt.main(["--check", "--doc", str(doc)]) == 1
    assert "default-run" in capsys.readouterr().err


def test_a_second_section_of_a_kind_is_written_and_checked_by_its_own_name(rt, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result(0, 0.05)))
    b.write_text(json.dumps(_result(1, 0.15)))
    doc = tmp_path / "results.md"
    doc.write_text("<!-- default-run:begin -->\n<!-- default-run:end -->\nmid\n"
                   "<!-- default-run-old:begin -->\n<!-- default-run-old:end -->\n")
    assert rt.main(["--default", str(a), "--doc", str(doc)]) == 0
    assert rt.main(["--default", str(b), "--section", "default-run-old", "--doc", str(doc)]) == 0
    assert rt.section_names(doc.read_text()) == ["default-run", "default-run-old"]
    assert rt.section_sources(doc.read_text(), "default-run-old") == [str(b)]
    assert rt.main(["--check", "--doc", str(doc)]) == 0
    doc.write_text(doc.read_text().replace("| seed 1 | plain GRPO | 0.200", "| seed 1 | plain GRPO | 0.201", 1))
    assert rt.main(["--check", "--doc", str(doc)]) == 1
    assert "['default-run-old']" in capsys.readouterr().err
