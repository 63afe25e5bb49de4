"""The exact-format verifier of the shipped arithmetic task: only the answer itself counts (issue 21)."""
import numpy as np
import pytest

from jax_cat.rewards import exact_match, exact_match_rewards
from jax_cat.training.config import DataConfig
from jax_cat.training.data import task_reward_fn


def test_only_the_exact_answer_counts_for_a_zero_padded_gold():
    texts = ["084", "084\n", "=84", "1+084", "84", "0084", "084=084", "", "08 4"]
    assert exact_match_rewards(texts, ["084"] * len(texts)).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_no_text_or_gold_scores_zero():
    assert not exact_match(None, "1") and not exact_match("1", None) and not exact_match(" ", " ")
    assert exact_match_rewards([], []).dtype == np.float32
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        exact_match_rewards(["1", "2"], ["1"])


def test_the_plain_arithmetic_task_trains_and_evaluates_on_the_exact_check():
    fn = task_reward_fn(DataConfig(dataset="arithmetic:sum3_2d", style="plain"))
    assert fn is exact_match_rewards
    assert fn(["=84", "084"], ["084", "084"]).tolist() == [0, 1]  # the general verifier accepts "=84" too
    assert task_reward_fn(DataConfig(dataset="arithmetic:sum3", style="natural")) is None  # boxed answers: general
    assert task_reward_fn(DataConfig(dataset="gsm8k")) is None


def test_the_trainer_evaluation_scores_arithmetic_with_the_exact_check(monkeypatch):
    import jax_cat.evaluate
    from jax_cat.training.config import load_config
    from jax_cat.training.run import evaluate_model

    seen = {}
    monkeypatch.setattr(jax_cat.evaluate, "evaluate", lambda *a, **kw: seen.update(kw) or {"config": {}})
    evaluate_model(load_config("grpo", ["eval.num_problems=2"]), None, None, None)
    assert seen["reward_fn"] is exact_match_rewards
