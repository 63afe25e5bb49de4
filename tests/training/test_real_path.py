"""The real-model path (scripts/real_path.py) on its tiny shape, in one process: a Qwen2 checkpoint saved by
transformers (tied embeddings, bf16, byte-level BPE with a chat template), a GSM8K-format JSONL, the Qwen recipe
for 1 GRPO step then --resume to 2, `final/` read by transformers with load_hf's logits, `jax_cat.evaluate`, a
short SFT run, and `merging.merge` on the three checkpoints. The same CLIs and code paths as the 0.5B run in
docs/planning.md, shrunk (the mesh is the test session's 8 CPU devices). About 100 CPU seconds, most of it
compiling the GRPO step and sampler (40 s) and the SFT step (23 s); 4 min wall on the shared 2-core machine."""
from __future__ import annotations

import json

import pytest

from tests._load_script import load_script

real_path = load_script("scripts/real_path.py")


def _train(argv):
    from jax_cat.train import main

    assert main(argv) == 0


def test_real_path_tiny_shape(tmp_path, capsys):
    from merging.merge import main as merge_main

    train, test = real_path.build_data(tmp_path, n_train=40, n_test=8)
    base = real_path.build_checkpoint(tmp_path / "base", shape="tiny")
    run, sft = tmp_path / "grpo", tmp_path / "sft"
    common = ["--set", f"model.path={base}", "--set", f"data.dataset={train}", "--set", "model.param_dtype=bfloat16",
              "--set", "optimizer.learning_rate=1e-2", "--set", "data.max_prompt_len=128",
              "--set", "logging.tensorboard=false", "--set", "checkpoint.async_save=false"]
    grpo = ["--config", real_path.RECIPE, "--out", str(run), *common, "--set", "data.batch_size=8",
            "--set", "train.micro_batches=1", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=4",
            "--set", "train.steps=2", "--set", "eval.num_problems=2", "--set", "eval.n=2", "--set", "eval.ks=1,2",
            "--set", "eval.max_new_tokens=4"]
    _train(grpo + ["--set", "train.stop_after=1"])
    assert not (run / "final").exists() and (run / "checkpoints" / "grpo" / "1").is_dir()
    _train(grpo + ["--resume", "--set", "train.stop_after=none"])
    err = capsys.readouterr().err
    assert "grpo: starting from step 1 of 2 steps" in err and "grpo: step 2/2: loss" in err
    assert "its last 2 rows are held out of training" in err  # eval.dataset unset: the training file's tail
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["config"]["model"] == str(base) and results["config"]["dataset"] == str(train)
    assert results["config"]["held_out"].startswith("last 2 rows of")

    # final/ (written in float32 from bf16 masters) reads in transformers with load_hf's logits
    check = real_path.check_logits(run / "final", atol=1e-4)
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_logit"])

    from jax_cat.evaluate import main as evaluate_main

    assert evaluate_main(["--model", str(run / "final"), "--dataset", str(test), "--limit", "2", "--n", "2",
                          "--k", "1,2", "--max-new-tokens", "4", "--num-resamples", "10",
                          "--out", str(tmp_path / "eval")]) == 0

    # the second fine-tune: SFT with the chat template (targets end with <|im_end|>), then a 3-checkpoint merge
    _train(["--config", "sft", "--out", str(sft), *common, "--set", f"eval.dataset={test}", "--set",
            "data.use_chat_template=true", "--set", "data.batch_size=8", "--set", "data.max_target_len=64",
            "--set", "optimizer.warmup_steps=0", "--set", "train.steps=1", "--set", "train.eval_at_end=false"])
    assert "sft data: 0 of 40 targets" in capsys.readouterr().err
    assert merge_main(["--base", str(base), "--models", str(sft / "final"), str(run / "final"), "--method", "dots",
                       "--coefficients", "0.5", "0.5", "--density", "0.3", "--no-progress",
                       "--out", str(tmp_path / "merged")]) == 0
    real_path.check_logits(tmp_path / "merged", atol=1e-4)
