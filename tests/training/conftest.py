"""Shared fixtures: the tiny char-level model and tokenizer, a small config, synthetic batches."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from jax_cat.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from jax_cat.models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)


_MODELS: dict = {}


def make_model(seed: int = 0):
    """The tiny default-architecture model, built once per seed (init is slow on a loaded CPU; the steps copy
    the params they train, so sharing it is safe)."""
    if seed not in _MODELS:
        from flax import nnx

        from jax_cat.models import CausalLM
        from jax_cat.models.tiny import tiny_model_config

        _MODELS[seed] = nnx.jit(lambda: CausalLM(tiny_model_config(num_hidden_layers=1), rngs=nnx.Rngs(seed)))()
    return _MODELS[seed]


def one_device():
    """A mesh of one CPU device (the session has 8 forced host devices; tiny runs are faster on one)."""
    import jax

    from jax_cat.sharding import make_mesh

    return make_mesh(data=1, devices=jax.devices()[:1])


def small_config(**overrides):
    """A config sized for tests: tiny batches, no eval, no progress bar, no TensorBoard."""
    from jax_cat.training import load_config

    base = {"data.batch_size": 8, "train.log_every": 1, "train.eval_at_end": False, "logging.progress": False,
            "logging.tensorboard": False, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
            "checkpoint.async_save": False}
    base.update(overrides)
    return load_config(None, base)


def sft_batch(rng: np.random.Generator, rows: int = 8, prompt: int = 6, target: int = 5):
    """Random tokens; every row has a different number of target tokens (so the reductions differ)."""
    ids = rng.integers(4, 100, size=(rows, prompt + target)).astype(np.int32)
    loss = np.zeros_like(ids)
    for r in range(rows):
        loss[r, prompt: prompt + 1 + r % target] = 1
    attn = np.ones_like(ids)
    attn[0, :2] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def rollout_batch(rng: np.random.Generator, prompts: int = 4, group: int = 4, prompt: int = 5, new: int = 4):
    """A synthetic rollout batch: mixed 0/1 rewards, varying completion lengths, a few answer ids."""
    b = prompts * group
    ids = rng.integers(4, 100, size=(b, prompt + new)).astype(np.int32)
    lengths = 1 + (np.arange(b) % new)
    comp = (np.arange(new)[None, :] < lengths[:, None]).astype(np.int32)
    attn = np.concatenate([np.ones((b, prompt), np.int32), comp], axis=1)
    rewards = rng.integers(0, 2, size=b).astype(np.float32)
    rewards[:group] = [1, 0, 0, 0][:group]
    answer_ids = rng.integers(-1, 3, size=b).astype(np.int32)
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp, "rewards": rewards,
            "group_ids": (np.arange(b) // group).astype(np.int32), "answer_ids": answer_ids}
