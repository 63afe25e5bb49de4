"""Rewards: the fast exact path, math-verify in the bounded pool, and robustness to hangs, crashes and junk."""
import time

import numpy as np
import pytest

from jax_cat.rewards import MathVerifier, compute_rewards, fast_verdict, gold_answer, is_equivalent


@pytest.fixture(scope="module")
def verifier():
    # generous: on a loaded shared CPU, sympy's expansion of (x+1)^2 can take seconds (a miss scores 0)
    with MathVerifier(max_workers=2, timeout_s=40.0) as v:
        yield v


# (completion, gold, expected reward) -- decided without sympy.
FAST_CASES = [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{1/2}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.5}", "\\dfrac12", 1.0),
    ("The answer is 5 dollars.", "5", 1.0),
    ("It costs $5.", "5", 1.0),
    ("\\boxed{\\$5.00}", "5", 1.0),
    ("#### -3", "-3", 1.0),
    ("#### 3", "-3", 0.0),
    ("The total is 1,234.", "1234", 1.0),
    ("The total is 1234.", "1,234", 1.0),
    ("\\boxed{50\\%}", "50", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("", "5", 0.0),
    ("I don't know", "5", 0.0),
    ("\\boxed{3} no wait \\boxed{4}", "4", 1.0),
    ("\\boxed{3} no wait \\boxed{4}", "3", 0.0),
    ("\\boxed{1,\\!000}", "1000", 1.0),
    ("\\boxed{1\\,000}", "1000", 1.0),
    ("\\boxed{\\text{Monday}}", "Monday", 1.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})", 1.0),
    ("0363", "0363", 1.0),
    ("363", "0363", 1.0),
    ("0364", "0363", 0.0),
    ("Natalia sold 72 clips.\n#### 72", "Natalia sold 48+24 = 72 clips.\n#### 72", 1.0),  # gold as a solution
    ("\\boxed{\\frac{1}{2}}", "The probability is \\boxed{\\dfrac{1}{2}}.", 1.0),
]


@pytest.mark.parametrize("completion,gold,expected", FAST_CASES)
def test_fast_path_table(completion, gold, expected):
    rewards = compute_rewards([completion], [gold], use_math_verify=False)
    assert rewards.dtype == np.float32 and rewards.shape == (1,)
    assert rewards[0] == expected


