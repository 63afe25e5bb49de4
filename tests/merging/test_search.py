"""Vizier search: Pareto extraction and hypervolume on hand-made sets, a synthetic two-objective problem with a known
Pareto set, resume after an interruption, and the 32-bit JAX setting kept intact."""
import math

import jax
import numpy as np
import pytest

from merging.search import (
    Metric, SearchSpace, StudyMismatchError, TrialRecord, hypervolume_2d, pareto_front, pick, run_search,
)

METRICS = [Metric("consistency", "max"), Metric("perplexity", "min")]
SPACE = SearchSpace({"sft": (0.5, 2.0), "rl": (0.5, 2.0)})
A, B = np.array([1.0, 1.0]), np.array([1.6, 1.6])  # the synthetic problem's two optima


def synthetic(p):
    """consistency peaks at A, perplexity bottoms at B: the Pareto set is the segment [A, B]."""
    x = np.array([p["sft"], p["rl"]])
    return {"consistency": 1.0 - float(np.sum((x - A) ** 2)), "perplexity": 1.0 + float(np.sum((x - B) ** 2))}


def _true_front(n=400):
    t = np.linspace(0, 1, n)
    return np.array([[synthetic({"sft": x, "rl": x})[k] for k in ("consistency", "perplexity")]
                     for x in A[0] + t * (B[0] - A[0])])


REF = (1.0 - 2 * 1.0**2, 1.0 + 2 * 1.1**2)  # consistency at (2, 2) = -1 ... the worst corner values


# ---------------------------------------------------------------------------------------------- hand-made sets
def test_pareto_front_by_hand():
    pts = [[0.9, 3.0], [0.8, 2.0], [0.7, 2.5], [0.9, 3.0], [0.5, 1.0], [0.4, 1.0], [float("nan"), 0.1]]
    # (0.7, 2.5) is dominated by (0.8, 2.0); (0.4, 1.0) by (0.5, 1.0); duplicates both stay; NaN never
    assert pareto_front(pts, ("max", "min")) == [0, 1, 3, 4]
    assert pareto_front([[1, 1], [2, 0], [0, 2], [2, 2]], ("min", "min")) == [0, 1, 2]
    assert pareto_front([[1, 1], [2, 0], [0, 2], [2, 2]], ("max", "max")) == [3]


def test_hypervolume_2d_by_hand():
    # maximise the first, minimise the second, reference (0, 10): staircase of 3 boxes
    pts = [[1.0, 2.0], [2.0, 5.0], [3.0, 9.0]]
    # slabs: y in [2, 10] x in [0, 1] -> 8; y in [5,10] x in [1,2] -> 5; y in [9, 10] x in [2, 3] -> 1 ... = 14
    assert hypervolume_2d(pts, (0.0, 10.0)) == pytest.approx(1 * 8 + 1 * 5 + 1 * 1)
    # dominated and out-of-reference points add nothing
    assert hypervolume_2d(pts + [[0.5, 6.0], [-1.0, 1.0], [4.0, 11.0]], (0.0, 10.0)) == pytest.approx(14.0)
    assert hypervolume_2d([], (0.0, 10.0)) == 0.0
    # both minimised: one point is its box
    assert hypervolume_2d([[1.0, 1.0]], (3.0, 4.0), ("min", "min")) == pytest.approx(6.0)


def test_pick_within_budget_else_lowest_perplexity():
    recs = [TrialRecord(1, {}, {"consistency": 0.9, "perplexity": 12.0}),
            TrialRecord(2, {}, {"consistency": 0.7, "perplexity": 10.5}),
            TrialRecord(3, {}, {"consistency": 0.5, "perplexity": 9.0}),
            TrialRecord(4, {}, {"consistency": 0.6, "perplexity": 11.0})]  # dominated by 2
    assert pick(recs, reference_perplexity=10.0, budget=0.1).trial_id == 2  # 12 > 11, 10.5 <= 11
    assert pick(recs, reference_perplexity=10.0, budget=0.25).trial_id == 1
    assert pick(recs, reference_perplexity=5.0).trial_id == 3  # nothing within budget: lowest perplexity
    assert pick(recs).trial_id == 3
    assert pick([]) is None


