"""Merge and analyse HF safetensors checkpoints tensor by tensor, so memory stays a few tensors, not a model.

Reading: single-file (`model.safetensors`) and sharded (`model.safetensors.index.json`) checkpoints; each tensor is
read with its own short-lived `safetensors.safe_open` (a handle kept open maps the whole file into the process, and
its resident pages would count against us). Names are visited in natural order ("layers.2" before "layers.10").

Writing: the output's tensor names, dtypes and shapes are the base's, known before any merging, so shard files are
planned up front and each is written header first, then tensor by tensor as merged tensors arrive (safetensors
format: u64 header length, JSON header, raw little-endian data). Everything goes to `<out>.tmp-XXXX` next to `out`
and is renamed at the end: a failure never leaves a half-written model.

Depends on safetensors, numpy and jax only (not on jax_cat.models): any loader of HF checkpoints reads the output.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from merging._paths import natural_key
from merging.analysis import Comparison
from merging.methods import MergeSpec, merge_tensors

__all__ = [
    "CheckpointMismatchError", "Checkpoint", "ShardedWriter", "merge_checkpoints", "analyze_checkpoints",
    "parse_size", "tqdm_progress",
]

DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".gguf")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
LM_HEAD = "lm_head.weight"


class CheckpointMismatchError(ValueError):
    """The checkpoints to merge do not share one architecture; the message names the tensor."""


def parse_size(size: int | str) -> int:
    """Bytes from 2000000000, "2GB" (10^9), "500MiB" (2^20), "64KB"..."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (use e.g. 2GB, 500MiB or a number of bytes)")
    base = 1024 if m.group(3) else 1000
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * base**power)


def tqdm_progress(enabled: bool = True) -> Callable[[Iterable[Any], str, int], Iterable[Any]]:
    """A progress wrapper for the merge engine: tqdm bars when `enabled` (and stderr is a terminal)."""
    if not enabled:
        return lambda it, desc, total: it
    from tqdm.auto import tqdm

    return lambda it, desc, total: tqdm(it, desc=desc, total=total, unit="tensor", disable=None, leave=False)


def _malloc_trim() -> Callable[[], Any] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def _per_tensor(progress: bool, release_memory: bool) -> Callable[[Iterable[Any], str, int], Iterable[Any]]:
    """Progress bars, plus glibc's malloc_trim(0) after every tensor when `release_memory`.

    Why: freed multi-MB tensor buffers stay in glibc's heaps (its mmap threshold grows to the largest freed block),
    so without trimming the resident set grows with the number of tensors visited, not with the largest one.
    """
    bar = tqdm_progress(progress)
    trim = _malloc_trim() if release_memory else None

    def wrap(it: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
        for item in bar(it, desc, total):
            yield item
            if trim is not None:
                trim(0)

    return wrap


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize


class Checkpoint:
    """A HF checkpoint folder (or one .safetensors file): tensor metadata up front, tensors read one at a time."""

    def __init__(self, path: str | os.PathLike[str]):
        path = Path(path)
        if path.is_file() and path.suffix == ".safetensors":
            self.dir, files = path.parent, [path]
        elif path.is_dir():
            self.dir = path
            index = path / "model.safetensors.index.json"
            if index.exists():
                weight_map = json.loads(index.read_text())["weight_map"]
                files = [path / f for f in sorted(set(weight_map.values()))]
            elif (path / "model.safetensors").exists():
                files = [path / "model.safetensors"]
            else:
                found = sorted(path.glob("*.safetensors"))
                if len(found) != 1:
                    raise FileNotFoundError(
                        f"{path}: expected model.safetensors, model.safetensors.index.json or a single *.safetensors "
                        f"file, found {[f.name for f in found] or 'none'}"
                    )
                files = found
        else:
            raise FileNotFoundError(f"no checkpoint at {path}")
        self.path = path
        self.info: dict[str, TensorInfo] = {}
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"{file} is listed in the index of {path} but missing")
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    if name in self.info:
                        raise CheckpointMismatchError(f"tensor {name!r} appears in two files of {path}")
                    self.info[name] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), file)
        self.names: list[str] = sorted(self.info, key=natural_key)

    def get(self, name: str) -> np.ndarray:
        """Read one tensor (numpy; bf16 as ml_dtypes.bfloat16). The file handle is closed again at once."""
        with safe_open(str(self.info[name].file), framework="numpy") as f:
            return f.get_tensor(name)

    @property
    def config(self) -> dict[str, Any] | None:
        cfg = self.dir / "config.json"
        return json.loads(cfg.read_text()) if cfg.exists() else None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors)"


