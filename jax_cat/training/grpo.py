"""The GRPO loop: rollouts from the current policy, verifier rewards, CAT-weighted updates, `run_grpo(cfg, ...)`.

One rollout batch (data.batch_size prompts x rollout.group_size samples) feeds train.updates_per_batch optimizer
updates; train.steps counts updates. With more than one update per batch the rollout policy's log-probs are
computed once (a forward pass) and the PPO ratio clipping applies; with loss.beta > 0 the initial model is the
reference of the KL term. Checkpoints fall on rollout-batch boundaries, so a resumed run samples exactly what the
uninterrupted one did (sampling keys are a function of (train.seed, step)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from jax_cat.losses import strategy_from_spec
from jax_cat.training import data as tdata
from jax_cat.training import steps
from jax_cat.training.checkpoint import Checkpointer, is_primary
from jax_cat.training.config import Config
from jax_cat.training.metrics import MetricsLogger
from jax_cat.training.rollout import collect_rollouts
from jax_cat.training.runtime import (
    RunResult, build_mesh, load_model, local_batch_size, model_from_params, restore_or_init, run_steps, shard_info,
)


def _token_ids(model: Any, tokenizer: Any) -> tuple[tuple[int, ...], int]:
    from jax_cat.sampling.engine import resolve_eos_token_ids, resolve_pad_token_id

    eos = resolve_eos_token_ids(model, tokenizer)
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
    graphdef, tx, shardings, schedule = steps.build_training(model, mesh, cfg.optimizer, t.steps)
    prompt_len = cfg.data.max_prompt_len
    settings = dict(strategy=strategy_from_spec(cfg.strategy), loss_cfg=cfg.loss_config(), prompt_len=prompt_len,
                    micro_batches=t.micro_batches)
    if steps.needs_cat_state(settings["strategy"], settings["loss_cfg"]):  # running normaliser / BoN history
        shardings = steps.with_cat_state(shardings, mesh)
    step_fn = steps.cached("grpo_step", (graphdef, mesh, cfg.optimizer, t.steps, *settings.items()),
                           lambda: steps.make_grpo_step(graphdef, tx, shardings, mesh, schedule=schedule, **settings))
    logprob_fn = steps.cached("logprob", (graphdef, mesh, prompt_len), lambda: steps.make_logprob_fn(
        graphdef, shardings, mesh, prompt_len=prompt_len))
    checkpointer = (Checkpointer(out / "checkpoints" / stage, keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save) if out is not None else None)
    state, start, extra = restore_or_init(checkpointer, resume, tx, model, shardings,
                                          lambda: steps.init_state(model, tx, shardings))
    ref_params = None
    if cfg.loss.beta > 0:  # the reference is the model this stage started from
        _, ref_params = steps.split_model(model)
        ref_params = jax.device_put(ref_params, shardings.params)
    index, count = shard_info()
    iterator = iter(tdata.prompt_batches(tdata.train_records(cfg.data), tokenizer, cfg.data,
                                         batch_size=local_batch_size(cfg.data.batch_size), seed=t.seed,
                                         shard_index=index, shard_count=count))
    if extra.get("data_iterator") is not None:
        iterator.set_state(extra["data_iterator"])
    eos, pad = _token_ids(model, tokenizer)
    base_key = jax.random.key(t.seed)
    logger = MetricsLogger(out, stage=stage, total_steps=t.steps, start_step=start, progress=cfg.logging.progress,
                           tensorboard=cfg.logging.tensorboard, enabled=is_primary())
    current: dict[str, Any] = {}

    def do_step(state, step):
        stats: dict[str, float] = {}
        if step % t.updates_per_batch == 0 or not current:
            policy = model_from_params(graphdef, state.params)
            batch, stats = collect_rollouts(policy, tokenizer, next(iterator), key=jax.random.fold_in(base_key, step),
                                            cfg=r, mesh=mesh, eos_token_ids=eos, pad_token_id=pad,
                                            reward_fn=reward_fn)
            arrays = batch.arrays()
            if t.updates_per_batch > 1 or cfg.loss.p_source == "sequence":
                arrays["old_logprobs"] = logprob_fn(state.params, arrays)
            if ref_params is not None:
                arrays["ref_logprobs"] = logprob_fn(ref_params, arrays)
            current["arrays"] = arrays
        state, metrics = step_fn(state, current["arrays"])
        return state, metrics, stats

    try:
        state = run_steps(cfg=cfg, stage=stage, state=state, start_step=start, total_steps=t.steps, do_step=do_step,
                          extras=lambda: {"data_iterator": iterator.get_state(), "stage": stage},
                          checkpointer=checkpointer, logger=logger,
                          can_checkpoint=lambda step: step % t.updates_per_batch == 0)
    finally:
        logger.close()
        if checkpointer is not None:
            checkpointer.close()
    return RunResult(model_from_params(graphdef, state.params), logger.history, state,
                     checkpointer.directory if checkpointer else None, stage)