# ---------------------------------------------------------------------------------------------- Vizier
def test_search_finds_the_known_pareto_set(tmp_path, designer="QUASI_RANDOM_SEARCH"):
    """The geometric checks need a deterministic designer: quasi-random (Halton) points are the same every run."""
    records = run_search(synthetic, SPACE, METRICS, num_trials=40, db_path=tmp_path / "v.db", designer=designer)
    assert len(records) == 40 and [r.trial_id for r in records] == list(range(1, 41))
    pts = np.array([[r.metrics["consistency"], r.metrics["perplexity"]] for r in records])
    hv, hv_true = hypervolume_2d(pts, REF), hypervolume_2d(_true_front(), REF)
    assert hv >= 0.85 * hv_true, (hv, hv_true)
    # the front found lies near the true Pareto segment [A, B] ...
    front = [records[i] for i in pareto_front(pts, ("max", "min"))]
    for r in front[:3]:
        x = np.array([r.parameters["sft"], r.parameters["rl"]])
        t = np.clip(np.dot(x - A, B - A) / np.dot(B - A, B - A), 0, 1)
        assert np.linalg.norm(x - (A + t * (B - A))) < 0.35
    # ... and the automatic pick (budget over the value at A, the best-consistency point) is near A
    best = pick(records, reference_perplexity=synthetic({"sft": 1.0, "rl": 1.0})["perplexity"], budget=0.5)
    assert np.linalg.norm(np.array([best.parameters["sft"], best.parameters["rl"]]) - A) < 0.5
    assert not jax.config.read("jax_enable_x64")  # Vizier's service turns it on globally; we restore it


def test_nsga2_designer_runs_and_covers_the_front(tmp_path):
    """Vizier's NSGA2 samples uniformly at random (unseeded) until it has 100 trials, so below that only loose,
    run-independent checks hold: 40 distinct trials, and a hypervolume well above what a bad search gives."""
    records = run_search(synthetic, SPACE, METRICS, num_trials=40, db_path=tmp_path / "v.db", designer="NSGA2")
    assert [r.trial_id for r in records] == list(range(1, 41))
    assert len({(r.parameters["sft"], r.parameters["rl"]) for r in records}) == 40
    pts = np.array([[r.metrics["consistency"], r.metrics["perplexity"]] for r in records])
    assert hypervolume_2d(pts, REF) >= 0.85 * hypervolume_2d(_true_front(), REF)  # 10 runs: .952-.983
    assert not jax.config.read("jax_enable_x64")


def test_resume_continues_the_same_study_without_repeating_trials(tmp_path):
    seen = []

    class Interrupt(Exception):
        pass

    def flaky(p):
        seen.append((p["sft"], p["rl"]))
        if len(seen) == 3:
            raise Interrupt  # the process dies while evaluating trial 3
        return synthetic(p)

    db = tmp_path / "v.db"
    with pytest.raises(Interrupt):
        run_search(flaky, SPACE, METRICS, num_trials=5, db_path=db, designer="RANDOM_SEARCH")
    first = list(seen)
    records = run_search(flaky, SPACE, METRICS, num_trials=5, db_path=db, designer="RANDOM_SEARCH")
    assert [r.trial_id for r in records] == [1, 2, 3, 4, 5]
    assert seen[3] == first[2]  # the interrupted trial is handed back and evaluated, not a new one
    assert len(seen) == 6  # 2 done + 1 interrupted, then 3 (the interrupted one again + 2 new): none repeated
    assert len(set(seen)) == 5
    completed = [(r.parameters["sft"], r.parameters["rl"]) for r in records]
    assert completed == [first[0], first[1], first[2], seen[4], seen[5]]
    # asking again for 5 trials evaluates nothing
    assert run_search(flaky, SPACE, METRICS, num_trials=5, db_path=db, designer="RANDOM_SEARCH") == records
    assert len(seen) == 6
    # another search space under the same study id is refused, naming the stored one
    with pytest.raises(StudyMismatchError, match="already holds study"):
        run_search(flaky, SearchSpace({"sft": (0.5, 2.0)}), METRICS, num_trials=6, db_path=db,
                   designer="RANDOM_SEARCH")


def test_non_finite_metric_is_infeasible_not_on_the_front(tmp_path):
    def obj(p):
        out = synthetic(p)
        if p["sft"] > 1.25:
            out["perplexity"] = math.nan
        return out

    records = run_search(obj, SPACE, METRICS, num_trials=8, db_path=tmp_path / "v.db", designer="QUASI_RANDOM_SEARCH")
    assert all(r.parameters["sft"] <= 1.25 for r in records) and all(
        math.isfinite(r.metrics["perplexity"]) for r in records)


def test_gp_bandit_default_designer_runs(tmp_path):
    """One short GP-bandit study (the default designer): the centre seed trial, then one GP suggestion (~5 s on an
    idle 2-core machine, mostly compilation); suggestions lie in the space; x64 stays off."""
    records = run_search(synthetic, SPACE, METRICS, num_trials=2, db_path=tmp_path / "v.db")
    assert len(records) == 2
    for r in records:
        assert 0.5 <= r.parameters["sft"] <= 2.0 and 0.5 <= r.parameters["rl"] <= 2.0
    assert records[0].parameters == pytest.approx({"sft": 1.25, "rl": 1.25})  # GP-bandit's seed trial: the centre
    assert not jax.config.read("jax_enable_x64")
    assert jax.numpy.zeros(2).dtype == np.float32
