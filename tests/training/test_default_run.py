"""The default experiment end to end with tiny step counts: its outputs, their structure and sane values; its
settings are the recipe configs/default.toml and its stages are trainer runs."""
import json

import numpy as np
import pytest

from jax_cat.training.default_run import DefaultRun, format_table, main, run_default

TINY = DefaultRun(test_size=4, sft_steps=6, sft_batch_size=32, sft_learning_rate=3e-3, sft_warmup_steps=0,
                  grpo_steps=2, grpo_prompts=4, group_size=4, eval_samples=4, log_every=1)
# 4 held-out problems x 4 samples: the same sampler shapes as a rollout batch (4 prompts x 4), so one compile serves both


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    lines: list[str] = []
    results = run_default(TINY, out, say=lines.append)
    return out, results, lines


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outputs_exist_and_load(tiny_run):
    out, results, _ = tiny_run
    assert json.loads((out / "results.json").read_text())["models"].keys() == {"sft", "grpo", "grpo_cat"}
    assert (out / "passk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each stage is an ordinary trainer run folder
    for stage, method in (("warm_start", "sft"), ("grpo", "grpo"), ("grpo_cat", "grpo")):
        assert {row["stage"] for row in _metrics(out / stage / "metrics.jsonl")} == {method}, stage
        assert (out / stage / "checkpoints" / method).is_dir() and (out / stage / "config.json").is_file()
        assert json.loads((out / stage / "eval" / "results.json").read_text())["provenance"]["cpu"]
    from jax_cat.models import load_hf

    for stage in ("warm_start", "grpo", "grpo_cat"):  # each model's HF checkpoint, loadable, 18-token vocabulary
        model = load_hf(out / stage / "final")
        assert model.config.vocab_size == 18 and model.config.model_type == "llama"
    assert json.loads((out / "grpo_cat" / "config.json").read_text())["strategy"] == "pass@16"
    assert json.loads((out / "grpo" / "config.json").read_text())["model"]["path"] == str(out / "warm_start" / "final")


def test_values_are_sane(tiny_run):
    out, results, lines = tiny_run
    sft_loss = [r["loss"] for r in _metrics(out / "warm_start" / "metrics.jsonl")]
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
    assert results["models"]["grpo_cat"]["strategy"] == "pass@16"
    assert results["num_problems"] == 4
    table = format_table(results)
    assert table in "\n".join(lines) and "CAT - plain" in table and "95% CI low" in table
    paired = results["cat_minus_plain"]
    assert paired["k"] == [1, 2, 4] and np.all(np.asarray(paired["ci_low"]) <= np.asarray(paired["ci_high"]))
    assert results["provenance"]["cpu"] and "commit" in results["provenance"]
    assert results["provenance"]["device_kind"] and results["settings"]["sft_steps"] == TINY.sft_steps
    assert results["config"]["warmup"]["steps"] == TINY.sft_steps  # the whole recipe is recorded
    # the prompt format is an explicit, recorded setting (raw character prompts, no chat template)
    assert results["evaluation"]["use_chat_template"] is False and results["evaluation"]["chat_template_applied"] is False
    assert results["evaluation"]["reward_fn"].endswith("exact_match_rewards")


def test_warm_start_is_cached(tiny_run):
    from jax_cat.training.default_run import run_stage, finished_with, warm_start_config

    out, results, _ = tiny_run
    assert results["models"]["sft"]["train"]["reused"] is False
    cfg = warm_start_config(TINY.config(), out / "base")
    stage, reused = run_stage(cfg, out / "warm_start", reuse=True)
    assert reused is True and stage["final"] == out / "warm_start" / "final"
    assert stage["eval"]["num_correct"] == results["models"]["sft"]["num_correct"]
    # a different SFT setting does not reuse it (the whole run config is compared)
    assert not finished_with(cfg.replace(**{"train.steps": 7}), out / "warm_start")


def test_a_finished_default_run_is_not_replaced_by_accident(tiny_run, capsys):
    """Issue 19 item 1 for the default run: a second run into a folder holding a finished one is refused with the
    way out (`--overwrite`), and nothing in the folder changes; a concurrent one is refused too."""
    from jax_cat.atomic import output_lock
    from jax_cat.training.run_folder import RunFolderError

    out, _, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(RunFolderError, match=r"already holds a finished default run.*python -m jax_cat.train --out .* --overwrite"):
        run_default(TINY, out, say=lambda _: None)
    with output_lock(out), pytest.raises(RunFolderError, match=r"another trainer \(pid \d+\) is running"):
        run_default(TINY, out, say=lambda _: None, overwrite=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="preset"):
        DefaultRun(preset="level3")  # variable-width prompts
    with pytest.raises(ValueError, match="group_size"):
        DefaultRun(group_size=0)
    with pytest.raises(ValueError):
        DefaultRun(cat_strategy="pass@x")
    with pytest.raises(ValueError, match="end_lr_ratio"):
        DefaultRun(sft_end_lr_ratio=1.5)
    with pytest.raises(SystemExit):
        main(["--sft-steps", "many"])


def test_sft_schedule_ends_at_the_chosen_fraction():
    """Issue 21: the warm start's final SFT learning rate is a setting (a small one leaves a sharp warm start)."""
    from jax_cat.training.default_run import trainer_config
    from jax_cat.training.steps import learning_rate_schedule

    for ratio in (0.1, 0.5, 1.0):
        run = DefaultRun(sft_end_lr_ratio=ratio)
        opt = trainer_config(run, method="sft", model_path="unused").optimizer
        schedule = learning_rate_schedule(opt, run.sft_steps)
        assert float(schedule(run.sft_steps)) == pytest.approx(ratio * run.sft_learning_rate, rel=1e-4)


def test_arithmetic_batch_draws_verifiable_fresh_problems():
    from jax_cat.data.arithmetic import ArithmeticTask

    task = ArithmeticTask.from_preset("sum3_2d", test_size=50)
    batch = task.batch(7, 400)
    assert batch == task.batch(7, 400) and batch != task.batch(8, 400)  # a pure function of (seed, split, index)
    held_out = task.test_prompts()
    for p in batch:
        a, b, c = p["prompt"].rstrip("=").split("+")
        assert len(a) == len(b) == len(c) == 2 and p["prompt"] not in held_out
        assert p["answer"] == f"{int(a) + int(b) + int(c):03d}" == p["solution"]  # Python's integers are the reference
    # digit counts uniform over {1, 2} as in problem(i): one-digit operands are < 10
    one_digit = np.mean([int(x) < 10 for p in batch for x in p["prompt"].rstrip("=").split("+")])
    assert 0.43 < one_digit < 0.57


def test_arithmetic_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    from jax_cat.models.tiny import build_arithmetic_checkpoint

    path = build_arithmetic_checkpoint(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("12+05+67=")["input_ids"]
    assert len(tok) == 18 and ids[0] == tok.bos_token_id and len(ids) == 10  # <bos> + one token per character
    assert tok.decode(ids, skip_special_tokens=True) == "12+05+67="
    assert tok("084", add_special_tokens=False)["input_ids"] == [4, 12, 8]  # ids: 4 specials, then "0123456789+-*="


def test_rl_stages_warm_up_their_learning_rate():
    """Issue 21: without a warm-up Adam's first RL updates move every weight by ~lr and undo the warm start."""
    from jax_cat.training.config import load_config
    from jax_cat.training.default_run import trainer_config
    from jax_cat.training.steps import learning_rate_schedule

    run = DefaultRun()
    opt = trainer_config(run, method="grpo", model_path="unused").optimizer
    assert run.grpo_warmup_steps > 0 and opt.warmup_steps == run.grpo_warmup_steps
    schedule = learning_rate_schedule(opt, run.grpo_steps)
    peak, warm = run.grpo_learning_rate, run.grpo_warmup_steps
    assert float(schedule(0)) == pytest.approx(peak / warm, rel=1e-5)  # the first update uses peak/warm (never a no-op)
    assert float(schedule(warm // 2)) == pytest.approx(peak * (warm // 2 + 1) / warm, rel=1e-4)  # peak x (i+1)/warm
    assert float(schedule(run.grpo_steps - 1)) == pytest.approx(run.grpo_learning_rate)
    for recipe in ("grpo", "grpo_cat", "sft_then_cat_rl"):
        assert load_config(recipe).optimizer.warmup_steps >= 50, recipe
    assert load_config("default").optimizer.warmup_steps >= 20  # the measured regime (issue 21, docs/results.md)


def test_cat_minus_plain_has_a_paired_ci_by_hand():
    from jax_cat.training.default_run import paired_difference

    # n = 4 samples: problem 0 CAT 4/4 vs plain 0/4, problem 1 both 2/4 -> pass@1 diffs [1, 0]; pass@2 diffs [1, 0]
    d = paired_difference([4, 2], [0, 2], n=4, ks=[1, 2])
    assert d["mean"] == pytest.approx([0.5, 0.5]) and d["ci_low"] == [0.0, 0.0] and d["ci_high"] == [1.0, 1.0]
    same = paired_difference([3, 1, 2], [3, 1, 2], n=4, ks=[1, 4])
    assert same["mean"] == [0.0, 0.0] and same["ci_low"] == [0.0, 0.0] and same["ci_high"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([1], [1, 2], n=4, ks=[1])


def test_the_recipe_is_the_settings_and_the_view_shows_it():
    """Issue 24: the default experiment's settings are configs/default.toml; DefaultRun is a flat view of its keys."""
    from jax_cat.training.config import load_config
    from jax_cat.training.default_run import default_config, warm_start_config

    recipe = load_config("default")
    assert DefaultRun().config() == recipe == default_config()
    view = DefaultRun()
    assert (view.preset, view.sft_steps, view.grpo_steps, view.cat_strategy, view.eval_samples, view.ks) == (
        "sum3_2d", recipe.warmup.steps, recipe.train.steps, recipe.strategy, recipe.eval.n, recipe.eval.ks)
    assert DefaultRun(seed=3).config() == default_config(["train.seed=3"])
    # the warm start is the trainer's own warm-up stage, with its own optimizer keys
    warm = warm_start_config(recipe, "base")
    o = warm.optimizer
    assert (warm.train.method, warm.train.steps, warm.data.batch_size) == ("sft", 3000, 128)
    assert (o.learning_rate, o.warmup_steps, o.schedule, o.end_lr_ratio, o.weight_decay) == (1e-3, 100, "cosine", 1.0,
                                                                                            0.01)
    assert (recipe.optimizer.warmup_steps, recipe.optimizer.schedule, recipe.optimizer.weight_decay) == (20, "constant",
                                                                                                        0.0)


def test_train_with_no_config_runs_the_default_experiment_into_out(monkeypatch, tmp_path):
    """Issue 24 item 2: `python -m jax_cat.train --out X` (no --config) is the default experiment into X, as
    `python -m jax_cat.train` is into runs/default; without --config, --set changes configs/default.toml's keys;
    --config is one trainer run (`--config sft_tiny`: the built-in 100-step plain SFT)."""
    import jax_cat.train as train
    from jax_cat.training import default_run

    seen = []
    monkeypatch.setattr(default_run, "run_default", lambda cfg, out, **kw: seen.append((cfg, str(out), kw)))
    assert train.main(["--out", str(tmp_path / "x")]) == 0
    assert train.main([]) == 0
    assert train.main(["--out", str(tmp_path / "x"), "--overwrite"]) == 0
    assert [(str(o), kw["overwrite"]) for _, o, kw in seen] == [
        (str(tmp_path / "x"), False), ("runs/default", False), (str(tmp_path / "x"), True)]
    assert all(cfg == default_run.default_config() for cfg, _, _ in seen)
    seen.clear()
    assert main(["--seed", "2", "--set", "train.steps=3", "--out", str(tmp_path / "y")]) == 0
    cfg = seen[0][0]
    assert (cfg.train.seed, cfg.train.steps, cfg.strategy) == (2, 3, "pass@16")
    # --set without --config: the experiment with that key of configs/default.toml changed
    seen.clear()
    assert train.main(["--set", "train.steps=1", "--out", str(tmp_path / "z")]) == 0
    assert seen[0][0] == default_run.default_config(["train.steps=1"]) and seen[0][1] == str(tmp_path / "z")
    # --config sft_tiny: one trainer run, the built-in defaults (a 100-step plain SFT) with the --set keys
    trained = []
    import importlib

    from jax_cat.training.config import load_config

    monkeypatch.setattr(importlib.import_module("jax_cat.training.run"), "run", lambda cfg, **kw: trained.append(cfg) or
                        {"stages": {}, "final": None, "eval": None})
    assert train.main(["--config", "sft_tiny", "--set", "train.steps=1", "--out", str(tmp_path / "w")]) == 0
    assert len(seen) == 1 and trained[0].train.steps == 1 and trained[0].train.method == "sft"
    assert load_config("sft_tiny") == load_config(None)  # the recipe file is exactly the dataclasses' defaults


def test_results_record_a_command_that_rebuilds_the_same_config():
    """The recorded command names every key changed from configs/default.toml; read back by the CLI's own --set
    parser it gives the very same Config (lists, booleans and None included)."""
    import shlex

    from jax_cat.training.default_run import default_config, rerun_command

    assert rerun_command(default_config(), "runs/default") == "python -m jax_cat.train"
    changes = ["train.seed=2", "eval.ks=1,8,64", "data.dataset=arithmetic:sum2_2d", "data.max_prompt_len=7",
               "logging.tensorboard=true", "optimizer.learning_rate=1e-4"]
    cfg = default_config(changes)
    words = shlex.split(rerun_command(cfg, "/tmp/o"))
    assert words[:5] == ["python", "-m", "jax_cat.train", "--out", "/tmp/o"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert len(sets) == len(changes) and default_config(sets) == cfg
