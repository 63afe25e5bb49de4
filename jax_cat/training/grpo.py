"""The GRPO loop: rollouts from the current policy, verifier rewards, CAT-weighted updates, `run_grpo(cfg, ...)`.

One rollout batch (data.batch_size prompts x rollout.group_size samples) feeds train.updates_per_batch optimizer
updates; train.steps counts updates. With more than one update per batch the rollout policy's log-probs are
computed once (a forward pass) and the PPO ratio clipping applies; with loss.beta > 0 the initial model is the
reference of the KL term. Checkpoints fall on rollout-batch boundaries, so a resumed run samples exactly what the
uninterrupted one did (sampling keys are a function of (train.seed, step)).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from jax_cat.training import data as tdata
from jax_cat.training import steps
from jax_cat.training.checkpoint import Checkpointer, is_primary
from jax_cat.training.config import Config
from jax_cat.training.metrics import MetricsLogger, logger_settings
from jax_cat.training.rollout import collect_rollouts, logprob_passes  # noqa: F401  (public here too)
from jax_cat.training.rollout_policy import rollout_policy
from jax_cat.training.runtime import (
    RunResult, build_mesh, load_model, local_batch_size, restore_or_init, run_stage, shard_info,
)


def _token_ids(model: Any, tokenizer: Any, use_chat_template: bool = True) -> tuple[tuple[int, ...], int]:
    """(stop ids, pad id): the EOS ids plus, with a chat template, its end-of-turn token (e.g. <|im_end|>, which a
    base model's config does not list), so that rollouts stop where SFT targets end."""
    from jax_cat.data import resolve_pad_token_id, stop_token_ids

    eos = stop_token_ids(model, tokenizer, use_chat_template)  # the rule evaluation uses too
    return eos, resolve_pad_token_id(model, tokenizer, eos)


def run_grpo(cfg: Config, *, model: Any = None, tokenizer: Any = None, mesh: Mesh | None = None,
             out: str | Path | None = None, resume: bool = False, stage: str = "grpo",
             reward_fn: Any = None) -> RunResult:
    """Train `model` (default: load cfg.model.path) for cfg.train.steps GRPO updates with cfg.strategy's CAT weights.

    out: run folder (metrics.jsonl, checkpoints/<stage>/); None = nothing written. resume: continue from the latest
    checkpoint of this stage. reward_fn(texts, golds) -> 0/1 rewards (default: the task's, `jax_cat.training.data.task_reward_fn`).
    """
    mesh = mesh or build_mesh(cfg)
    reward_fn = reward_fn if reward_fn is not None else tdata.task_reward_fn(cfg.data)  # exact form for arithmetic
    if model is None:
        model, tokenizer = load_model(cfg, mesh)
    out = Path(out) if out is not None else None
    t, r = cfg.train, cfg.rollout
    built = steps.steps_for_config(cfg, model, mesh)  # the step and log-prob function `--plan` lowers
    graphdef, tx, shardings = built.graphdef, built.tx, built.shardings
    step_fn, logprob_fn = built.step, built.logprob_fn
    checkpointer = (Checkpointer(out / "checkpoints" / stage, keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save) if out is not None else None)
    state, start, extra = restore_or_init(checkpointer, resume, tx, model, shardings,
                                          lambda: steps.init_state(model, tx, shardings))
    need_old, need_ref = logprob_passes(cfg)
    ref_params = None
    if need_ref:  # the reference is the model this stage started from
        _, ref_params = steps.split_model(model)
        ref_params = jax.device_put(ref_params, shardings.params)
    eos, pad = _token_ids(model, tokenizer, cfg.data.use_chat_template)
    from jax_cat.training.plan import rollout_note

    kv_note = rollout_note(cfg, model.config, model.dtype, mesh.shape["data"] * mesh.shape["fsdp"])
    # From here the loop samples and trains with the state's own params (`model_from_params` wraps them, no copy);
    # the caller's weights stay on the devices only as the KL reference (ref_params above) or if the caller keeps them.
    del model
    index, count = shard_info()
    if is_primary():
        print(f"{stage}: rollout batch {cfg.data.batch_size} prompts x {r.group_size} samples x {r.max_new_tokens} "
              f"new tokens = {cfg.data.batch_size * r.group_size * r.max_new_tokens:,} sampled tokens per batch "
              f"(prompts {cfg.data.max_prompt_len} tokens), {t.updates_per_batch} update(s) per batch; {kv_note}",
              file=sys.stderr)
    records = tdata.train_records(cfg.data, tdata.eval_holdout(cfg))
    tdata.check_prompt_lengths(records, tokenizer, cfg.data)  # ConfigError naming data.max_prompt_len
    iterator = iter(tdata.prompt_batches(records, tokenizer, cfg.data,
                                         batch_size=local_batch_size(cfg.data.batch_size), seed=t.seed,
                                         shard_index=index, shard_count=count))
    if extra.get("data_iterator") is not None:
        iterator.set_state(extra["data_iterator"])
    base_key = jax.random.key(t.seed)
    logger = MetricsLogger(out, stage=stage, total_steps=t.steps, start_step=start, enabled=is_primary(),
                           log_every=cfg.train.log_every, **logger_settings(cfg))
    current: dict[str, Any] = {}

    def do_step(state, step):
        stats: dict[str, float] = {}
        if step % t.updates_per_batch == 0 or not current:
            policy = rollout_policy(graphdef, state.params, cfg.lora.rollout)  # LoRA: adapters or merged once
            batch, stats = collect_rollouts(policy, tokenizer, next(iterator), key=jax.random.fold_in(base_key, step),
                                            cfg=r, mesh=mesh, eos_token_ids=eos, pad_token_id=pad,
                                            reward_fn=reward_fn)
            del policy  # a merged policy's kernels are freed before the log-prob passes and the step
            arrays = batch.arrays()
            if need_old:
                arrays["old_logprobs"] = logprob_fn(state.params, arrays)
            if ref_params is not None:
                arrays["ref_logprobs"] = logprob_fn(ref_params, arrays)
            current["arrays"] = arrays
        state, metrics = step_fn(state, current["arrays"])
        return state, metrics, stats

    return run_stage(cfg=cfg, stage=stage, state=state, start_step=start, total_steps=t.steps, do_step=do_step,
                     iterator=iterator, checkpointer=checkpointer, logger=logger, graphdef=graphdef,
                     can_checkpoint=lambda step: step % t.updates_per_batch == 0)

