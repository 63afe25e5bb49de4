"""scripts/reproduce_cat.py: CAT - plain with a CI over training seeds and problems, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from tests._load_script import load_script


@pytest.fixture(scope="module")
def rc():
    return load_script("scripts/reproduce_cat.py", register=True)


def _seed(num_correct, n=4):
    return {"num_correct": num_correct, "n": n, "pass@k": {"k": [1, 2, 4]}}


def test_seed_and_problem_ci_is_a_point_for_constant_differences_and_widens_with_seed_spread(rc):
    assert rc.seed_and_problem_ci(np.full((3, 5), 0.25)) == pytest.approx((0.25, 0.25))
    # seeds that disagree (+.5 / -.5 on every problem): the problem-only CI of one seed would be a point; over seeds
    # the CI must cover both signs
    low, high = rc.seed_and_problem_ci(np.array([[0.5] * 6, [-0.5] * 6, [0.5] * 6]))
    assert low < 0 < high


def test_paired_differences_by_hand(rc):
    # 2 problems, n = 4. seed 0: CAT 2/4 and 0/4 correct, plain 1/4 and 0/4; seed 1: CAT 4/4, 0/4, plain 4/4, 4/4.
    per_seed = {"grpo": {0: _seed([1, 0]), 1: _seed([4, 4])}, "grpo_cat": {0: _seed([2, 0]), 1: _seed([4, 0])}}
    d = rc.paired_differences(per_seed)["grpo_cat"]
    # pass@1 = c/n; seed 0: (.5-.25)/2 = .125; seed 1: (1-1 + 0-1)/2 = -.5
    assert d["seed_min"][0] == pytest.approx(-0.5) and d["seed_max"][0] == pytest.approx(0.125)
    assert d["mean"][0] == pytest.approx((0.125 - 0.5) / 2)
    # pass@2 = 1 - C(n-c,2)/C(4,2): c=2 -> 1 - 1/6, c=1 -> 1 - 3/6; seed 0: (5/6 - 1/2)/2 = 1/6
    assert d["seed_max"][1] == pytest.approx(1 / 6)
    assert d["ci_low"][0] <= d["mean"][0] <= d["ci_high"][0] and d["seeds"] == [0, 1]
    table = rc.differences_table({"grpo_cat": d}, {"grpo_cat": "CAT-GRPO pass@8"})
    assert "CAT-GRPO pass@8 (2 seeds)" in table and "-0.188" in table


def _pool(num_correct, maj_per_problem, n=4, ks=(1, 2, 4)):
    """One scored pool: pass@k means from the counts (unbiased estimator), maj@k given per problem ([k][P])."""
    from math import comb

    counts = np.asarray(num_correct)
    pass_means = [float(np.mean([1 - comb(n - c, k) / comb(n, k) for c in counts])) for k in ks]
    maj = np.asarray(maj_per_problem, np.float64)
    return {"num_correct": counts.tolist(), "n": n, "pass@k": {"k": list(ks), "mean": pass_means},
            "maj@k": {"k": list(ks), "mean": maj.mean(axis=1).tolist(), "per_problem": maj.tolist()}}


def test_claims_by_hand(rc):
    # 20 problems, n = 4, k = 1, 2, 4; CAT N = 4. Warm start: 1 of 4 right everywhere (pass@1 .25, pass@4 1.0),
    # its plurality right half the time (maj@k .5 > pass@1: a majority to sharpen). Plain GRPO: 4/4 on 12 problems,
    # 0/4 on 8 (pass@1 .6, pass@4 .6: sharper, narrower). CAT pass@4: 2/4 everywhere (pass@1 .5, pass@4 1.0).
    # CAT maj@4: its plurality right everywhere (maj@k 1.0 at k >= 2), plain's on the 12 it solves.
    P = 20
    warm = _pool([1] * P, [[0.25] * P, [0.5] * P, [0.5] * P])
    plain_maj = [[1.0] * 12 + [0.0] * 8] * 3
    per_seed = {
        "grpo": {s: _pool([4] * 12 + [0] * 8, plain_maj) for s in (0, 1)},
        "grpo_cat": {s: _pool([2] * P, [[0.5] * P, [0.5] * P, [0.5] * P]) for s in (0, 1)},
        "grpo_maj": {s: _pool([2] * P, [[0.5] * P, [1.0] * P, [1.0] * P]) for s in (0, 1)},
        "sft": {s: _pool([4] * P, [[1.0] * P] * 3) for s in (0, 1)},
        "sft_cat4": {s: _pool([4] * P, [[1.0] * P] * 3) for s in (0, 1)},
    }
    labels = {name: rc.VARIANTS[name][2].format(n=4) for name in per_seed}
    diffs = rc.all_differences(per_seed, warm)
    # plain - warm at k=1: 12 x (+.75) and 8 x (-.25) -> +.35; at k=4: 12 x 0, 8 x (-1) -> -.4 (both seeds alike)
    assert rc._at(diffs["grpo - warm|pass@k"], 1)[0] == pytest.approx(0.35)
    assert rc._at(diffs["grpo - warm|pass@k"], 4)[0] == pytest.approx(-0.4)
    assert rc._at(diffs["grpo_cat - grpo|pass@k"], 4)[0] == pytest.approx(0.4)
    assert rc._at(diffs["grpo_maj - grpo|maj@k"], 4)[0] == pytest.approx(0.4)
    verdicts = {row["claim"]: row["verdict"] for row in rc.claims(per_seed, warm, diffs, 4, labels)}
    assert verdicts == {
        "RL: plain GRPO raises pass@1 over the warm start": "holds",
        "RL: plain GRPO narrows pass@k at large k (k=4) below the warm start": "holds",
        "RL: CAT-GRPO pass@4 keeps more coverage than plain GRPO (pass@4)": "holds",
        "RL: CAT-GRPO pass@4 pays a small pass@1 cost: its pass@1 stays above the warm start's": "holds",
        "RL: CAT-GRPO maj@4 improves maj@4 over plain GRPO": "holds",
        "SFT: CAT-SFT pass@4 improves pass@4 over plain SFT": f"not testable here (both pass@4 >= {rc.CEILING})",
    }
    # the same comparison the other way round is "the opposite, beyond noise"; no majority to sharpen: not testable
    swapped = rc.all_differences({"grpo": per_seed["grpo_cat"], "grpo_cat": per_seed["grpo"]}, warm)
    rows = rc.claims({"grpo": per_seed["grpo_cat"], "grpo_cat": per_seed["grpo"]}, warm, swapped, 4, labels)
    assert rows[2]["verdict"] == "does not hold (the opposite, beyond noise)"
    flat = _pool([1] * P, [[0.25] * P, [0.2] * P, [0.2] * P])
    rows = rc.claims(per_seed, flat, rc.all_differences(per_seed, flat), 4, labels)
    assert next(r for r in rows if "maj@4 improves" in r["claim"])["verdict"].startswith("not testable here")
    table = rc.claims_table(rows)
    assert table.count("\n") == len(rows) + 2 and "| **holds** |" in table


def test_merge_joins_per_seed_runs_and_refuses_mixed_settings(rc, tmp_path):
    # two processes, one seed each, the same settings and warm-start pool: one report over both seeds
    import json
    import time

    P = 20
    warm = _pool([1] * P, [[0.25] * P, [0.5] * P, [0.5] * P])
    labels = {"grpo": "plain GRPO", "grpo_cat": "CAT-GRPO pass@4"}
    files = []
    for seed, cat in ((0, [2] * P), (1, [3] * P)):
        per_seed = {"grpo": {seed: _pool([4] * 12 + [0] * 8, [[1.0] * 12 + [0.0] * 8] * 3)},
                    "grpo_cat": {seed: _pool(cat, [[0.5] * P] * 3)}}
        args = rc.parse_args(["--cat-n", "4", "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}")])
        rc.write_report(tmp_path / f"s{seed}", args, [], [None] * P, labels, per_seed, {}, time.perf_counter(), warm)
        files.append(str(tmp_path / f"s{seed}" / "results.json"))
    assert rc.main(["--merge", *files, "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert merged["args"]["seeds"] == "0,1" and merged["cat_minus_plain"]["grpo_cat"]["seeds"] == [0, 1]
    # CAT - plain pass@1: seed 0 (.5 - .6), seed 1 (.75 - .6) -> mean +.025
    assert merged["cat_minus_plain"]["grpo_cat"]["mean"][0] == pytest.approx(0.025)
    other = json.loads(open(files[1]).read())
    other["args"]["grpo_steps"] = 7
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="grpo_steps"):
        rc.main(["--merge", files[0], str(tmp_path / "other.json"), "--out", str(tmp_path / "bad")])
