"""TRL / tunix setting names given to --set are refused with the key to use here (never accepted as aliases)."""
import pytest

from jax_cat.training.config import ConfigError, _all_keys, load_config
from jax_cat.training.familiar_names import FAMILIAR_NAMES

KEYS = set(_all_keys())
FLAGS = {"--out", "--resume"}


@pytest.mark.parametrize("name", sorted(FAMILIAR_NAMES))
def test_every_mapping_points_at_a_real_key(name):
    assert FAMILIAR_NAMES[name].key in KEYS | FLAGS


@pytest.mark.parametrize("given, expected", [
    ("num_generations", "rollout.group_size"), ("max_completion_length", "rollout.max_new_tokens"),
    ("num_iterations", "train.updates_per_batch"), ("epsilon", "loss.clip_eps_low"),
    ("epsilon_high", "loss.clip_eps_high"), ("loss_type", "loss.reduction"),
    ("gradient_accumulation_steps", "train.micro_batches"), ("logging_steps", "train.log_every"),
    ("save_steps", "train.checkpoint_every"), ("save_total_limit", "checkpoint.keep"),
    ("max_grad_norm", "optimizer.clip_norm"), ("report_to", "logging.report_to"), ("beta", "loss.beta"),
    ("temperature", "rollout.temperature"), ("learning_rate", "optimizer.learning_rate"),
    ("run_name", "logging.run_name"), ("flush_every_n_steps", "train.log_every"),
    ("train.save_steps", "train.checkpoint_every"),  # under a section too
])
def test_set_with_a_familiar_name_names_our_key(given, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{given}=1"])
    message = str(err.value)
    assert f"did you mean {expected!r}?" in message
    assert "\n" not in message


def test_gradient_accumulation_says_what_differs():
    with pytest.raises(ConfigError, match="TRL accumulates that many batches"):
        load_config(None, ["gradient_accumulation_steps=4"])


def test_docs_table_lists_every_name():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    for name, familiar in FAMILIAR_NAMES.items():
        assert f"| `{name}` | {familiar.source} | `{familiar.key}` |" in doc, name
