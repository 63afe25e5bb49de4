"""The trainer frictions found on the real-model path (issue 20): evaluation rows held out of a local training
file, SFT targets cut in silence, the template's end-of-turn ending SFT targets and stopping rollouts, the prompt
batch in the up-front mesh check, a warm-up whose first update is not a no-op, a sign of life on a non-TTY, and the
warning for an accelerator recipe on the CPU. Values are counted or computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jax_cat.training import data as tdata
from jax_cat.training.config import Config, ConfigError, DataConfig, OptimizerConfig, check_mesh, load_config
from tests._load_script import load_script

real_path = load_script("scripts/real_path.py")


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """The real path's byte-level BPE with Qwen's special tokens (EOS <|endoftext|>, turns end with <|im_end|>)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("bpe")
    real_path.build_tokenizer(out, vocab_size=400)
    return AutoTokenizer.from_pretrained(out)


def _file(tmp_path, name, n, start=0):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(start, start + n)]
    return real_path.write_jsonl(rows, tmp_path / name)


# ------------------------------------------------------------------------------------------------ a. eval rows
def test_eval_on_the_training_file_holds_out_its_last_rows(tmp_path):
    train = _file(tmp_path, "train.jsonl", 10)
    cfg = load_config(None, {"data.dataset": str(train), "eval.num_problems": 3})
    assert tdata.eval_holdout(cfg) == 3
    trained = [r["prompt"] for r in tdata.train_records(cfg.data, tdata.eval_holdout(cfg))]
    scored = [r["prompt"] for r in tdata.eval_records(cfg.data, 3, holdout=tdata.eval_holdout(cfg))]
    assert trained == [f"q{i}" for i in range(7)] and scored == ["q7", "q8", "q9"]
    assert "last 3 rows are held out" in tdata.eval_note(cfg, 7) and "eval.dataset" in tdata.eval_note(cfg, 7)
    # data.limit applies to what is left for training, never reaching into the held-out rows
    limited = cfg.replace(**{"data.limit": 50})
    assert len(tdata.train_records(limited.data, tdata.eval_holdout(limited))) == 7
    # not enough rows to hold out and still train: refused with the keys to change
    with pytest.raises(ConfigError, match="eval.num_problems"):
        tdata.train_records(cfg.data, 10)


def test_eval_dataset_key_reads_its_own_file(tmp_path):
    train, test = _file(tmp_path, "train.jsonl", 10), _file(tmp_path, "test.jsonl", 4, start=100)
    cfg = load_config(None, {"data.dataset": str(train), "eval.dataset": str(test), "eval.num_problems": 3})
    assert tdata.eval_holdout(cfg) == 0 and tdata.eval_note(cfg) is None
    assert len(tdata.train_records(cfg.data, 0)) == 10
    assert [r["prompt"] for r in tdata.eval_records(cfg.data, 3, dataset=cfg.eval.dataset)] == ["q100", "q101", "q102"]


def test_hub_dataset_evaluated_on_its_training_split_is_refused():
    cfg = load_config(None, {"data.dataset": "gsm8k", "data.split": "train", "data.eval_split": "train"})
    with pytest.raises(ConfigError, match="data.eval_split"):
        tdata.eval_holdout(cfg)  # before anything is downloaded
    assert tdata.eval_holdout(cfg.replace(**{"data.eval_split": "test"})) == 0


# ------------------------------------------------------------------------------------------------ b. cut targets
def test_cut_targets_are_counted_and_refused_above_the_fraction(tokenizer):
    # char-level tokenizer: a target of k characters is k tokens + EOS
    records = [{"prompt": "p", "answer": "x" * k} for k in (2, 3, 4, 5, 9)]  # 3, 4, 5, 6, 10 tokens
    cfg = DataConfig(use_chat_template=False, max_target_len=5, max_truncated_fraction=0.5)
    line = tdata.check_target_lengths(records, tokenizer, cfg)
    assert "2 of 5 targets (40.0%) are longer than data.max_target_len=5" in line and "longest 10" in line
    with pytest.raises(ConfigError, match=r"max_truncated_fraction=0.2.*data.max_target_len \(e.g. to 10\)"):
        tdata.check_target_lengths(records, tokenizer, DataConfig(use_chat_template=False, max_target_len=5,
                                                                  max_truncated_fraction=0.2))
    assert "0 of 5" in tdata.check_target_lengths(records, tokenizer, DataConfig(use_chat_template=False,
                                                                                  max_target_len=10))


def test_long_prompts_are_refused_before_training_naming_the_key(tokenizer):
    records = [{"prompt": "x" * k, "answer": "1"} for k in (3, 12, 4)]
    with pytest.raises(ConfigError, match=r"1 of 3 prompts .* data.max_prompt_len=8 tokens \(longest 12\)"):
        tdata.check_prompt_lengths(records, tokenizer, DataConfig(use_chat_template=False, max_prompt_len=8))
    tdata.check_prompt_lengths(records, tokenizer, DataConfig(use_chat_template=False, max_prompt_len=12))


