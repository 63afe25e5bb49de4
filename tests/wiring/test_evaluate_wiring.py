"""evaluate's wiring: golds stay with their problems, best-of-n ranks by MEAN log-prob, the interval is 95%,
and the sampler settings reach generate.

`generate` is replaced by a stand-in that returns hand-made completions (unequal lengths, known log-probs), so every
expected value below is worked out by hand or from a closed form, not from evaluate's own code.
"""
import math

import numpy as np
import pytest

import jax_cat.sampling
from jax_cat.evaluate import evaluate
from jax_cat.sampling import Completion


def completion(text, logprobs):
    lp = np.asarray(logprobs, np.float32)
    return Completion(text=text, tokens=np.arange(len(lp), dtype=np.int32), logprobs=lp, sample_logprobs=lp,
                      finish_reason="eos")


def exact_match_reward(completions, golds):
    """Gold-dependent: 1 iff the completion's '#### x' answer is this problem's gold."""
    return [float(c.rsplit("#### ", 1)[-1].strip() == str(g)) for c, g in zip(completions, golds)]


class FakeGenerate:
    """Records the settings evaluate passes and returns `pools[i]` for the i-th prompt."""

    def __init__(self, pools):
        self.pools, self.calls = pools, []

    def __call__(self, model, tokenizer, prompts, **kwargs):
        self.calls.append(kwargs)
        assert len(prompts) == len(self.pools)
        return [list(pool) for pool in self.pools]


def setting(call, name):
    """A sampler setting as evaluate passed it: a keyword, or a field of a SamplingParams-like object."""
    if name in call:
        return call[name]
    for value in call.values():
        if hasattr(value, name) and hasattr(value, "top_p"):
            return getattr(value, name)
    raise KeyError(name)


class PlainTokenizer:
    chat_template = None
    pad_token_id, eos_token_id = 0, 2


# Problem golds differ (11, 22, 33); completions answer them by position. Problem 0: the correct sample is short with
# a low SUM but the best MEAN; problem 1: the correct sample is long with a worse mean than the wrong short one.
POOLS = [
    [completion("#### 11", [-0.9]),                       # correct, mean -0.9, sum -0.9
     completion("so #### 22", [-0.6, -0.6, -0.6, -0.6])],  # wrong (problem 1's gold), mean -0.6, sum -2.4
    [completion("#### 22", [-0.5, -0.5, -0.5, -0.5]),     # correct, mean -0.5, sum -2.0
     completion("#### 11", [-1.0])],                      # wrong, mean -1.0, sum -1.0
    [completion("#### 0", [-0.1, -0.1]),                  # wrong, mean -0.1
     completion("#### 33", [-0.2, -0.2, -0.2])],          # correct, mean -0.2
]
PROBLEMS = [{"prompt": f"q{i}", "answer": g, "id": f"p{i}"} for i, g in enumerate(["11", "22", "33"])]


def test_golds_bon_and_settings_are_wired(monkeypatch):
    fake = FakeGenerate(POOLS)
    monkeypatch.setattr(jax_cat.sampling, "generate", fake)
    out = evaluate(object(), PlainTokenizer(), PROBLEMS, n=2, ks=[1, 2], temperature=0.7, top_p=0.3, top_k=5,
                   max_new_tokens=9, seed=4, reward_fn=exact_match_reward, keep_samples=True, num_resamples=50)
    # golds aligned with their problems: rewards [1, 0], [1, 0], [0, 1] (any shift of golds changes them)
    assert [[s["reward"] for s in row] for row in out["samples"]] == [[1, 0], [1, 0], [0, 1]]
    assert out["golds"] == ["11", "22", "33"]
    assert out["metrics"]["pass@k"]["per_problem"] == [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
    # best-of-2 by MEAN log-prob: p0 picks mean -0.6 (wrong), p1 -0.5 (correct), p2 -0.1 (wrong) -> [0, 1, 0].
    # By SUM it would be [1, 0, 0]: p0 -0.9 > -2.4 (correct), p1 -1.0 > -2.0 (wrong), p2 -0.2 > -0.6 (wrong).
    bon = out["metrics"]["bon@k"]
    assert bon["k"] == [1, 2] and bon["per_problem"][1] == [0.0, 1.0, 0.0]
    assert bon["per_problem"][0] == [0.5, 0.5, 0.5]  # k=1: a random sample
    assert [s["mean_logprob"] for s in out["samples"][0]] == pytest.approx([-0.9, -0.6])
    # settings reach the sampler
    (call,) = fake.calls
    assert setting(call, "top_p") == 0.3 and setting(call, "top_k") == 5 and setting(call, "temperature") == 0.7
    assert call["n"] == 2 and call["max_new_tokens"] == 9 and call["seed"] == 4


def test_bootstrap_interval_is_95_percent_against_the_analytic_interval(monkeypatch):
    """400 problems, 4 samples each with a known number correct: evaluate's default interval for pass@1 must match
    mean +- 1.96 sd (the bootstrap distribution of a mean is normal here); a 90% interval (1.645 sd) is 16% narrower."""
    rng = np.random.default_rng(0)
    num_correct = rng.integers(0, 5, size=400)
    pools = [[completion("#### 1" if j < c else "#### 2", [-1.0]) for j in range(4)] for c in num_correct]
    problems = [{"prompt": f"q{i}", "answer": "1"} for i in range(400)]
    monkeypatch.setattr(jax_cat.sampling, "generate", FakeGenerate(pools))
    out = evaluate(object(), PlainTokenizer(), problems, n=4, ks=[1], reward_fn=exact_match_reward, num_resamples=4000)
    x = num_correct / 4.0
    sd = x.std() / math.sqrt(x.size)  # the bootstrap distribution's sd of the mean (ddof=0, exactly)
    m = out["metrics"]["pass@k"]
    assert m["mean"][0] == pytest.approx(x.mean())
    width = m["ci_high"][0] - m["ci_low"][0]
    assert width == pytest.approx(2 * 1.96 * sd, rel=0.06), (width / (2 * sd))  # 90% would be 2 * 1.645 sd
    assert m["ci_low"][0] == pytest.approx(x.mean() - 1.96 * sd, abs=0.15 * sd)
    assert out["config"]["confidence"] == 0.95
