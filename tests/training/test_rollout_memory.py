"""While the GRPO loop samples, the devices hold the policy weights once (issue 20, item 4).

Counted, not estimated: the verifier runs inside the rollout, after the sampler, so a patched task verifier
(`task_reward_fn`'s) sees every array alive at that moment (`jax.live_arrays()`). The train state holds the float32 embedding and its
two AdamW moments: three copies of every [vocab, hidden]-shaped parameter. The model `run` loaded was a fourth
copy, held by `run` (and the loop) for the whole stage, until both handed it over (measured before the fix: 4).
"""
from __future__ import annotations

import jax
import numpy as np

import importlib

import jax_cat.training.data as tdata
from tests.training.conftest import one_device, small_config

run_module = importlib.import_module("jax_cat.training.run")  # the module (the package exports its function `run`)


def _buffers_of_shape(shape) -> int:
    return len({x.unsafe_buffer_pointer() for x in jax.live_arrays() if x.shape == shape and not x.is_deleted()})


def test_grpo_samples_with_one_copy_of_the_policy_weights(tiny_ckpt, monkeypatch):
    from flax import nnx

    from jax_cat.models import CausalLM
    from jax_cat.models.hf import read_config

    config = read_config(tiny_ckpt)
    embed = (config.vocab_size, config.hidden_size)
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    per_copy = sum(1 for x in jax.tree.leaves(nnx.state(abstract)) if x.shape == embed)  # the embedding, down_proj
    seen: list[tuple[int, int]] = []
    task_reward_fn = tdata.task_reward_fn

    def counting_reward_fn(data_cfg):
        original = task_reward_fn(data_cfg)
        if original is None:
            from jax_cat.rewards import compute_rewards as original

        def counting(texts, golds, *args, **kwargs):
            live = sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())
            seen.append((_buffers_of_shape(embed), live))
            return original(texts, golds, *args, **kwargs)

        return counting

    monkeypatch.setattr(tdata, "task_reward_fn", counting_reward_fn)
    monkeypatch.setattr(run_module, "build_mesh", lambda cfg, devices=None: one_device())
    cfg = small_config(**{"model.path": str(tiny_ckpt), "train.method": "grpo", "train.steps": 2,
                          "train.save_final": False, "data.dataset": "arithmetic:sum3", "data.max_prompt_len": 16,
                          "data.use_chat_template": False})
    import gc

    gc.collect()
    before = _buffers_of_shape(embed)  # other tests' models of this shape still alive in this process
    run_module.run(cfg, out=None)
    assert len(seen) == 2
    for count, live in seen:
        count -= before
        assert count == 3 * per_copy, f"{count / per_copy} copies of the weights alive while sampling (want 3)"
    n = int(np.prod(embed))
    assert seen[-1][1] >= 3 * 4 * n  # sanity: the count saw the state


def test_grpo_with_the_pass_at_n_preset_gets_old_and_reference_logprobs(tokenizer):
    """REFERENCE_PASS_AT_N has p_source "sequence" and beta 0.05: the loop must compute old-policy and reference
    log-probs. It read them off the raw [loss] table (defaults: "group", 0), so the step refused the batch."""
    from jax_cat.training.grpo import logprob_passes, run_grpo
    from tests.training.conftest import make_model

    cfg = small_config(**{"train.method": "grpo", "train.steps": 1, "loss_preset": "reference_pass_at_n",
                          "strategy": "pass@4"})
    assert logprob_passes(cfg) == (True, True)
    result = run_grpo(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(),
                      reward_fn=lambda texts, golds: [float(i % 2) for i in range(len(texts))])
    assert result.history and np.isfinite(result.history[-1]["loss"])