# ------------------------------------------------------------------------------------------------ e. end of turn
def test_sft_targets_end_with_the_templates_end_of_turn(bpe_tokenizer):
    tok = bpe_tokenizer
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token_id == eos != im_end
    assert tdata.target_end_ids(tok, use_chat_template=True) == [im_end]
    assert tdata.target_end_ids(tok, use_chat_template=False) == [eos]
    cfg = DataConfig(use_chat_template=True, max_prompt_len=64, max_target_len=32)
    batch = tdata.SFTCollator(tok, cfg)([{"prompt": "1+1?", "answer": "2", "solution": "It is 2."}])
    target = batch["input_ids"][0][batch["loss_mask"][0] == 1].tolist()
    assert target == tok("It is 2.", add_special_tokens=False)["input_ids"] + [im_end]


def test_rollouts_stop_at_the_templates_end_of_turn(bpe_tokenizer):
    from jax_cat.training.grpo import _token_ids

    im_end, eos = bpe_tokenizer.convert_tokens_to_ids("<|im_end|>"), bpe_tokenizer.eos_token_id
    stops, pad = _token_ids(None, bpe_tokenizer, use_chat_template=True)
    assert stops == (eos, im_end) and pad == bpe_tokenizer.pad_token_id
    assert _token_ids(None, bpe_tokenizer, use_chat_template=False)[0] == (eos,)


# ------------------------------------------------------------------------------------------------ c. mesh check
def test_mesh_check_tests_the_prompt_batch():
    cfg = load_config(None, {"train.method": "grpo", "data.batch_size": 2, "rollout.group_size": 8,
                             "mesh.data": 1, "mesh.fsdp": -1})
    # 16 rollout rows split over 4 devices, but the 2 prompts do not (JAX's IndivisibleError after the model load)
    with pytest.raises(ConfigError, match="data.batch_size=2 prompts do not split over data x fsdp = 4 devices; "
                                          "set data.batch_size to a multiple of 4"):
        check_mesh(cfg, 4)
    assert check_mesh(cfg.replace(**{"data.batch_size": 4}), 4) == (1, 4, 1)


def test_mesh_size_error_says_how_to_get_cpu_devices():
    with pytest.raises(ConfigError, match="XLA_FLAGS=--xla_force_host_platform_device_count=4$"):
        check_mesh(load_config(None, {"mesh.data": 1, "mesh.fsdp": 4}), 1)


# ------------------------------------------------------------------------------------------------ e. warm-up
def test_warmup_starts_above_zero():
    from jax_cat.training.steps import learning_rate_schedule

    sched = learning_rate_schedule(OptimizerConfig(learning_rate=1e-3, warmup_steps=10, schedule="constant"), 100)
    lrs = [float(sched(i)) for i in (0, 1, 9, 10, 50)]
    np.testing.assert_allclose(lrs, [1e-4, 2e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)  # peak x (i + 1) / 10, then peak
    one = learning_rate_schedule(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, schedule="constant"), 100)
    assert float(one(0)) == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------------ d. sign of life
def test_non_tty_run_prints_a_line_per_logged_step(tmp_path, capsys):
    import jax.numpy as jnp

    from jax_cat.training.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, stage="grpo", total_steps=3, progress=False, tensorboard=False, log_every=1)
    for step in (1, 2):
        logger.add(step, {"loss": jnp.float32(0.25 * step)}, {"reward": 0.5})
        logger.flush()
    logger.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "grpo: starting of 3 steps (the first step compiles)"
    assert lines[1].startswith("grpo: step 1/3: loss 0.25, reward 0.5") and lines[2].startswith("grpo: step 2/3: loss 0.5")


def test_heartbeat_between_logged_steps(tmp_path, capsys):
    import jax.numpy as jnp

    from jax_cat.training.metrics import MetricsLogger

    logger = MetricsLogger(None, stage="sft", total_steps=100, progress=False, tensorboard=False, log_every=10,
                           heartbeat_s=0.0)
    logger.add(3, {"loss": jnp.float32(1.0)})
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("sft: step 3/100 done, ")


def test_accelerator_recipe_on_cpu_is_warned_with_the_keys():
    from jax_cat.training.run import accelerator_recipe_warning

    recipe = load_config("qwen2.5-math-1.5b_math_maj16")
    line = accelerator_recipe_warning(recipe, backend="cpu")  # 64 x 8 x (512 + 1024) tokens
    assert "64 prompts x 8 samples x 1024 new tokens" in line and "rollout.max_new_tokens" in line
    assert accelerator_recipe_warning(recipe, backend="gpu") is None
    small = recipe.replace(**{"data.batch_size": 2, "train.micro_batches": 1, "rollout.max_new_tokens": 32})
    assert "model.compute_dtype=float32" in accelerator_recipe_warning(small, backend="cpu")
    assert accelerator_recipe_warning(Config(), backend="cpu") is None


def test_generated_gsm8k_rows_read_as_gsm8k(tmp_path):
    from jax_cat.data import load_prompt_dataset

    train, _ = real_path.build_data(tmp_path, n_train=5, n_test=2)
    records = load_prompt_dataset(str(train))
    assert len(records) == 5 and all(r["answer"].lstrip("-").isdigit() and r["solution"] for r in records)
    assert json.loads(train.read_text().splitlines()[0])["answer"].endswith(f"#### {records[0]['answer']}")


def test_checkpoint_note_counts_params_and_both_moments():
    from tests.training.conftest import make_model

    from jax_cat.training.run import checkpoint_note

    model = make_model()
    import jax
    from flax import nnx

    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    line = checkpoint_note(load_config(None, {"checkpoint.keep": 3}), model)
    assert f"{n / 1e6:,.1f}M parameters, about {12 * n / 2**30:.2f} GiB each" in line and "keep=3" in line