# (completion, gold, expected) -- needs math-verify (the fast path returns None for these).
SYMBOLIC_CASES = [
    ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", 1.0),
    ("\\boxed{10^{2}}", "100", 1.0),
    ("\\boxed{0.333333}", "\\frac{1}{3}", 1.0),
    ("\\boxed{0.33}", "\\frac{1}{3}", 0.0),
    ("\\boxed{\\text{(C)}}", "C", 1.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", 1.0),
    ("\\boxed{\\sqrt{5}}", "2", 0.0),
]


def test_symbolic_cases_go_to_math_verify(verifier):
    completions = [c for c, _, _ in SYMBOLIC_CASES]
    golds = [g for _, g, _ in SYMBOLIC_CASES]
    expected = np.array([e for _, _, e in SYMBOLIC_CASES], dtype=np.float32)
    before = verifier.stats["pool"] + verifier.stats["cache_hits"]
    rewards = compute_rewards(completions, golds, verifier=verifier)
    np.testing.assert_array_equal(rewards, expected)
    assert verifier.stats["pool"] + verifier.stats["cache_hits"] - before == len(SYMBOLIC_CASES)
    # fast path really declines them (so the pool is what decided)
    assert all(fast_verdict(gold_answer(c), g) is None for c, g in zip(completions, golds))


def test_pool_is_lazy_reused_and_closable():
    v = MathVerifier(max_workers=1, timeout_s=8.0)
    try:
        # integer answers (the arithmetic task) never start a pool
        r = v.rewards(["0363", "0364", "363", "", "garbage", None, 12], ["0363"] * 7)
        np.testing.assert_array_equal(r, [1, 0, 1, 0, 0, 0, 0])
        assert v._pool is None and v.stats["pool_starts"] == 0
        assert v.check("\\sqrt{4}", "2") is True
        first_pool = v._pool
        assert first_pool is not None
        assert v.check("\\sqrt{9}", "3") is True
        assert v._pool is first_pool and v.stats["pool_starts"] == 1
        assert v.check("\\sqrt{9}", "3") is True and v.stats["cache_hits"] == 1
    finally:
        v.close()
    assert v._pool is None
    with v:  # restarts lazily after close
        assert v.check("\\sqrt{16}", "4") is True
        assert v.stats["pool_starts"] == 2
    assert v._pool is None


def test_pathological_completions_score_zero_within_timeout():
    """A huge nested expression, a power tower and a 1 MB string: reward 0, no exception, bounded time."""
    completions = [
        "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
        "\\boxed{9^{9^{9^{9^{9}}}}}",
        "\\boxed{" + "\\frac{" * 300 + "1" + "}{2}" * 300 + "}",
        "x" * 1_000_000,
        "\\boxed{" + "1+" * 500_000 + "1}",  # 1 MB inside a box: over max_answer_chars
    ]
    with MathVerifier(max_workers=2, timeout_s=4.0) as v:
        start = time.perf_counter()
        rewards = v.rewards(completions, ["1", "1", "2", "1", "500001"])
        elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(rewards, np.zeros(5, np.float32))
    # 3 pool answers, 2 workers, 4 s each at most (+ pool start-up)
    assert elapsed < 30.0, elapsed


def test_hung_crashed_and_raising_checks_score_zero_and_the_pool_recovers():
    from tests.rewards import _faulty

    # letters-only answers that differ from the gold: the fast path declines them, so each goes to the pool
    preds = ["a ok", "hang", "b ok", "c no", "crash", "raise", "d ok", "e ok"]
    with MathVerifier(max_workers=2, timeout_s=1.5, pair_fn=_faulty.ok_or_misbehave) as v:
        start = time.perf_counter()
        verdicts = v.check_many([(p, "x") for p in preds])
        elapsed = time.perf_counter() - start
        assert verdicts == [True, False, True, False, False, False, True, True]
        assert v.stats["timeouts"] == 1 and v.stats["crashes"] == 1 and v.stats["errors"] == 1
        assert v.stats["recycles"] >= 2  # killed after the hang and after the crash
        assert elapsed < 30.0, elapsed
        # the rebuilt pool keeps serving
        assert v.check("f ok", "x") is True and v.check("f no", "x") is False


def test_worker_memory_is_capped():
    from tests.rewards import _faulty

    with MathVerifier(max_workers=1, timeout_s=10.0, memory_limit_mb=128, pair_fn=_faulty.ok_or_misbehave) as v:
        assert v.check_many([("alloc", "x"), ("a ok", "x")]) == [False, True]
        assert v.stats["errors"] == 1 and v.stats["recycles"] == 0  # a MemoryError is a wrong answer, not a crash
    with MathVerifier(max_workers=1, timeout_s=10.0, memory_limit_mb=None, pair_fn=_faulty.ok_or_misbehave) as v:
        assert v.check("alloc", "x") is True  # the same allocation succeeds without the cap


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="completions .3. and golds .2."):
        compute_rewards(["1", "2", "3"], ["1", "2"], use_math_verify=False)
    with pytest.raises(ValueError, match="never 'fork'"):
        MathVerifier(mp_context="fork")
    with pytest.raises(ValueError, match="max_workers"):
        MathVerifier(max_workers=0)


def test_is_equivalent_fast_and_symbolic(verifier):
    assert is_equivalent("\\frac{3}{4}", "0.75", use_math_verify=False)
    assert not is_equivalent("0.76", "0.75", use_math_verify=False)
    assert not is_equivalent(None, "1", use_math_verify=False)
    assert is_equivalent("\\sqrt{2}\\cdot\\sqrt{2}", "2", verifier=verifier)


def test_completion_objects_with_text_are_accepted():
    class Completion:
        def __init__(self, text):
            self.text = text

    rewards = compute_rewards([Completion("#### 7"), Completion("8")], np.array(["7", "7"]), use_math_verify=False)
    np.testing.assert_array_equal(rewards, [1.0, 0.0])
