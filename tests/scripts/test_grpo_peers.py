"""benchmarks/grpo_peers.py's non-timing logic on canned rows (nothing is run, nothing timed): argument checks, the
result-line parser, the per-side medians and ratios, the decode byte count, and the peers' stdlib reward against
the trainer's own `exact_match_rewards`."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests._load_script import load_script


peers = load_script("benchmarks/grpo_peers.py", register=True)
common = sys.modules["common"]


def test_args_defaults_and_bad_side():
    args = peers.parse_args([])
    assert args.sides == ["jax-cat", "jax-cat-notorch", "trl", "tunix"]
    assert peers.parse_args(["--sides", "trl, jax-cat"]).sides == ["trl", "jax-cat"]
    assert (args.repeats, args.warmup, args.steps, args.cpu) == (3, 2, 10, 0)
    with pytest.raises(SystemExit):
        peers.parse_args(["--sides", "jax-cat,vllm"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--warmup", "0"])


def test_parse_result_takes_the_last_result_line():
    out = "noise\n" + common.RESULT_PREFIX + '{"a": 1}\nmore\n' + common.RESULT_PREFIX + '{"a": 2}\n'
    assert peers.parse_result(out) == {"a": 2}
    assert peers.parse_result("no result here") is None


def _row(side, step, gen, rss):
    return {"side": side, "step_s": step, "generate_s": gen, "update_s": step - gen, "step_cpu_s": step,
            "generate_cpu_s": gen, "update_cpu_s": step - gen,
            "first_step_s": 10.0, "start_to_first_step_end_s": 20.0, "peak_rss_mib": rss, "process_cpu_s": 30.0}


def test_summary_medians_ranges_and_ratios():
    rows = [_row("jax-cat", s, 0.1, 700) for s in (0.5, 0.4, 0.6)]
    rows += [_row("trl", s, 0.2, 600) for s in (1.0, 0.8, 0.9)]
    rows += [_row("tunix", s, 0.3, 900) for s in (0.7, 0.7, 0.7)]
    rows += [{"side": "absent", "error": "not installed"}]
    summ = peers.summary(rows)
    assert summ["jax-cat"]["step_s"] == {"median": 0.5, "range": (0.4, 0.6)}
    assert summ["trl"]["step_s"]["median"] == 0.9
    assert summ["absent"] == {"error": "not installed"}
    r = summ["ratios"]
    assert r["faster_peer"] == "tunix"                          # 0.7 < 0.9
    assert r["step_vs_faster_peer"] == pytest.approx(0.5 / 0.7)
    assert r["update_vs_faster_peer"] == pytest.approx(0.4 / 0.4)
    assert r["peak_rss_vs_trl"] == pytest.approx(700 / 600)
    assert r["step_cpu_vs_faster_peer"] == pytest.approx(0.5 / 0.7)
    table = peers.table(summ)
    assert "| jax-cat | 0.500 [0.400-0.600] |" in table and "| absent | not installed |" in table


def test_decode_estimate_counts_weights_and_cache():
    est = peers.decode_estimate(0.1, 10.0, prompt_len=13, prompts=8, rows=64, new_tokens=8)
    kv_slot = 4 * 2 * 2 * 64 * 4                       # layers x (K, V) x kv heads x head_dim x float32
    step = 2_958_080 * 4 + 64 * 21 * kv_slot
    assert est["bytes_per_decode_step_mb"] == pytest.approx(step / 1e6)
    assert est["bandwidth_floor_s"] == pytest.approx(8 * step / 10e9)
    assert est["rollout_gflop"] == pytest.approx(2 * 2_958_080 * (8 * 13 + 64 * 8) / 1e9)
    assert est["fraction_of_bandwidth"] == pytest.approx(est["bandwidth_floor_s"] / 0.1)


def test_peer_reward_is_the_trainers_exact_match():
    from jax_cat.rewards.exact import exact_match_rewards

    completions = ["0629", " 0629\n", "629", "", "0629 ", "06290", None]
    golds = ["0629"] * 6 + ["1"]
    np.testing.assert_array_equal(common.exact_rewards(completions, golds), exact_match_rewards(completions, golds))


def test_jax_cat_side_settings_are_the_workload(tmp_path):
    side = load_script("benchmarks/peers/jax_cat_side.py", register=True)
    from jax_cat.training.config import load_config

    w = common.Workload(checkpoint=str(tmp_path), prompts=["1+2="] * 96, answers=["3"] * 96, learning_rate=3e-5)
    cfg = load_config(None, side.overrides(w))
    assert (cfg.train.method, cfg.train.steps, cfg.train.updates_per_batch) == ("grpo", 12, 1)
    assert (cfg.data.batch_size, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (8, 8, 8)
    assert (cfg.optimizer.learning_rate, cfg.loss.beta, cfg.rollout.temperature) == (3e-5, 0.0, 1.0)
    assert json.loads(json.dumps(side.overrides(w)))  # plain values: what `--set` could carry
