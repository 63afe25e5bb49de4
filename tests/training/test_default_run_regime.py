"""The default run's qualitative result, with a margin, at the chosen seeds (issue 21): plain GRPO raises held-out
pass@1 over the warm start and narrows pass@64 below it, its training reward ends above where it started (mean over
the seeds), and CAT pass@16 keeps more pass@64 than plain GRPO and about the warm start's, each over the seed set.

Slow: the whole default run (3,000-step SFT warm start, two 600-step RL stages, three evaluations), ~8 min a seed
on 2 idle cores (docs/results.md, "The default run"); skipped unless JAX_CAT_REGIME_TEST=1 and the slow tests are
asked for, so the suite stays inside its budget:

    JAX_CAT_REGIME_TEST=1 python -m pytest -q --run-slow tests/training/test_default_run_regime.py
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SEEDS = (0, 1, 2)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),  # three default runs: ~25 min, past the 600 s default
              pytest.mark.skipif(os.environ.get("JAX_CAT_REGIME_TEST") != "1",
                                 reason="the full default run per seed; set JAX_CAT_REGIME_TEST=1")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """README's first command once a seed, in its own process compiled as users compile it (the pytest process
    compiles at LLVM level 0, tests/conftest.py, and its floating point draws other samples)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_CAT_XLA_CACHE="off")
    env.pop("XLA_FLAGS", None)
    out = {}
    for seed in SEEDS:
        folder = tmp_path_factory.mktemp(f"regime{seed}") / "run"
        proc = subprocess.run([sys.executable, "-m", "jax_cat.train", "--out", str(folder),
                               "--set", f"train.seed={seed}"], env=env, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads((folder / "results.json").read_text())
        rows = [json.loads(line) for line in (folder / "grpo" / "metrics.jsonl").read_text().splitlines()]
        out[seed] = results, [r["reward"] for r in rows if "reward" in r]
    return out


def _mean_over_seeds(runs, a, b, k_index):
    """Mean over the seeds of model a's pass@k minus model b's (k = 1: index 0; k = 64: index -1)."""
    return float(np.mean([res["models"][a]["pass@k"]["mean"][k_index] - res["models"][b]["pass@k"]["mean"][k_index]
                          for res, _ in runs.values()]))


def test_plain_grpo_training_reward_rises_on_average(runs):
    """Measured (docs/results_data/issue21_default_sum3_lr2e-4_st600.md): the last quarter's mean reward (150 steps)
    minus the first quarter's was +.049 / +.029 / +.050 on seeds 0 / 1 / 2 (mean +.043; at the earlier default, 3e-4
    x 200 steps, +.023 / +.021 / -.006). Margin: half the measured mean."""
    rises = []
    for _, reward in runs.values():
        quarter = max(1, len(reward) // 4)
        rises.append(np.mean(reward[-quarter:]) - np.mean(reward[:quarter]))
    assert np.mean(rises) > 0.02, rises


def test_plain_grpo_sharpens_held_out_over_the_seeds(runs):
    """Measured: plain - warm start at pass@1 +.098 / +.157 / +.174 (mean +.143), at pass@64 -.105 / -.030 / -.050
    (mean -.062). Asserted over the seed set, not per seed: compiled differently (the pytest process's LLVM level
    0) seed 0 drew plain pass@64 .955 against the warm start's .945."""
    assert _mean_over_seeds(runs, "grpo", "sft", 0) > 0.02
    assert _mean_over_seeds(runs, "grpo", "sft", -1) < 0


def test_cat_keeps_more_coverage_than_plain_grpo_over_the_seeds(runs):
    """Measured: CAT - plain at pass@64 +.080 / +.015 / +.040 (mean +.045), CAT - warm start -.017 on average."""
    assert _mean_over_seeds(runs, "grpo_cat", "grpo", -1) > 0
    assert _mean_over_seeds(runs, "grpo_cat", "sft", -1) > -0.03
