"""The shipped arithmetic task: exact formats, correct answers, purity in (seed, split, index), held-out split."""
import re

import numpy as np
import pytest

from jax_cat.data import LEVELS, ArithmeticSpec, ArithmeticTask, make_problem, prompt_length
from jax_cat.rewards import compute_rewards


def _value(expression: str) -> int:
    """Independent evaluation: Python's own precedence on the operands with leading zeros dropped."""
    return eval(re.sub(r"\d+", lambda m: str(int(m.group())), expression))  # noqa: S307 - digits and + - * only


def test_sum3_is_the_feasibility_note_format():
    task = ArithmeticTask("sum3")
    assert prompt_length("sum3") == 12
    for i in range(300):
        p = task.problem(i)
        assert re.fullmatch(r"\d{3}\+\d{3}\+\d{3}=", p["prompt"]), p
        assert re.fullmatch(r"\d{4}", p["answer"]), p
        assert int(p["answer"]) == sum(int(x) for x in p["prompt"][:-1].split("+"))
        assert p["solution"] == p["answer"] and p["level"] == 0 and p["id"].startswith("sum3/train/")
    # operand digit counts 1..3 are all common (uniform over digit count)
    operands = [int(x) for i in range(300) for x in task.problem(i)["prompt"][:-1].split("+")]
    counts = np.bincount([len(str(x)) for x in operands], minlength=4)[1:]
    assert all(c > 200 for c in counts), counts


def test_sum2_2d_is_two_padded_numbers_and_a_three_digit_answer():
    task = ArithmeticTask("sum2_2d")
    assert prompt_length("sum2_2d") == 6
    for i in range(300):
        p = task.problem(i)
        assert re.fullmatch(r"\d{2}\+\d{2}=", p["prompt"]), p
        assert re.fullmatch(r"\d{3}", p["answer"]), p
        assert int(p["answer"]) == _value(p["prompt"][:-1])
    p = make_problem("sum2_2d", seed=3, split="train", index=5)
    a, b = (int(x) for x in p["prompt"][:-1].split("+"))
    assert p["prompt"] == f"{a:02d}+{b:02d}=" and p["answer"] == f"{a + b:03d}"


def test_known_example_shape():
    spec = ArithmeticSpec(3, 1, 3, ("+",), pad_operands=True, answer_width=4, name="t")
    assert make_problem(spec, seed=0, split="x", index=0)["prompt"].count("+") == 2
    # hand-check the written form of a problem whose operands we can read back
    p = make_problem("sum3", seed=7, split="train", index=3)
    a, b, c = (int(x) for x in p["prompt"][:-1].split("+"))
    assert p["prompt"] == f"{a:03d}+{b:03d}+{c:03d}=" and p["answer"] == f"{a + b + c:04d}"


def test_problem_is_a_pure_function_of_seed_split_index():
    a, b = ArithmeticTask("level4", seed=3), ArithmeticTask("level4", seed=3)
    assert [a.problem(i) for i in (0, 17, 999)] == [b.problem(i) for i in (999, 17, 0)][::-1]
    assert make_problem(4, seed=3, split="train", index=5) == make_problem(4, seed=3, split="train", index=5)
    assert ArithmeticTask("level4", seed=4).problem(0)["prompt"] != a.problem(0)["prompt"]
    assert make_problem(4, seed=3, split="valid", index=0) != make_problem(4, seed=3, split="train", index=0)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_levels_are_graded_and_answers_exact(level):
    spec = LEVELS[level]
    task = ArithmeticTask(level)
    for i in range(200):
        p = task.problem(i)
        expression = p["prompt"][:-1]
        operands = re.split(r"[+\-*]", expression)
        assert len(operands) == spec.num_operands
        assert all(spec.min_digits <= len(x) <= spec.max_digits for x in operands)
        assert set(re.findall(r"[+\-*]", expression)) <= set(spec.ops)
        assert int(p["answer"]) == _value(expression), p
        assert p["level"] == level


def test_natural_style_is_verifiable_by_the_rewards():
    task = ArithmeticTask([4, 5, 6], style="natural")
    problems = [task.problem(i) for i in range(30)]
    assert [p["level"] for p in problems[:6]] == [4, 5, 6, 4, 5, 6]  # mixed specs: index mod count
    for p in problems:
        assert p["prompt"].startswith("What is ") and "\\boxed{}" in p["prompt"]
        assert int(p["answer"]) == _value(p["prompt"][len("What is ") : p["prompt"].index("?")])
    rewards = compute_rewards([p["solution"] for p in problems], [p["answer"] for p in problems], use_math_verify=False)
    np.testing.assert_array_equal(rewards, np.ones(30, np.float32))


@pytest.mark.parametrize("preset", ["sum3", 1, 2])
def test_train_never_shows_a_test_prompt(preset):
    task = ArithmeticTask(preset, seed=11)
    test = task.test_set()
    assert len(test) == task.test_size == len({p["prompt"] for p in test})
    assert [p["id"] for p in test[:2]] == [f"{task.name}/test/0", f"{task.name}/test/1"]
    assert test == ArithmeticTask(preset, seed=11).test_set()  # fixed
    held_out = {p["prompt"] for p in test}
    train = [task.problem(i) for i in range(3000)]
    assert not held_out & {p["prompt"] for p in train}
    if preset == 1:  # 100 possible prompts, 25 held out: redraws must have happened, and ids say so
        assert task.test_size == 25
        assert any("#" in p["id"] for p in train)
        assert len({p["prompt"] for p in train}) == 75


def test_sources_and_errors():
    task = ArithmeticTask("sum3", test_size=10)
    src = task.source("train", size=50)
    assert len(src) == 50 and src[49] == task.problem(49) and src[-1] == src[49]
    assert [p["id"] for p in task.source("test")[:3]] == ["sum3/test/0", "sum3/test/1", "sum3/test/2"]
    with pytest.raises(IndexError):
        src[50]
    with pytest.raises(ValueError, match="test_size=60"):
        ArithmeticTask(1, test_size=60)
    with pytest.raises(ValueError, match="unknown arithmetic preset"):
        ArithmeticTask("sum4")
    with pytest.raises(ValueError, match="answer_width"):
        ArithmeticSpec(3, 1, 3, ("+", "-"), answer_width=4)
    with pytest.raises(ValueError, match="answer_width=3"):
        ArithmeticSpec(3, 1, 3, ("+",), answer_width=3)