def _embed_name(ckpt: Checkpoint) -> str | None:
    candidates = [n for n in ckpt.names if n.endswith("embed_tokens.weight") or n.endswith("wte.weight")]
    return candidates[0] if len(candidates) == 1 else None


def _aliases(base: Checkpoint, model: Checkpoint, label: str) -> dict[str, str]:
    """Check `model` against `base`; return {base tensor name: model tensor name} (tied embeddings resolved)."""
    alias = {n: n for n in base.names}
    missing = [n for n in base.names if n not in model.info]
    extra = [n for n in model.names if n not in base.info]
    if LM_HEAD in missing and (embed := _embed_name(model)) is not None:
        alias[LM_HEAD] = embed  # model ties lm_head to its input embedding: the head it uses is the embedding
        missing.remove(LM_HEAD)
    if LM_HEAD in extra:
        raise CheckpointMismatchError(
            f"{label} ({model.path}) has its own '{LM_HEAD}' but the base ties it to the input embedding (no "
            f"'{LM_HEAD}' in its files): merging would drop that model's output-head update. Merge into an untied "
            f"base (save it with tie_word_embeddings=False)."
        )
    if missing:
        raise CheckpointMismatchError(f"tensor {missing[0]!r} of the base is missing from {label} ({model.path})")
    if extra:
        raise CheckpointMismatchError(f"tensor {extra[0]!r} of {label} ({model.path}) is not in the base")
    for name in base.names:
        b, m = base.info[name], model.info[alias[name]]
        if b.shape != m.shape:
            raise CheckpointMismatchError(f"tensor {name!r}: shape {m.shape} in {label} vs {b.shape} in the base")
        if b.dtype != m.dtype:
            raise CheckpointMismatchError(
                f"tensor {name!r}: dtype {m.dtype} in {label} vs {b.dtype} in the base (convert one of them first)"
            )
        if b.dtype.startswith("F8"):
            raise CheckpointMismatchError(f"tensor {name!r} is {b.dtype}: FP8 checkpoints (with scales) are not supported")
    return alias


