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
from jax_cat.training.interrupts import deferred_interrupt, raise_if_interrupted
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
    """The local checkpoint folder for model.path ("tiny" | "tiny-arithmetic" | folder | hub id: `jax_cat.models.resolve.resolve_model`);
    ConfigError naming model.path when there is none."""
    from jax_cat.models.resolve import resolve_model

    try:
        return resolve_model(path, setting="model.path")
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ConfigError(str(err)) from None


def load_model(cfg: Config, mesh: Mesh | None) -> tuple[Any, Any]:
    """(CausalLM with params placed on the mesh, tokenizer) from cfg.model."""
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf

    path = model_path(cfg.model.path)
    m = cfg.model
    model = load_hf(path, dtype=DTYPES[m.compute_dtype], param_dtype=DTYPES[m.param_dtype], mesh=mesh, remat=m.remat,
                    scan_layers=m.scan_layers, lora=cfg.lora_config(), quantize=cfg.lora.quantize)
    return model, AutoTokenizer.from_pretrained(path)


def shard_info() -> tuple[int, int]:
    """(this process's index, process count): each process reads its own data shard."""
    return jax.process_index(), jax.process_count()


def local_batch_size(global_batch: int) -> int:
    """This process's share of the global batch; ConfigError when it does not divide evenly over the processes."""
    index, count = shard_info()
    if global_batch % count:
        raise ConfigError(f"data.batch_size={global_batch} does not split over {count} processes")
    return global_batch // count


class CheckpointError(ConfigError):
    """No usable checkpoint to resume from (all damaged, or of another model); the message says what to do."""


