"""PEFT LoRA adapter folders as task vectors: an adapter is the low-rank update tau = B @ A * lora_alpha / r of each
weight it adapts (zero elsewhere), so it merges and is analysed next to full fine-tuned checkpoints.

- `AdapterCheckpoint(folder, base)`: the folder seen as the full checkpoint base + tau, read like a
  `merging.checkpoint.Checkpoint` (names, shapes, `get`, `get_rows`), densifying one tensor (or row block) at a time:
  `merge_checkpoints`, `analyze_checkpoints` and the DoTS CLI take adapter folders where they take checkpoints.
- `open_checkpoint(path, base)`: a `Checkpoint`, or an `AdapterCheckpoint` when `path` holds adapter_config.json.
- `adapter_task_vector(folder, base)` / `iter_adapter_deltas(folder)`: the in-memory task vector, a dict keyed by
  the base's HF tensor names (what `merging.task_vector(folder, base_dict)` returns).

Reads safetensors + JSON only, through the low layer `jax_cat.io.peft` (the folder checks `jax_cat.models.peft`
shares; nothing else from jax_cat); `jax_cat.models.peft` is the writing side.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from jax_cat.io.peft import (  # noqa: F401 - the folder reader both packages share; names re-exported here
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterFormatError,
    is_adapter_folder,
    lora_tensor_pairs,
    read_lora_config,
)
from merging.checkpoint import Checkpoint, CheckpointMismatchError, TensorInfo

__all__ = ["AdapterCheckpoint", "AdapterFormatError", "adapter_task_vector", "is_adapter_folder",
           "iter_adapter_deltas", "open_checkpoint", "read_adapter"]


def read_adapter(folder: str | os.PathLike[str]) -> tuple[float, dict[str, tuple[str, str]]]:
    """(scale = lora_alpha / r, {HF weight name: (lora_A tensor name, lora_B tensor name)}) of a PEFT LoRA folder."""
    cfg, file = read_lora_config(folder)  # the checks jax_cat.models.peft shares (jax_cat.io.peft)
    try:
        r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))
    except (KeyError, ValueError, TypeError) as err:
        raise AdapterFormatError(f"{file}: bad or missing r / lora_alpha ({err})") from None
    scale = alpha / np.sqrt(r) if cfg.get("use_rslora") else alpha / r
    pairs = lora_tensor_pairs(folder, unmatched=" (modules_to_save and embedding adapters are not supported)")
    return float(scale), pairs


def _read(file: Path, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    with safe_open(str(file), framework="numpy") as handle:
        if rows is None:
            return np.asarray(handle.get_tensor(name), np.float32)
        return np.asarray(handle.get_slice(name)[rows[0]:rows[1]], np.float32)


def iter_adapter_deltas(folder: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(HF weight name, tau = B @ A * scale, float32 [out, in]) for each weight the adapter changes, one at a time."""
    scale, pairs = read_adapter(folder)
    file = Path(folder) / WEIGHTS_FILE
    for weight, (a, b) in pairs.items():
        yield weight, (_read(file, b) @ _read(file, a)) * np.float32(scale)


def adapter_task_vector(folder: str | os.PathLike[str], base: Mapping[str, Any], *, dtype: Any = None) -> dict:
    """The adapter's task vector shaped like `base` (a dict keyed by HF tensor names): tau for the adapted weights,
    zeros elsewhere; each leaf in `dtype` (None: the base leaf's dtype). AdapterFormatError / CheckpointMismatchError
    naming the tensor when the adapter does not fit the base."""
    import jax.numpy as jnp

    deltas = dict(iter_adapter_deltas(folder))
    extra = sorted(set(deltas) - set(base))
    if extra:
        raise CheckpointMismatchError(f"adapter {folder}: it adapts {extra[0]!r}, which the base does not have")
    out = {}
    for name, leaf in base.items():
        out_dtype = jnp.dtype(dtype if dtype is not None else leaf.dtype)
        if name in deltas:
            if deltas[name].shape != tuple(leaf.shape):
                raise CheckpointMismatchError(f"adapter {folder}: {name!r} is {deltas[name].shape} there and "
                                              f"{tuple(leaf.shape)} in the base")
            out[name] = jnp.asarray(deltas[name]).astype(out_dtype)
        else:
            out[name] = jnp.zeros(leaf.shape, out_dtype)
    return out


