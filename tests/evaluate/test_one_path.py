"""Issue 24 item 3: one evaluation path. The default run used to sample with `sample_tokens` on raw prompts
(row r of chunk c drawing from fold_in(fold_in(key(seed), c), r)) and count pass@k with `pass_at_k_many`; it now
calls `jax_cat.evaluate.evaluate` (`generate`: row (i, j) draws from row_keys_for(seed, i, j)) like the trainer and
the evaluate CLI. These tests pin that the only difference is which key each row draws from: with the same row keys
the old token path gives the very same completions, and the estimators give the same numbers."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory):
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.models.tiny import build_arithmetic_checkpoint

    path = build_arithmetic_checkpoint(tmp_path_factory.mktemp("arith"), seed=3)
    return load_hf(path), AutoTokenizer.from_pretrained(path)


PROBLEMS = [{"prompt": "12+05+67=", "answer": "084"}, {"prompt": "01+02+03=", "answer": "006"},
            {"prompt": "99+99+99=", "answer": "297"}]


def _old_token_path(model, tokenizer, prompts, *, n, max_new_tokens, seed):
    """The default run's former sampler (raw prompts with the tokenizer's specials, one prefill per prompt), given
    the row keys `generate` uses."""
    import jax

    from jax_cat.sampling import sample_tokens
    from jax_cat.sampling.engine import resolve_eos_token_ids, resolve_pad_token_id, row_keys_for

    eos = resolve_eos_token_ids(model, tokenizer)
    pad = resolve_pad_token_id(model, tokenizer, eos)
    encoded = tokenizer(prompts)["input_ids"]
    width = max(len(e) for e in encoded)
    ids = np.full((len(encoded), width), pad, np.int32)
    mask = np.zeros((len(encoded), width), bool)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):], mask[r, width - len(e):] = e, True
    row_prompt = np.repeat(np.arange(len(prompts)), n)
    keys = row_keys_for(seed, row_prompt, np.tile(np.arange(n), len(prompts)))
    out = sample_tokens(model, ids, mask, max_new_tokens=max_new_tokens, row_keys=keys, eos_token_ids=eos,
                        pad_token_id=pad, group_ids=row_prompt)
    tokens, lengths = np.asarray(jax.device_get(out.tokens)), np.asarray(out.lengths)
    texts = tokenizer.batch_decode([t[:m] for t, m in zip(tokens, lengths)], skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def test_same_row_keys_same_completions_as_the_old_token_path(arithmetic):
    from jax_cat.evaluate import evaluate
    from jax_cat.rewards import exact_match_rewards

    model, tokenizer = arithmetic
    n, seed = 8, 5
    result = evaluate(model, tokenizer, PROBLEMS, n=n, ks=[1, 2, 8], max_new_tokens=4, seed=seed,
                      use_chat_template=False, reward_fn=exact_match_rewards, keep_samples=True, metrics=("pass@k",))
    new = [[s["text"] for s in row] for row in result["samples"]]
    old = _old_token_path(model, tokenizer, [p["prompt"] for p in PROBLEMS], n=n, max_new_tokens=4, seed=seed)
    assert new == old
    assert result["prompts"] == [p["prompt"] for p in PROBLEMS]  # raw prompts: no template (the tokenizer has none)
    assert result["config"]["use_chat_template"] is False and result["config"]["chat_template_applied"] is False
    assert list(result["metrics"]) == ["pass@k"] and result["config"]["metrics"] == ["pass@k"]
    golds = [p["answer"] for p in PROBLEMS]
    correct = [sum(float(r) > 0 for r in exact_match_rewards(row, [g] * n)) for row, g in zip(old, golds)]
    assert result["num_correct"] == correct


def test_pass_at_k_is_the_old_estimator_and_the_paired_difference_by_hand():
    from jax_cat.evaluate import paired_difference, scaling_metrics
    from jax_cat.losses import pass_at_k_many

    rng = np.random.default_rng(0)
    correct = rng.random((40, 16)) < rng.random((40, 1))
    ks = [1, 2, 4, 16]
    rows = scaling_metrics(correct, None, None, ks, metrics=("pass@k",), seed=3)["pass@k"]
    for i, k in enumerate(ks):
        old = pass_at_k_many(np.full(40, 16), correct.sum(1), k)
        np.testing.assert_allclose(rows["per_problem"][i], old, rtol=0, atol=1e-12)
        assert rows["mean"][i] == pytest.approx(old.mean(), abs=1e-12)
    # one problem, n = 2: a 2/2 vs 0/2 -> pass@1 and pass@2 differences 1 (the CI of one problem is a point)
    d = paired_difference([2], [0], n=2, ks=[1, 2])
    assert d["mean"] == [1.0, 1.0] and d["ci_low"] == [1.0, 1.0] and d["ci_high"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="maj@k needs the answers"):
        scaling_metrics(correct, None, None, ks, metrics=("maj@k",))
    with pytest.raises(ValueError, match="subset"):
        scaling_metrics(correct, None, None, ks, metrics=("top@k",))


def test_results_files_record_commit_settings_and_machine(arithmetic, tmp_path):
    import json

    from jax_cat.evaluate import evaluate, write_results

    model, tokenizer = arithmetic
    result = evaluate(model, tokenizer, PROBLEMS[:2], n=2, ks=[1, 2], max_new_tokens=4, use_chat_template=False,
                      system=None, metrics=("pass@k", "bon@k"))
    write_results(result, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    p = saved["provenance"]
    assert {"commit", "dirty", "cpu", "cores", "platform", "device_kind", "jax", "utc"} <= set(p)
    assert p["cpu"] and p["device_kind"] and p["platform"] == "cpu"
    assert saved["config"]["use_chat_template"] is False and saved["config"]["n"] == 2
    assert list(saved["metrics"]) == ["pass@k", "bon@k"]
    assert any("no chat template" in note for note in saved["notes"])


def test_cli_prompt_format_and_metrics_are_explicit_and_recorded(tmp_path):
    """The evaluate CLI: --no-chat-template and --metrics are settings the results record, with the machine."""
    import json

    from jax_cat.evaluate import main

    out = tmp_path / "eval"
    assert main(["--model", "tiny-arithmetic", "--dataset", "arithmetic:sum3_2d", "--limit", "3", "--n", "4",
                 "--k", "1,4", "--max-new-tokens", "4", "--no-chat-template", "--metrics", "pass@k,bon@k",
                 "--num-resamples", "50", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["metrics"]) == ["pass@k", "bon@k"] and res["config"]["metrics"] == ["pass@k", "bon@k"]
    assert res["config"]["use_chat_template"] is False and res["config"]["chat_template_applied"] is False
    assert res["provenance"]["device_kind"] and res["provenance"]["cpu"] and len(res["num_correct"]) == 3
    assert main(["--model", "tiny-arithmetic", "--metrics", "top@k"]) == 2  # bad input: one line, exit 2


def test_provenance_names_the_vector_isa_xla_compiles_for():
    """XLA:CPU's code (and so the draw of a seed) follows the host's widest vector ISA or an --xla_cpu_max_isa cap:
    results record which, so two tables from different machines can be told apart (issue 21)."""
    from jax_cat.evaluate.outputs import cpu_isa, provenance

    assert cpu_isa({"sse4_2", "avx", "avx2", "fma"}) == "avx2"
    assert cpu_isa({"sse4_2", "avx", "avx2", "avx512f"}) == "avx512"
    assert cpu_isa({"sse4_2", "avx", "avx2"}, "--xla_cpu_max_isa=SSE4_2") == "sse4_2"
    assert cpu_isa({"sse4_2", "avx"}, "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX512") == "avx"
    assert cpu_isa(set()) is None and cpu_isa(set(), "--xla_cpu_max_isa=AVX") == "unknown, capped at avx"
    p = provenance()
    assert {"cpu_isa", "xla_flags"} <= set(p)
