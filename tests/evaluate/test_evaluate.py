"""Scaling-curve evaluation: metrics on a hand-made sample pool, bootstrap CIs, and end to end on the tiny model."""
import json
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

from jax_cat.data import load_prompt_dataset
from jax_cat.evaluate import answer_key, bootstrap_ci, evaluate, main, scaling_metrics
from jax_cat.models import load_hf
from jax_cat.models.tiny import build_tiny_checkpoint

# Two problems, four samples each (see the expected values worked out per k below).
CORRECT = np.array([[1, 0, 0, 0], [1, 1, 0, 0]])
ANSWERS = [["5", "3", "3", None], ["7", "7", "2", "2"]]
SCORES = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4]])
EXPECTED = {
    # pass@2 = 1 - C(M-c, 2)/C(4, 2)
    "pass@k": {1: [0.25, 0.5], 2: [1 - 3 / 6, 1 - 1 / 6], 4: [1.0, 1.0]},
    # maj@2, problem 0: pairs {5,3} x2 tie -> 1/2 each, {5,None} -> 1, the other three -> 0: (1/2+1/2+1)/6;
    # problem 1: {7,7} -> 1, four 7-vs-2 ties -> 1/2, {2,2} -> 0: 3/6. maj@4: "3" beats "5"; 7 and 2 tie.
    "maj@k": {1: [0.25, 0.5], 2: [2 / 6, 3 / 6], 4: [0.0, 0.5]},
    # bon@2: problem 0's best-scored sample is the correct one in the 3 pairs holding it; problem 1's correct
    # samples have the lowest scores: only the pair {0, 1} picks a correct one.
    "bon@k": {1: [0.25, 0.5], 2: [3 / 6, 1 / 6], 4: [1.0, 0.0]},
}


def test_scaling_metrics_on_a_hand_made_pool():
    out = scaling_metrics(CORRECT, ANSWERS, SCORES, [1, 2, 4], num_resamples=200)
    assert set(out) == {"pass@k", "maj@k", "bon@k"}
    for name, per_k in EXPECTED.items():
        assert out[name]["k"] == [1, 2, 4]
        for i, k in enumerate([1, 2, 4]):
            np.testing.assert_allclose(out[name]["per_problem"][i], per_k[k], err_msg=f"{name} k={k}")
            assert math.isclose(out[name]["mean"][i], np.mean(per_k[k]))
            assert out[name]["ci_low"][i] <= out[name]["mean"][i] + 1e-12 <= out[name]["ci_high"][i] + 2e-12
    with pytest.raises(ValueError, match="k must be in"):
        scaling_metrics(CORRECT, ANSWERS, SCORES, [8])


def test_bootstrap_ci():
    x = np.array([0.0, 1.0] * 50)
    low, high = bootstrap_ci(x, num_resamples=1000, seed=0)
    half = 1.96 * math.sqrt(0.25 / 100)  # normal approximation of the mean's 95% interval
    assert abs((0.5 - low) - half) < 0.02 and abs((high - 0.5) - half) < 0.02
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25)


def test_answer_keys_group_equal_values():
    assert answer_key("so the answer is 1/2") == answer_key("\\boxed{0.5}") == answer_key("it is \\frac{1}{2}")
    assert answer_key("#### 0363") == answer_key("363")
    assert answer_key("-4") != answer_key("4")
    assert answer_key("no number here") is None and answer_key("") is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("evaluate") / "tiny")
    return path, load_hf(path), AutoTokenizer.from_pretrained(path)


def even_answer_reward(texts, golds):
    """A stand-in verifier with mixed outcomes on a random model: the answer's last digit is even."""
    return [float((key := answer_key(t)) is not None and key[-1] in "02468") for t in texts]


KW = dict(n=8, ks=[1, 2, 4, 8], max_new_tokens=6, temperature=1.0, seed=0, num_resamples=200)