class AdapterCheckpoint:
    """A PEFT LoRA folder read as the full checkpoint `base` + B @ A * scale (float32 where adapted): the interface of
    `merging.checkpoint.Checkpoint` (path, dir, info, names, get, get_rows, config), one tensor densified at a time."""

    def __init__(self, folder: str | os.PathLike[str], base: Checkpoint):
        self.path = Path(folder)
        self.base = base
        self.dir = base.dir  # config.json and side files are the base's
        self.scale, self.pairs = read_adapter(folder)
        self._file = self.path / WEIGHTS_FILE
        with safe_open(str(self._file), framework="numpy") as handle:
            for weight, (a, b) in self.pairs.items():
                if weight not in base.info:
                    raise CheckpointMismatchError(f"adapter {self.path}: it adapts {weight!r}, which the base "
                                                  f"({base.path}) does not have")
                a_shape, b_shape = handle.get_slice(a).get_shape(), handle.get_slice(b).get_shape()
                if tuple(base.info[weight].shape) != (b_shape[0], a_shape[1]) or a_shape[0] != b_shape[1]:
                    raise CheckpointMismatchError(
                        f"adapter {self.path}: {weight!r}: lora_B {tuple(b_shape)} @ lora_A {tuple(a_shape)} does "
                        f"not give the base's shape {base.info[weight].shape}")
        self.info: dict[str, TensorInfo] = {
            n: TensorInfo("F32", i.shape, i.file) if n in self.pairs else i for n, i in base.info.items()}
        self.names = base.names

    def delta(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """tau of one weight (rows [start, stop) when given), float32 [out, in]."""
        a, b = self.pairs[name]
        rows = None if start is None else (start, min(stop, self.info[name].shape[0]))
        return (_read(self._file, b, rows) @ _read(self._file, a)) * np.float32(self.scale)

    def get(self, name: str) -> np.ndarray:
        """One tensor of the adapted model: base + the adapter's delta (float32) where adapted, else the base's."""
        if name not in self.pairs:
            return self.base.get(name)
        return np.asarray(self.base.get(name), np.float32) + self.delta(name)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of `get(name)`, read without the rest, for the streaming merge's row blocks."""
        if name not in self.pairs:
            return self.base.get_rows(name, start, stop)
        return np.asarray(self.base.get_rows(name, start, stop), np.float32) + self.delta(name, start, stop)

    @property
    def config(self) -> dict[str, Any] | None:
        """The base checkpoint's config.json (an adapter does not change the architecture)."""
        return self.base.config

    def __repr__(self) -> str:
        return f"AdapterCheckpoint({str(self.path)!r}, {len(self.pairs)} adapted tensors on {self.base!r})"


def open_checkpoint(path: Any, base: Checkpoint | None = None) -> Checkpoint | AdapterCheckpoint:
    """`Checkpoint(path)`, or `AdapterCheckpoint(path, base)` when `path` is a PEFT adapter folder; an in-memory
    adapter (`merging.lora_adapter.LoRAAdapter`) gives its view on `base`."""
    if hasattr(path, "as_checkpoint"):
        if base is None:
            raise ValueError(f"{path!r} is a LoRA adapter: it needs its base checkpoint to be a model")
        return path.as_checkpoint(base)
    if is_adapter_folder(path):
        if base is None:
            raise ValueError(f"{path} is a LoRA adapter folder: it needs its base checkpoint to be a model")
        return AdapterCheckpoint(path, base)
    return Checkpoint(path)
