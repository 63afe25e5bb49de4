"""What both loops share: loading the model on the mesh, the step loop with logging / checkpoints / NaN stop,
resuming, and the result they return."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_cat.training.checkpoint import Checkpointer, is_primary
from jax_cat.training.config import Config, ConfigError, check_mesh
from jax_cat.training.metrics import MetricsLogger
from jax_cat.training.steps import DTYPES, TrainState, abstract_state


class NonFiniteLoss(RuntimeError):
    """A step produced a non-finite loss or gradient: the run stopped, parameters and checkpoints kept as last good."""


@dataclasses.dataclass
class RunResult:
    """What a loop returns.

    model: the trained CausalLM (params of the last good step); history: the logged metric rows (dicts, one per
    flush, as in metrics.jsonl); state: the final TrainState; checkpoint_dir: where this stage's checkpoints are
    (None when not checkpointing); stage: "sft", "grpo" or "warmup".
    """

    model: Any
    history: list[dict[str, Any]]
    state: TrainState
    checkpoint_dir: Path | None
    stage: str


def build_mesh(cfg: Config, devices: list | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of cfg.mesh over all devices (ConfigError when it does not fit)."""
    from jax_cat.sharding import make_mesh

    devices = list(jax.devices() if devices is None else devices)
    data, fsdp, tensor = check_mesh(cfg, len(devices))
    return make_mesh(data=data, fsdp=fsdp, tensor=tensor, devices=devices)


def model_path(path: str) -> Path:
    """The local checkpoint folder for model.path ("tiny": the embedded default, built once; a hub id: its snapshot)."""
    if path == "tiny":
        from jax_cat.models.tiny import default_checkpoint

        return default_checkpoint()
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.path={path!r}: no config.json there (expected an HF-format checkpoint folder)")
        return local
    from jax_cat.models.hf import resolve_checkpoint_dir

    return resolve_checkpoint_dir(path)


def load_model(cfg: Config, mesh: Mesh | None) -> tuple[Any, Any]:
    """(CausalLM with params placed on the mesh, tokenizer) from cfg.model."""
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf

    path = model_path(cfg.model.path)
    m = cfg.model
    model = load_hf(path, dtype=DTYPES[m.compute_dtype], param_dtype=DTYPES[m.param_dtype], mesh=mesh, remat=m.remat,
                    scan_layers=m.scan_layers)
    return model, AutoTokenizer.from_pretrained(path)


def shard_info() -> tuple[int, int]:
    """(this process's index, process count): each process reads its own data shard."""
    return jax.process_index(), jax.process_count()


def local_batch_size(global_batch: int) -> int:
    index, count = shard_info()
    if global_batch % count:
        raise ConfigError(f"data.batch_size={global_batch} does not split over {count} processes")
    return global_batch // count


def restore_or_init(checkpointer: Checkpointer | None, resume: bool, tx: Any, model: Any, shardings: TrainState,
                    init: Callable[[], TrainState]) -> tuple[TrainState, int, dict[str, Any]]:
    """(state, start step, extras): the latest checkpoint when resuming and there is one, else a fresh state."""
    if resume and checkpointer is not None:
        step = checkpointer.latest_step()
        if step is not None:
            state, extra = checkpointer.restore(step, abstract_state(tx, model, shardings))
            return state, int(step), extra
    return init(), 0, {}


def run_steps(*, cfg: Config, stage: str, state: TrainState, start_step: int, total_steps: int,
              do_step: Callable[[TrainState, int], tuple[TrainState, dict, dict]],
              extras: Callable[[], dict[str, Any]], checkpointer: Checkpointer | None, logger: MetricsLogger,
              can_checkpoint: Callable[[int], bool] = lambda step: True) -> TrainState:
    """Runs steps start_step..total_steps-1: log every train.log_every, checkpoint every train.checkpoint_every (and
    at the end), stop with NonFiniteLoss at the first non-finite step (that step's update was skipped)."""
    every, log_every = cfg.train.checkpoint_every, cfg.train.log_every
    if cfg.train.stop_after is not None:
        total_steps = min(total_steps, cfg.train.stop_after)
    step = start_step
    saved = checkpointer.latest_step() if checkpointer is not None else None
    while step < total_steps:
        state, device_metrics, host_stats = do_step(state, step)
        step += 1
        logger.add(step, device_metrics, host_stats)
        last = step == total_steps
        want_save = checkpointer is not None and can_checkpoint(step) and ((every and step % every == 0) or last)
        if step % log_every == 0 or want_save or last:
            row = logger.flush()
            if row is not None and "first_bad_step" in row:
                if checkpointer is not None:
                    checkpointer.wait()
                where = (f"the last good checkpoint is {checkpointer.path(saved)}" if saved is not None
                         else "no checkpoint was written")
                raise NonFiniteLoss(
                    f"{stage}: non-finite loss ({row['bad_loss']}) at step {row['first_bad_step']}; stopped with the "
                    f"parameters of step {row['first_bad_step'] - 1}; {where}. Lower optimizer.learning_rate or "
                    "check the data."
                )
        if want_save:
            checkpointer.save(step, state, extras())
            saved = step
    if checkpointer is not None:
        checkpointer.wait()
    return state


def gather_params(params: Any) -> Any:
    """Host copies of params (all processes' shards gathered when running multi-host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def model_from_params(graphdef: nnx.GraphDef, params: Any) -> Any:
    """A CausalLM from a graphdef and params (the trained model a loop returns)."""
    return nnx.merge(graphdef, params)


def save_final(model: Any, tokenizer: Any, out: Path, *, source: str | Path | None = None,
               dtype: str | None = None) -> Path | None:
    """`<out>/final/`: HF checkpoint (save_hf) + tokenizer, written by process 0 from gathered params.

    `dtype`: "source" (the dtype the `source` checkpoint stores, so a bf16 model is not exported as 2x float32),
    "float32", "bfloat16", "float16", or None (the parameters' dtype). `source`'s generation_config.json (stop ids,
    sampling defaults) and tokenizer files the tokenizer object does not write are copied too.
    """
    from jax_cat.models import save_hf
    from jax_cat.models.hf import checkpoint_dtype

    graphdef, state = nnx.split(model)
    host = gather_params(nnx.to_pure_dict(state))
    if not is_primary():
        return None
    if dtype == "source":
        dtype = checkpoint_dtype(source) if source is not None else None
    host_model = nnx.merge(graphdef, jax.tree.map(np.asarray, host))
    return save_hf(host_model, out / "final", tokenizer=tokenizer, dtype=dtype, source=source)
