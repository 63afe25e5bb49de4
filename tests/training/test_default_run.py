"""The embedded default run end to end with tiny step counts: its outputs, their structure and sane values."""
import json

import numpy as np
import pytest

from jax_cat.training.default_run import DefaultRun, format_table, main, run_default, warm_start

TINY = DefaultRun(test_size=4, sft_steps=6, sft_batch_size=32, sft_learning_rate=3e-3, sft_warmup_steps=0,
                  grpo_steps=2, grpo_prompts=4, group_size=4, eval_samples=4, log_every=1)
# 4 held-out problems x 4 samples: the same sampler shapes as a rollout batch (4 prompts x 4), so one compile serves both


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    lines: list[str] = []
    results = run_default(TINY, out, say=lines.append)
    return out, results, lines


def test_outputs_exist_and_load(tiny_run):
    out, results, _ = tiny_run
    assert json.loads((out / "results.json").read_text())["models"].keys() == {"sft", "grpo", "grpo_cat"}
    assert (out / "passk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"sft", "grpo", "grpo_cat"}
    from jax_cat.models import load_hf

    for stage in ("grpo", "grpo_cat"):  # each RL model's HF checkpoint, loadable, with the 18-token vocabulary
        model = load_hf(out / stage / "final")
        assert model.config.vocab_size == 18 and model.config.model_type == "llama"
    assert (out / "checkpoints" / "sft").is_dir() and (out / "warm_start" / "config.json").is_file()


def test_values_are_sane(tiny_run):
    out, results, lines = tiny_run
    sft_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sft_loss = [r["loss"] for r in sft_rows if r["stage"] == "sft"]
    assert len(sft_loss) == TINY.sft_steps
    assert sft_loss[-1] < sft_loss[0] - 0.3  # from ~log(18) = 2.9 at init, 6 steps at 3e-3 clearly lower it
    assert abs(sft_loss[0] - np.log(18)) < 0.3  # a random init predicts about uniformly
    for name, model in results["models"].items():
        rows = model["pass@k"]
        assert rows["k"] == [1, 2, 4]
        means = np.asarray(rows["mean"])
        assert np.all((0 <= means) & (means <= 1)), name
        assert np.all(np.diff(means) >= -1e-12), name  # pass@k never decreases in k
        assert np.all(np.asarray(rows["ci_low"]) <= means + 1e-12) and np.all(means <= np.asarray(rows["ci_high"]) + 1e-12)
    assert results["models"]["grpo"]["strategy"] == "pass@1"
    assert results["models"]["grpo_cat"]["strategy"] == "pass@8"
    assert results["num_problems"] == 4
    table = format_table(results)
    assert table in "\n".join(lines) and "CAT - plain" in table


def test_warm_start_is_cached(tiny_run):
    out, results, _ = tiny_run
    assert results["models"]["sft"]["train"]["reused"] is False
    path, info = warm_start(TINY, out, out / "base")
    assert info["reused"] is True and path == out / "warm_start"
    # a different SFT setting does not reuse it (the fingerprint covers the SFT config)
    from jax_cat.training.default_run import _fingerprint, trainer_config

    a = trainer_config(TINY, method="sft", model_path=out / "base").to_dict()
    b = trainer_config(DefaultRun(**{**TINY.__dict__, "sft_steps": 7}), method="sft", model_path=out / "base").to_dict()
    assert _fingerprint(a) != _fingerprint(b)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="preset"):
        DefaultRun(preset="level3")  # variable-width prompts
    with pytest.raises(ValueError, match="group_size"):
        DefaultRun(group_size=0)
    with pytest.raises(ValueError):
        DefaultRun(cat_strategy="pass@x")
    with pytest.raises(SystemExit):
        main(["--sft-steps", "many"])
