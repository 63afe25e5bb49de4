"""Orbax checkpoints of a training stage: params, optimizer state, step (one sharded PyTree) + JSON extras
(the grain iterator state, the PRNG seed and whatever the loop needs to continue exactly).

Saves are asynchronous (a background thread writes while training goes on), the last `keep` are kept, and each is
atomic: Orbax writes into a temporary folder and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_cat.training.steps import TrainState, trainable_params


class Checkpointer:
    """`<directory>/<step>/{state,extra}`; `save(step, state, extra)`, `latest_step()`, `restore(step, target)`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = True) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: TrainState, extra: dict[str, Any]) -> None:
        """Start writing checkpoint `step` (returns before the write finishes when async). A LoRA state is saved
        without its frozen base: params = the adapters (`steps.trainable_params`)."""
        state = state._replace(params=trainable_params(state.params))
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state._asdict()), extra=ocp.args.JsonSave(extra)), force=True)

    def latest_step(self) -> int | None:
        """The newest saved step (None: no checkpoint yet), where a resume starts."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step with a saved checkpoint, for choosing one to restore or report."""
        return list(self._manager.all_steps())

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """(state placed as `target`'s shardings, extras) of checkpoint `step`; target: `steps.abstract_state(...)`.
        For a LoRA target the restored params are its adapters only (`steps.with_trainable` joins them to a base)."""
        target = target._replace(params=trainable_params(target.params))
        restored = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target._asdict()), extra=ocp.args.JsonRestore()))
        return TrainState(**restored["state"]), dict(restored["extra"])

    def param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """{parameter path: shape} of checkpoint `step`, read from its metadata (no array is loaded)."""
        state = self.path(step) / "state"
        if not state.is_dir():
            raise FileNotFoundError(f"its item 'state' is missing ({state})")
        meta = ocp.StandardCheckpointer().metadata(state)
        tree = getattr(meta, "item_metadata", meta)
        shapes = {path: tuple(leaf.shape) for path, leaf in flat_paths(tree["params"]).items()}
        if not shapes:
            raise ValueError(f"no parameters in the metadata of {state}")
        return shapes

    def set_aside(self, step: int) -> Path:
        """Rename checkpoint `step` to `damaged-<step>` (kept for inspection, no longer a step) and forget it."""
        src = self.path(step)
        dst = self.directory / f"damaged-{int(step)}"
        n = 1
        while dst.exists():
            n += 1
            dst = self.directory / f"damaged-{int(step)}-{n}"
        if is_primary():
            os.replace(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()
        return dst

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for any save in flight, then release the manager: no checkpoint is left half written."""
        self._manager.wait_until_finished()
        self._manager.close()

    def path(self, step: int) -> Path:
        """The folder of checkpoint `step`, to point a user or a test at it."""
        return self.directory / str(int(step))


def flat_paths(tree: Any) -> dict[str, Any]:
    """{"layers.0.mlp.up_proj.kernel": leaf, ...}: a pytree's leaves by dotted path (keys, attributes, indices)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out[".".join(parts)] = leaf
    return out


def is_primary() -> bool:
    """Whether this process writes host-side files (metrics, final checkpoint): process 0."""
    return jax.process_index() == 0
