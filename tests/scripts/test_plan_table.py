"""docs/planning.md's planning table is generated from the results file benchmarks/plan_memory.py writes (issue 20):
the block between the markers equals what `--table docs/results_data/plan_memory.jsonl` renders, every row records
its commit, CPU and settings, and the `--plan` output recorded beside the 1.5B row has that row's figures."""
from __future__ import annotations

import json
from pathlib import Path

from tests._load_script import load_script

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("docs/results_data/plan_memory.jsonl")
plan_memory = load_script("benchmarks/plan_memory.py")


def _rows():
    return [json.loads(line) for line in (ROOT / RESULTS).read_text().splitlines() if line.strip()]


def test_the_docs_table_is_the_rendered_results_file():
    rows = _rows()
    doc = (ROOT / "docs" / "planning.md").read_text()
    block = doc.split(plan_memory.TABLE_BEGIN, 1)[1].split(plan_memory.TABLE_END, 1)[0]
    assert plan_memory.table(rows) + "\n\n" + plan_memory.table_source(rows, RESULTS) in block


def test_each_row_records_commit_cpu_and_settings():
    for r in _rows():
        ctx = r["context"]
        assert len(ctx["commit"]) == 12 and ctx["cpu"]["model"] and ctx["libraries"]["jax"] == r["jax"]
        assert ctx["command"].startswith("benchmarks/plan_memory.py") and r["devices"] == 8
        assert r["layers"] == plan_memory.MODELS[r["model"]]["num_hidden_layers"]  # full depth, not cut


def test_the_recorded_plan_output_has_the_rows_figures():
    (r,) = [r for r in _rows() if "cli" in r]
    assert r["cli"]["same_figures"]
    figures = plan_memory.plan_figures(r["cli"]["text"])
    for phase in r["phases"]:
        want = [phase[k] for k in ("params_gib", "optimizer_gib", "temp_gib", "other_gib", "peak_gib")]
        assert [round(w, 2) for w in want] == figures[phase["name"]], phase["name"]


def test_plan_figures_parses_the_plan_table():
    text = ("memory plan of r: qwen2, 1.54B parameters, grpo, mesh data=1 x fsdp=8 x tensor=1 (8 cpu devices)\n"
            "per device, GiB         params  optim.    temp   other    peak   what\n"
            "training step             0.72    1.44    5.39    0.00    7.55   512 x 1536 tokens\n"
            "rollouts (sampler)        0.72    1.44    7.00    0.00    9.16   64 prompts x 8 samples\n")
    assert plan_memory.plan_figures(text) == {"training step": [0.72, 1.44, 5.39, 0.0, 7.55],
                                              "rollouts (sampler)": [0.72, 1.44, 7.0, 0.0, 9.16]}
