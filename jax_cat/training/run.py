"""A whole run from a Config: [SFT warm-up ->] the SFT or GRPO stage -> `<out>/final/` -> held-out evaluation."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from jax_cat.atomic import atomic_write_text
from jax_cat.training.checkpoint import is_primary
from jax_cat.training.config import Config
from jax_cat.training.data import check_data, eval_note
from jax_cat.training.grpo import run_grpo
from jax_cat.training.run_folder import check_out_dir, owner_lock, prepare_run_folder
from jax_cat.training.runtime import RunResult, build_mesh, load_model, model_path, save_final
from jax_cat.training.sft import run_sft


def warmup_config(cfg: Config) -> Config:
    """The SFT warm-up stage's Config: cfg with train.method sft, the warm-up's steps, learning rate (and, when set,
    LR warm-up, schedule, end ratio and weight decay), batch, strategy."""
    w = cfg.warmup
    own = {"warmup_steps": w.lr_warmup_steps, "schedule": w.schedule, "end_lr_ratio": w.end_lr_ratio,
           "weight_decay": w.weight_decay}
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, method="sft", steps=w.steps, micro_batches=1, stop_after=None),
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=w.learning_rate,
                                      **{k: v for k, v in own.items() if v is not None}),
        data=dataclasses.replace(cfg.data, batch_size=w.batch_size or cfg.data.batch_size),
        loss=dataclasses.replace(cfg.loss, reduction="token_mean"),
        strategy=w.strategy,
    )


def evaluate_model(cfg: Config, model: Any, tokenizer: Any, out: Path | None) -> dict[str, Any]:
    """pass@k / maj@k / bon@k (eval.metrics) on cfg.eval.num_problems held-out problems with `jax_cat.evaluate`'s
    one path, prompts formatted as training formats them; writes `<out>/eval/` (results + plot)."""
    from jax_cat.evaluate import evaluate, write_results
    from jax_cat.training.data import _local_file, eval_dataset, eval_holdout, eval_records, task_reward_fn

    e = cfg.eval
    held = eval_holdout(cfg)
    problems = eval_records(cfg.data, e.num_problems, dataset=e.dataset, holdout=held)
    result = evaluate(model, tokenizer, problems, n=e.n, ks=e.ks, max_new_tokens=e.max_new_tokens or
                      cfg.rollout.max_new_tokens, temperature=e.temperature, seed=cfg.train.seed,
                      use_chat_template=cfg.data.use_chat_template, system=cfg.data.system, progress=False,
                      reward_fn=task_reward_fn(cfg.data), metrics=e.metrics, batch_size=e.batch_size)
    source = (f"last {held} rows of {cfg.data.dataset} (held out of training)" if held else None)
    result["config"].update(model=str(cfg.model.path), trained_model=str(out / "final") if out is not None else None,
                            dataset=eval_dataset(cfg), held_out=source,
                            split=None if held or _local_file(eval_dataset(cfg)) else cfg.data.eval_split,
                            train_dataset=cfg.data.dataset, train_method=cfg.train.method, strategy=cfg.strategy)
    if out is not None and is_primary():
        write_results(result, out / "eval", plot_title=f"{cfg.train.method} {cfg.strategy} on {cfg.data.dataset}")
    return result


def accelerator_recipe_warning(cfg: Config, backend: str | None = None) -> str | None:
    """On the CPU, a warning for a recipe sized for a GPU/TPU (more than 100k sampled or trained tokens a step:
    hours a step) or computing in bfloat16 (no faster than float32 on XLA:CPU, only less exact), with the keys to
    change; None otherwise."""
    import jax

    if (backend or jax.default_backend()) != "cpu":
        return None
    d, r = cfg.data, cfg.rollout
    grpo = cfg.train.method == "grpo"
    tokens = d.batch_size * (r.group_size * (d.max_prompt_len + r.max_new_tokens) if grpo
                             else d.max_prompt_len + d.max_target_len)
    if tokens > 100_000:
        shape = (f"{d.batch_size} prompts x {r.group_size} samples x {r.max_new_tokens} new tokens" if grpo
                 else f"{d.batch_size} x {d.max_prompt_len + d.max_target_len} tokens")
        keys = "data.batch_size, rollout.group_size, rollout.max_new_tokens" if grpo else "data.batch_size"
        return (f"warning: a recipe sized for GPU/TPU ({shape} a step) is running on CPU, where a step can take "
                f"hours; for a CPU trial lower {keys}, eval.num_problems and eval.n")
    if cfg.model.compute_dtype == "bfloat16":
        return ("warning: model.compute_dtype=bfloat16 is meant for GPU/TPU; on CPU it is no faster than float32, "
                "only less exact (--set model.compute_dtype=float32)")
    return None


def checkpoint_note(cfg: Config, model: Any) -> str:
    """One line: how big each checkpoint is (params + the two AdamW moments in model.param_dtype, nothing else)
    and how many are kept, so that the disk is sized before the first save."""
    import jax
    import numpy as np
    from flax import nnx

    if getattr(model, "lora", None) is not None:  # adapters only (float32), the base is model.path
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
        return (f"checkpoints: {n / 1e6:,.1f}M LoRA adapter parameters, about {3 * n * 4 / 2**30:.3f} GiB each "
                f"(adapters + 2 AdamW moments in float32; the frozen base is not stored), the last "
                f"checkpoint.keep={cfg.checkpoint.keep} kept per stage")
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    each = 3 * n * (4 if cfg.model.param_dtype == "float32" else 2)
    return (f"checkpoints: {n / 1e6:,.1f}M parameters, about {each / 2**30:.2f} GiB each (params + 2 AdamW moments in "
            f"{cfg.model.param_dtype}), the last checkpoint.keep={cfg.checkpoint.keep} kept per stage")


def run(cfg: Config, *, out: str | Path | None, resume: bool = False, overwrite: bool = False,
        devices: list | None = None) -> dict[str, Any]:
    """Runs every stage of `cfg`; returns {"stages": {name: RunResult}, "final": path, "eval": result}.

    The run folder `out` is checked and locked first (`jax_cat.training.run_folder`): a folder holding a run is
    refused unless `resume` (same config, up to the keys `SAFE_ON_RESUME` lists) or `overwrite` (its run entries are
    removed); a second process on the same folder is refused. The data is loaded and checked before the model.
    The warm-up stage's RunResult keeps its history only (model and state None: its weights went on into the main
    stage). `devices`: the devices of the mesh (default: all of them).
    """
    out = Path(out) if out is not None else None
    if out is None:
        return _run(cfg, None, resume=resume, devices=devices)
    check_out_dir(out)
    if not is_primary():  # process 0 owns the folder; the others only read checkpoints and shards from it
        _barrier("run folder checked")
        return _run(cfg, out, resume=resume, devices=devices)
    with owner_lock(out):
        prepare_run_folder(cfg, out, resume=resume, overwrite=overwrite, dry_run=True)
        check_data(cfg.data, evaluate=cfg.train.eval_at_end, eval_problems=cfg.eval.num_problems)
        model_path(cfg.model.path)  # a missing folder or an unknown hub id: refused before anything is written
        write_config = prepare_run_folder(cfg, out, resume=resume, overwrite=overwrite)  # --overwrite removes here
        out.mkdir(parents=True, exist_ok=True)
        if write_config:
            atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        _barrier("run folder checked")
        return _run(cfg, out, resume=resume, devices=devices)


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _run(cfg: Config, out: Path | None, *, resume: bool, devices: list | None = None) -> dict[str, Any]:
    check_data(cfg.data, evaluate=cfg.train.eval_at_end, eval_problems=cfg.eval.num_problems)  # cached
    mesh = build_mesh(cfg, devices)
    if is_primary():
        for line in filter(None, [accelerator_recipe_warning(cfg), eval_note(cfg)]):
            print(line, file=sys.stderr)
    # The loaded weights are handed to the loops, not kept here: a loop copies them into its train state, and a
    # reference held here would keep a second copy of the policy on the devices through the whole stage.
    handoff: dict[str, Any] = {}
    handoff["model"], tokenizer = load_model(cfg, mesh)
    if out is not None and is_primary():
        print(checkpoint_note(cfg, handoff["model"]), file=sys.stderr)
    stages: dict[str, RunResult] = {}
    if cfg.train.method == "grpo" and cfg.warmup.steps > 0:
        warm = run_sft(warmup_config(cfg), model=handoff.pop("model"), tokenizer=tokenizer, mesh=mesh, out=out,
                       resume=resume, stage="warmup")
        handoff["model"] = warm.model
        # its history stays; its weights are the next stage's start and its optimizer state is not needed again
        stages["warmup"] = dataclasses.replace(warm, model=None, state=None)
        del warm
    loop = run_grpo if cfg.train.method == "grpo" else run_sft
    result = loop(cfg, model=handoff.pop("model"), tokenizer=tokenizer, mesh=mesh, out=out, resume=resume,
                  stage=cfg.train.method)
    stages[cfg.train.method] = result
    summary: dict[str, Any] = {"stages": stages, "final": None, "eval": None}
    if cfg.train.stop_after is not None and cfg.train.stop_after < cfg.train.steps:
        return summary  # stopped early on purpose: --resume finishes, then writes final/ and evaluates
    if out is not None and cfg.train.save_final:
        summary["final"] = save_final(result.model, tokenizer, out, source=model_path(cfg.model.path),
                                      dtype=cfg.train.export_dtype, lora_export=cfg.lora.export)
    if cfg.train.eval_at_end and cfg.eval.num_problems > 0:
        summary["eval"] = evaluate_model(cfg, result.model, tokenizer, out)
    return summary
