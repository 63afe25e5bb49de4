"""The default run's qualitative result, with a margin, at the chosen seeds (issue 21): plain GRPO's training reward
rises, and CAT pass@N keeps at least plain GRPO's pass@64.

Slow: the whole default run (SFT warm start, two RL stages, three evaluations), about 2 min a seed on 2 idle
cores (estimated from the old default's 88 s) and ~27 min a seed measured with three seeds in parallel at load
average 15-20; it is skipped unless JAX_CAT_REGIME_TEST=1 so the suite stays
inside its budget:

    JAX_CAT_REGIME_TEST=1 python -m pytest -q tests/training/test_default_run_regime.py
"""
import json
import os

import numpy as np
import pytest

from jax_cat.training.default_run import DefaultRun, run_default

SEEDS = (0, 1, 2)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("JAX_CAT_REGIME_TEST") != "1",
                                 reason="the full default run per seed; set JAX_CAT_REGIME_TEST=1")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for seed in SEEDS:
        folder = tmp_path_factory.mktemp(f"regime{seed}")
        results = run_default(DefaultRun(seed=seed), folder, say=lambda _: None)
        rows = [json.loads(line) for line in (folder / "grpo" / "metrics.jsonl").read_text().splitlines()]
        out[seed] = results, [r["reward"] for r in rows if "reward" in r]
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_grpo_training_reward_rises(runs, seed):
    """Measured on the shared 2-core machine (docs/results.md, issue 21 continued): the last two 25-step windows'
    mean reward beat the first two by +.034 / +.063 / +.056 on seeds 0 / 1 / 2."""
    _, reward = runs[seed]
    quarter = max(1, len(reward) // 4)
    assert np.mean(reward[-quarter:]) > np.mean(reward[:quarter]) + 0.02, reward


@pytest.mark.parametrize("seed", SEEDS)
def test_cat_keeps_at_least_plain_grpo_coverage(runs, seed):
    results, _ = runs[seed]
    plain, cat = (results["models"][m]["pass@k"]["mean"][-1] for m in ("grpo", "grpo_cat"))
    assert cat >= plain - 0.01, (cat, plain)
