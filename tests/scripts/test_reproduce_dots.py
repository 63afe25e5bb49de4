"""scripts/reproduce_dots.py: the DoTS reproduction's pieces against hand-computed values, its bad-input error, and
one end-to-end run with tiny settings (every stage, every method, the three searches) that must write its tables."""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import pytest

from tests._load_script import load_script

ROOT = Path(__file__).resolve().parents[2]
rd = load_script("scripts/reproduce_dots.py", register=True)  # dataclasses look their module up in sys.modules


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
    """Opt-in (slow, ~50 s): the reproduction script end to end with tiny settings. By default DoTS end to end is
    tests/merging/test_dots_cli.py::test_end_to_end_then_resume (the merge CLI: study, trials, resume, the written
    merge against a hand-built one), and this script's pieces are the hand-computed tests above."""
    out = tmp_path / "run"
    code = rd.main(["--out", str(out), "--train-records", "256", "--base-steps", "1", "--sft-steps", "1",
                    "--base-lr", "1e-3", "--sft-lr", "1e-3",
                    "--rl-steps", "1", "--rl-prompts", "2", "--group-size", "2", "--batch-size", "4", "--mesh", "1,1,1",
                    "--joint-rounds", "1", "--eval-problems", "4", "--eval-samples", "1", "--trials", "1",
                    "--queries-per-task", "1", "--votes", "2", "--base-tasks", "add2,sub2", "--rl-warmup", "1",
                    "--path-points", "2"])  # --votes 2: DotsConfig's minimum
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
    # the straight lines' ends are the models themselves: base -> SFT at t = 1 is the SFT model's loss
    paths = res["connectivity"]["paths"]
    assert paths["base_sft"]["rows"][-1]["loss"] == pytest.approx(paths["sft_rl"]["rows"][0]["loss"], abs=1e-6)
    assert paths["base_sft"]["rows"][0]["loss"] == pytest.approx(paths["base_rl"]["rows"][0]["loss"], abs=1e-6)
    assert (out / "data" / "add2+sub2_train.jsonl").is_file()


def _compact_run(seed: int, sub2: float, barrier: float) -> dict:
    settings = dict(dataclasses_asdict(rd.Settings()), seed=seed, base_tasks="add2,sub2", rl_warmup=10,
                    out=f"/tmp/x/seed{seed}")
    conn = {"t": [0.0, 0.5, 1.0], "skills": ["sub2", "add2"], "paths": {
        name: {"barrier": {f"{m}/{k}": barrier for m in ("loss", "pass@1") for k in ("sub2", "add2", "mean")},
               "rows": [{"t": t, "loss": {"sub2": 1.0 + t, "add2": 2.0, "mean": 1.5 + t / 2},
                         "pass@1": {"sub2": 0.5, "add2": 0.25, "mean": 0.375}} for t in (0.0, 0.5, 1.0)]}
        for name in ("base_sft", "base_rl", "sft_rl")}}
    return {"settings": settings, "wall_seconds": 60.0 + seed, "loadavg_end": [3.0, 2.0, 1.0],
            "provenance": {"commit": "abc123def456", "dirty": False, "cpu": "Test CPU", "cores": 2, "jax": "0.0",
                           "utc": "2026-12-07 14:00"},
            "properties": {"total": {"ratio_l2": 5.0, "conflict_rate": 0.5, "cosine": 0.0}},
            "connectivity": conn,
            "models": {"base": {"eval": {"sub2": {"pass@1": sub2}, "add2": {"pass@1": 0.5}}, "seconds": 10.0}}}


def dataclasses_asdict(x):
    import dataclasses

    return dataclasses.asdict(x)


def test_tables_rewrite_only_their_section_with_provenance_and_the_rerun_command(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"command": "x", "runs": {"0": _compact_run(0, 0.1, 0.0),
                                                             "1": _compact_run(1, 0.3, 0.02)}}))
    doc = tmp_path / "doc.md"
    doc.write_text("# t\nkept\n<!-- dots:mix:begin -->\nold\n<!-- dots:mix:end -->\ntail\n")
    assert rd.main(["--tables", str(results), "--doc", str(doc), "--section", "mix"]) == 0
    text = doc.read_text()
    assert text.startswith("# t\nkept\n<!-- dots:mix:begin -->\n") and text.endswith("<!-- dots:mix:end -->\ntail\n")
    assert "old" not in text
    # the one rerun command: the seeds and every setting that differs from the defaults
    assert "python scripts/reproduce_dots.py --seeds 0,1 --base-tasks add2,sub2 --rl-warmup 10 --out runs/dots" in text
    assert "| base | 0.200 +- 0.141 | 0.500 +- 0.000 | 0.350 +- 0.071 |  | 10 |" in text
    assert "| base -> SFT | 0.010 +- 0.014 |" in text  # barriers 0 and .02 over the two seeds
    # each line's loss per skill, and SFT -> RL's pass@1, at every t (mean over seeds)
    assert "| 0.5 | 1.500 | 2.000 | 1.500 | 2.000 | 1.500 | 2.000 | 0.500 | 0.250 |" in text
    assert "commit abc123def456, Test CPU (2 cores)" in text and "61 s wall" in text
    assert f"--tables {results}" in text


def test_tables_without_markers_is_one_line_exit_2_and_the_doc_unchanged(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": {"0": _compact_run(0, 0.1, 0.0)}}))
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    assert rd.main(["--tables", str(results), "--doc", str(doc), "--section", "mix"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dots:mix:begin" in err[0] and doc.read_text() == "no markers\n"
    assert rd.main(["--tables", str(results), "--doc", str(doc)]) == 2  # --section missing
    assert rd.main(["--tables", str(tmp_path / "missing.json"), "--doc", str(doc), "--section", "mix"]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_tables_from_several_seed_files_ship_one_compact_file(tmp_path):
    files = []
    for seed, sub2 in ((0, 0.1), (1, 0.3)):
        files.append(tmp_path / f"s{seed}.json")
        files[-1].write_text(json.dumps({"runs": {str(seed): _compact_run(seed, sub2, 0.0)}}))
    doc, ship = tmp_path / "doc.md", tmp_path / "shipped.json"
    doc.write_text("<!-- dots:mix:begin -->\n<!-- dots:mix:end -->\n")
    assert rd.main(["--tables", *map(str, files), "--doc", str(doc), "--section", "mix", "--ship", str(ship)]) == 0
    first = doc.read_text()
    assert "| base | 0.200 +- 0.141 |" in first and f"Source: `{ship}`" in first
    assert sorted(json.loads(ship.read_text())["runs"]) == ["0", "1"]
    # regenerating from the shipped file alone writes the same section
    assert rd.main(["--tables", str(ship), "--doc", str(doc), "--section", "mix"]) == 0
    assert doc.read_text() == first
    assert rd.main(["--tables", str(files[0]), str(files[0]), "--doc", str(doc), "--section", "mix"]) == 2


@pytest.mark.parametrize("section, source", [("mix", "docs/results_data/dots_mix.json"),
                                             ("lmc-default", "docs/results_data/dots_lmc_default.json")])
def test_committed_doc_sections_regenerate_from_their_shipped_results(section, source):
    # docs/results_dots.md's generated sections are exactly what the shipped results files give: a table edited by
    # hand, or a results file changed without rewriting the doc, fails here
    doc = (ROOT / "docs" / "results_dots.md").read_text()
    begin, end = f"<!-- dots:{section}:begin -->\n", f"\n<!-- dots:{section}:end -->"
    committed = doc.split(begin, 1)[1].split(end, 1)[0]
    assert committed == rd.doc_section(json.loads((ROOT / source).read_text()), source)