class ShardedWriter:
    """Write a safetensors checkpoint whose entries (name, dtype, shape) are known in advance, tensor by tensor.

    Shards fill in order up to `max_shard_bytes` (a tensor larger than that gets a shard of its own). One shard is
    written as model.safetensors; several as model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
    """

    def __init__(self, out_dir: Path, entries: Sequence[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int):
        self.out_dir = Path(out_dir)
        self.entries = list(entries)
        shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in self.entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, dtype, shape, nbytes))
            size += nbytes
        n = len(shards)
        self.files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.total_size = sum(e[3] for s in shards for e in s)
        self._shard = -1
        self._pos = 0
        self._fh: Any = None

    def _open_next(self) -> None:
        self._shard += 1
        self._pos = 0
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in self.shards[self._shard]:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.out_dir / self.files[self._shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)

    def write(self, name: str, array: Any) -> None:
        """Append the next tensor (must come in the planned order, with the planned dtype and shape)."""
        if self._fh is None:
            self._open_next()
        expected, dtype, shape, nbytes = self.shards[self._shard][self._pos]
        arr = np.ascontiguousarray(np.asarray(array))
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected!r}, got {name!r}")
        if _DTYPE_NAMES.get(arr.dtype) != dtype or tuple(arr.shape) != tuple(shape):
            raise RuntimeError(f"tensor {name!r}: got {arr.dtype}{arr.shape}, planned {dtype}{tuple(shape)}")
        self._fh.write(arr.reshape(-1).view(np.uint8).data)
        self._pos += 1
        if self._pos == len(self.shards[self._shard]):
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """Check every planned tensor was written; write the index when sharded."""
        if self._fh is not None:
            self._fh.close()
            raise RuntimeError(f"shard {self.files[self._shard]} is incomplete")
        if self._shard != len(self.shards) - 1:
            raise RuntimeError(f"only {self._shard + 1} of {len(self.shards)} shards were written")
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {e[0]: self.files[i] for i, s in enumerate(self.shards) for e in s},
            }
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other non-weight files of a checkpoint folder."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name in INDEX_FILES or f.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def _finalize(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
        old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def merge_checkpoints(
    base: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str]],
    spec: MergeSpec,
    out: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "2GB",
    copy_files_from: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    release_memory: bool = True,
) -> Path:
    """Merge fine-tuned HF checkpoints into `base` with `spec`, tensor by tensor; write an HF checkpoint to `out`.

    Task vectors are taken against the base tensor by tensor (float32 arithmetic, cast back to the base dtype).
    Non-weight files (config.json, generation_config.json, tokenizer files) come from the base, or from
    models[copy_files_from]; `merge_info.json` records the recipe. Refuses (`CheckpointMismatchError`, naming the
    tensor) checkpoints whose tensor sets, shapes or dtypes differ; a model that ties lm_head to its embedding is
    read through its embedding. `release_memory` returns freed buffers to the OS after each tensor (glibc
    malloc_trim; keeps peak memory a few tensors). Returns the output path.
    """
    out = Path(out)
    if not models:
        raise ValueError("need at least one fine-tuned model")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    base_ckpt = Checkpoint(base)
    model_ckpts = [Checkpoint(m) for m in models]
    aliases = [_aliases(base_ckpt, m, f"models[{i}]") for i, m in enumerate(model_ckpts)]
    spec.coefficients(len(model_ckpts))  # validates the number of coefficients before any work
    if copy_files_from is not None and not 0 <= copy_files_from < len(model_ckpts):
        raise ValueError(f"copy_files_from={copy_files_from}: there are only {len(model_ckpts)} models")
    names = base_ckpt.names
    info = base_ckpt.info

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        writer = ShardedWriter(tmp, [(n, info[n].dtype, info[n].shape) for n in names], parse_size(max_shard_size))
        merged = merge_tensors(
            names,
            {n: info[n].shape for n in names},
            base_ckpt.get,
            lambda i, name: model_ckpts[i].get(aliases[i][name]),
            len(model_ckpts),
            spec,
            is_float=lambda name: info[name].dtype in FLOAT_DTYPES,
            progress=_per_tensor(progress, release_memory),
        )
        for name, tensor in merged:
            writer.write(name, np.asarray(tensor))
        writer.close()
        src = base_ckpt.dir if copy_files_from is None else model_ckpts[copy_files_from].dir
        copied = copy_side_files(src, tmp)
        record = {
            "base": str(base_ckpt.path), "models": [str(m.path) for m in model_ckpts], "spec": spec.describe(),
            "side_files_from": str(src), "side_files": copied, "shards": writer.files,
        }
        (tmp / "merge_info.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        _finalize(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def analyze_checkpoints(
    base: str | os.PathLike[str],
    sft: str | os.PathLike[str],
    rl: str | os.PathLike[str],
    *,
    top_fraction: float = 0.3,
    labels: tuple[str, str] = ("sft", "rl"),
    progress: bool = True,
    release_memory: bool = True,
) -> Comparison:
    """DoTS analysis of tau_sft = sft - base and tau_rl = rl - base, read tensor by tensor (never whole models)."""
    import jax.numpy as jnp

    from merging.task_vectors import tv_leaf

    base_ckpt, a_ckpt, b_ckpt = Checkpoint(base), Checkpoint(sft), Checkpoint(rl)
    a_alias = _aliases(base_ckpt, a_ckpt, labels[0])
    b_alias = _aliases(base_ckpt, b_ckpt, labels[1])
    names = [n for n in base_ckpt.names if base_ckpt.info[n].dtype in FLOAT_DTYPES]

    def pairs():
        for name in _per_tensor(progress, release_memory)(names, "analysing", len(names)):
            b = jnp.asarray(base_ckpt.get(name))
            ta = tv_leaf(jnp.asarray(a_ckpt.get(a_alias[name])), b, out_dtype=jnp.float32)
            tb = tv_leaf(jnp.asarray(b_ckpt.get(b_alias[name])), b, out_dtype=jnp.float32)
            yield name, np.asarray(ta), np.asarray(tb)

    return Comparison.from_pairs(pairs(), labels=labels, top_fraction=top_fraction)