def test_evaluate_end_to_end_values(tiny):
    _, model, tokenizer = tiny
    problems = load_prompt_dataset("arithmetic", split="test", limit=4)
    res = evaluate(model, tokenizer, problems, reward_fn=even_answer_reward, keep_samples=True, **KW)
    rewards = np.array([[s["reward"] for s in row] for row in res["samples"]])
    assert rewards.shape == (4, 8) and 0 < rewards.mean() < 1  # the stand-in gives mixed outcomes
    m = res["metrics"]
    # identities that hold on any pool: pass@1 = mean reward; pass@n = any correct; maj@1 = bon@1 = pass@1
    assert math.isclose(m["pass@k"]["mean"][0], rewards.mean())
    assert math.isclose(m["pass@k"]["mean"][-1], rewards.max(axis=1).mean())
    assert math.isclose(m["maj@k"]["mean"][0], rewards.mean()) and math.isclose(m["bon@k"]["mean"][0], rewards.mean())
    assert all(b >= a - 1e-12 for a, b in zip(m["pass@k"]["mean"], m["pass@k"]["mean"][1:]))
    for rows in m.values():
        for key in ("mean", "ci_low", "ci_high"):
            assert all(0.0 <= v <= 1.0 for v in rows[key])
        assert all(lo <= mu + 1e-12 and mu <= hi + 1e-12 for lo, mu, hi in zip(rows["ci_low"], rows["mean"], rows["ci_high"]))
    # the prompts went through the tokenizer's chat template, as in training
    assert res["prompts"][0] == f"<bos>user: {problems[0]['prompt']}\nassistant: "
    assert res["golds"] == [p["answer"] for p in problems]

    # bon@k under the verifier is pass@k by construction, and the output says so (same seed: same samples)
    res_v = evaluate(model, tokenizer, problems, reward_fn=even_answer_reward, bon_scorer="verifier", **KW)
    np.testing.assert_allclose(res_v["metrics"]["bon@k"]["mean"], m["pass@k"]["mean"])
    assert any("equals pass@k" in note for note in res_v["notes"])
    np.testing.assert_allclose(res_v["metrics"]["pass@k"]["mean"], m["pass@k"]["mean"])


def test_cli_writes_json_and_png(tiny, tmp_path):
    path, _, _ = tiny
    out = tmp_path / "eval"
    rc = main(["--model", str(path), "--dataset", "arithmetic", "--limit", "4", "--n", "8", "--k", "1,2,4,8",
               "--max-new-tokens", "6", "--num-resamples", "200", "--save-samples", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["num_problems"] == 4 and res["config"]["n"] == 8 and res["config"]["ks"] == [1, 2, 4, 8]
    assert res["config"]["dataset"] == "arithmetic" and res["config"]["bon_scorer"] == "logprob"
    assert set(res["metrics"]) == {"pass@k", "maj@k", "bon@k"}
    for rows in res["metrics"].values():
        assert rows["k"] == [1, 2, 4, 8] and len(rows["per_problem"]) == 4
        assert all(0.0 <= v <= 1.0 for v in rows["mean"])
    means = res["metrics"]["pass@k"]["mean"]
    assert all(b >= a for a, b in zip(means, means[1:]))
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len(json.loads(lines[0])["samples"]) == 8
    assert not list(out.glob(".*"))  # no temp files left behind
    assert main(["--model", str(path), "--n", "4", "--k", "1,8"]) == 2  # bad input: exit status 2, one line


def test_model_argument_takes_a_hub_id(tiny, monkeypatch):
    """A non-existent path that looks like "org/name" goes through load_hf's hub resolution, not a path error."""
    import jax_cat.models.hf as hf
    from jax_cat.evaluate import load_model_and_tokenizer

    ckpt, reference, _ = tiny
    asked = []
    monkeypatch.setattr(hf, "resolve_checkpoint_dir", lambda repo_id: asked.append(repo_id) or ckpt)
    model, tokenizer, path = load_model_and_tokenizer("someorg/some-model")
    assert asked[0] == "someorg/some-model" and path == ckpt  # (load_hf then resolves the local snapshot again)
    ids = np.array([tokenizer.encode("12+3=")])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(reference(ids)))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_and_tokenizer(ckpt.parent)  # an existing folder that is not a checkpoint


def test_model_tiny_is_the_main_jobs_default_checkpoint_built_once(tmp_path, monkeypatch):
    from jax_cat.evaluate import load_model_and_tokenizer
    from jax_cat.models.tiny import default_checkpoint_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_CAT_CACHE", str(tmp_path / "cache"))
    _, _, path = load_model_and_tokenizer("tiny")
    assert path == default_checkpoint_dir() == tmp_path / "cache" / "tiny-default"
    assert (path / "model.safetensors").exists() and not (tmp_path / "artifacts").exists()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert load_model_and_tokenizer("tiny")[2] == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
