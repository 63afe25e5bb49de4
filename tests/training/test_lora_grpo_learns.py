"""A tiny LoRA GRPO run (adapters only, frozen base, rollouts from the merged policy: `lora.rollout=merged` through
`run_grpo`) raises its training reward on an easy task: a one-token completion that is a lowercase letter scores 1
(3 % of the first batch's draws; measured: 0.03 -> 0.83 over 16 steps). The base weights do not move.

The random base's output head is scaled up (std 0.02 -> 0.1): at init scale the logits of a 64-wide model span
~0.1, and adapters, which cannot touch the head, then barely move the sampled distribution (full fine-tuning
learns this task by growing the head itself)."""
from __future__ import annotations

import string

import jax
import numpy as np
from flax import nnx

from jax_cat.models import CausalLM
from jax_cat.models.lora import LoRAConfig, strip_adapters
from jax_cat.models.tiny import tiny_model_config
from jax_cat.training import run_grpo, steps
from tests.training.conftest import one_device, small_config

RUN = {"train.method": "grpo", "train.steps": 16, "data.batch_size": 8, "rollout.group_size": 8,
       "rollout.max_new_tokens": 1, "optimizer.learning_rate": 3e-2, "optimizer.warmup_steps": 0,
       "optimizer.schedule": "constant", "lora.rank": 8, "lora.alpha": 16.0, "lora.rollout": "merged"}


def _letter_first(texts, golds):
    return [float(len(t) > 0 and t[0] in string.ascii_lowercase) for t in texts]


def test_tiny_lora_grpo_raises_its_training_reward(tokenizer):
    cfg = small_config(**RUN)
    model = nnx.jit(lambda: CausalLM(tiny_model_config(num_hidden_layers=1), rngs=nnx.Rngs(0),
                                     lora=cfg.lora_config()))()
    model.embed_tokens.set_value(model.embed_tokens[...] * 5.0)  # tied head: logits with room to move
    base_before = jax.device_get(strip_adapters(steps.split_model(model)[1]))
    result = run_grpo(cfg, model=model, tokenizer=tokenizer, mesh=one_device(), reward_fn=_letter_first)
    reward = [row["reward"] for row in result.history]
    assert len(reward) == 16
    assert np.mean(reward[-4:]) > np.mean(reward[:4]) + 0.2, reward
    base_after = jax.device_get(strip_adapters(result.state.params))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after)))