def _short(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__


def check_same_model(checkpointer: Checkpointer, step: int, target: TrainState) -> None:
    """CheckpointError naming one parameter and both shapes when checkpoint `step` holds another model's params."""
    from jax_cat.training.checkpoint import flat_paths

    from jax_cat.training.steps import trainable_params

    saved = checkpointer.param_shapes(step)
    mine = {path: tuple(leaf.shape) for path, leaf in flat_paths(trainable_params(target.params)).items()}
    where = checkpointer.path(step)
    for path, shape in mine.items():
        if path not in saved:
            raise CheckpointError(f"checkpoint {where} belongs to another model: it has no parameter {path} "
                                  f"(shape {shape} in this model); resume with the model it was trained from, or "
                                  "start over with --overwrite")
        if saved[path] != shape:
            raise CheckpointError(f"checkpoint {where} belongs to another model: parameter {path} has shape "
                                  f"{saved[path]} there and {shape} in this model; resume with the model it was "
                                  "trained from, or start over with --overwrite")
    extra = sorted(set(saved) - set(mine))
    if extra:
        raise CheckpointError(f"checkpoint {where} belongs to another model: its parameter {extra[0]} is not in this "
                              "model; resume with the model it was trained from, or start over with --overwrite")


def restore_latest_intact(checkpointer: Checkpointer, target: TrainState,
                          warn: Callable[[str], None] | None = None) -> tuple[TrainState, int, dict[str, Any]] | None:
    """(state, step, extras) of the newest checkpoint that restores, or None when there is none.

    A damaged checkpoint (a truncated data file, a missing item) is set aside as `damaged-<step>` with a one-line
    warning and the one before it is tried; when every one is damaged, CheckpointError names them and what to
    remove. A checkpoint of another model (parameter shapes) is a CheckpointError at once, nothing set aside.
    """
    import sys

    warn = warn or (lambda text: is_primary() and print(text, file=sys.stderr, flush=True))
    damaged: list[tuple[int, str]] = []
    for step in sorted(checkpointer.all_steps(), reverse=True):
        try:
            check_same_model(checkpointer, step, target)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - unreadable metadata: damaged
            damaged.append((step, _short(err)))
            continue
        try:
            state, extra = checkpointer.restore(step, target)
        except Exception as err:  # noqa: BLE001 - the storage library's errors: damaged data or a missing item
            damaged.append((step, _short(err)))
            continue
        for bad, problem in damaged:  # newer than the one restored: set aside, or the run would save over them
            aside = checkpointer.set_aside(bad)
            warn(f"warning: checkpoint {checkpointer.path(bad)} is damaged ({problem}); kept as {aside.name}, "
                 f"resuming from {checkpointer.path(step)}")
        return state, int(step), extra
    if damaged:
        listed = "; ".join(f"{checkpointer.path(s)} ({p})" for s, p in damaged)
        raise CheckpointError(f"no intact checkpoint to resume from: {listed}; remove the damaged folder(s) to "
                              "start this stage over with --resume, or start the run over with --overwrite")
    return None


def restore_or_init(checkpointer: Checkpointer | None, resume: bool, tx: Any, model: Any, shardings: TrainState,
                    init: Callable[[], TrainState]) -> tuple[TrainState, int, dict[str, Any]]:
    """(state, start step, extras): the newest intact checkpoint when resuming and there is one, else a fresh
    state (see `restore_latest_intact` for damaged checkpoints and checkpoints of another model).

    A LoRA run's checkpoints hold the adapters only: the frozen base comes from `model` (via `init`)."""
    from jax_cat.training.steps import trainable_params, with_trainable

    if resume and checkpointer is not None:
        target = abstract_state(tx, model, shardings)
        restored = restore_latest_intact(checkpointer, target)
        if restored is not None:
            state, step, extra = restored
            if trainable_params(target.params) is not target.params:  # adapters only: join them to the base
                base = init()
                state = state._replace(params=with_trainable(base.params, state.params))
                del base
            return state, step, extra
    return init(), 0, {}


def run_steps(*, cfg: Config, stage: str, state: TrainState, start_step: int, total_steps: int,
              do_step: Callable[[TrainState, int], tuple[TrainState, dict, dict]],
              extras: Callable[[], dict[str, Any]], checkpointer: Checkpointer | None, logger: MetricsLogger,
              can_checkpoint: Callable[[int], bool] = lambda step: True) -> TrainState:
    """Runs steps start_step..total_steps-1: log every train.log_every, checkpoint every train.checkpoint_every (and
    at the end), stop with NonFiniteLoss at the first non-finite step (that step's update was skipped)."""
    if cfg.train.stop_after is not None:
        total_steps = min(total_steps, cfg.train.stop_after)
    step = start_step
    saved = checkpointer.latest_step() if checkpointer is not None else None
    from jax_cat.sampling.host_memory import trimming_compiles

    try:
        with deferred_interrupt(), trimming_compiles():  # the compilers' freed heap is returned before first runs
            state, saved = _step_loop(cfg, stage, state, step, total_steps, do_step, extras, checkpointer, logger,
                                      can_checkpoint, saved)
    except KeyboardInterrupt:  # a checkpoint write in flight completes: --resume starts from it
        if checkpointer is not None:
            checkpointer.wait()
        raise
    if checkpointer is not None:
        checkpointer.wait()
    return state


def run_stage(*, cfg: Config, stage: str, state: TrainState, start_step: int, total_steps: int,
              do_step: Callable[[TrainState, int], tuple[TrainState, dict, dict]], iterator: Any,
              checkpointer: Checkpointer | None, logger: MetricsLogger, graphdef: Any,
              can_checkpoint: Callable[[int], bool] = lambda step: True) -> RunResult:
    """The end of every training loop (SFT, GRPO): `run_steps` with the data iterator's state in each checkpoint,
    then the logger and checkpointer closed whatever happened (an error, Ctrl-C), and the stage's `RunResult`."""
    try:
        state = run_steps(cfg=cfg, stage=stage, state=state, start_step=start_step, total_steps=total_steps,
                          do_step=do_step, extras=lambda: {"data_iterator": iterator.get_state(), "stage": stage},
                          checkpointer=checkpointer, logger=logger, can_checkpoint=can_checkpoint)
    finally:
        logger.close()
        if checkpointer is not None:
            checkpointer.close()
    return RunResult(model_from_params(graphdef, state.params), logger.history, state,
                     checkpointer.directory if checkpointer else None, stage)


def _step_loop(cfg, stage, state, step, total_steps, do_step, extras, checkpointer, logger, can_checkpoint, saved):
    every, log_every = cfg.train.checkpoint_every, cfg.train.log_every
    while step < total_steps:
        raise_if_interrupted()
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
    return state, saved


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
               dtype: str | None = None, lora_export: str = "merged") -> Path | None:
    """`<out>/final/`: HF checkpoint (save_hf) + tokenizer, written by process 0 from gathered params.

    A LoRA model is written merged (W + B.A.alpha/r, one tensor at a time) or, with `lora_export="peft"`, as a PEFT
    adapter folder (`jax_cat.models.peft.save_peft`: adapter_config.json + adapter_model.safetensors, float32) plus
    the tokenizer, which `peft.PeftModel.from_pretrained` loads onto the `source` base.

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
    if lora_export == "peft" and getattr(host_model, "lora", None) is not None:
        from jax_cat.models.peft import save_peft

        return save_peft(host_model, out / "final", base_model=source, tokenizer=tokenizer, source=source)
    return save_hf(host_model, out / "final", tokenizer=tokenizer, dtype=dtype, source=source)
