"""The SFT loop: (CAT) supervised fine-tuning on the data's solutions, `run_sft(cfg, ...) -> RunResult`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from jax_cat.training import data as tdata
from jax_cat.training import steps
from jax_cat.training.checkpoint import Checkpointer, is_primary
from jax_cat.training.config import Config
from jax_cat.training.metrics import MetricsLogger, logger_settings
from jax_cat.training.rollout import global_batch
from jax_cat.training.runtime import (
    RunResult, build_mesh, load_model, local_batch_size, restore_or_init, run_stage, shard_info,
)


def run_sft(cfg: Config, *, model: Any = None, tokenizer: Any = None, mesh: Mesh | None = None,
            out: str | Path | None = None, resume: bool = False, stage: str = "sft") -> RunResult:
    """Train `model` (default: load cfg.model.path) for cfg.train.steps SFT steps with cfg.strategy's CAT SFT loss.

    out: run folder (metrics.jsonl, checkpoints/<stage>/); None = nothing written. resume: continue from the latest
    checkpoint of this stage. Returns the trained model and the logged metrics (see RunResult).
    """
    mesh = mesh or build_mesh(cfg)
    if model is None:
        model, tokenizer = load_model(cfg, mesh)
    out = Path(out) if out is not None else None
    built = steps.steps_for_config(cfg, model, mesh)
    graphdef, tx, shardings, step_fn = built.graphdef, built.tx, built.shardings, built.step
    checkpointer = (Checkpointer(out / "checkpoints" / stage, keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save) if out is not None else None)
    state, start, extra = restore_or_init(checkpointer, resume, tx, model, shardings,
                                          lambda: steps.init_state(model, tx, shardings))
    del model  # trained from the state's own copy; the caller's weights are not held here (see run.run)
    index, count = shard_info()
    records = tdata.train_records(cfg.data, tdata.eval_holdout(cfg))
    tdata.check_prompt_lengths(records, tokenizer, cfg.data)  # ConfigError naming data.max_prompt_len
    note = tdata.check_target_lengths(records, tokenizer, cfg.data)  # ConfigError above the allowed fraction
    if is_primary():
        print(f"{stage} data: {note}", file=sys.stderr)
    iterator = iter(tdata.sft_pipeline(records, tokenizer, cfg.data,
                                       batch_size=local_batch_size(cfg.data.batch_size), seed=cfg.train.seed,
                                       shard_index=index, shard_count=count))
    if extra.get("data_iterator") is not None:
        iterator.set_state(extra["data_iterator"])
    logger = MetricsLogger(out, stage=stage, total_steps=cfg.train.steps, start_step=start, enabled=is_primary(),
                           log_every=cfg.train.log_every, **logger_settings(cfg))

    def do_step(state, step):
        batch = global_batch(next(iterator), mesh)
        state, metrics = step_fn(state, batch)
        return state, metrics, {}

    return run_stage(cfg=cfg, stage=stage, state=state, start_step=start, total_steps=cfg.train.steps,
                     do_step=do_step, iterator=iterator, checkpointer=checkpointer, logger=logger, graphdef=graphdef)

