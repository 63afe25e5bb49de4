"""HF safetensors checkpoints, tensor by tensor: the reader (`Checkpoint`) and the planned sharded writer
(`ShardedWriter`) that both `jax_cat.models` (load_hf / save_hf) and `merging` (streamed merges, DoTS) use.

Reading: `model.safetensors`, a sharded `model.safetensors.index.json` (its `weight_map` names each tensor's file),
or any number of `*.safetensors` files without an index; one `.safetensors` file may be given directly. Only the
headers are read up front (names, dtypes, shapes); each tensor is then read with its own short-lived `safe_open`
(a handle kept open maps the whole file into the process). Names are visited in natural order ("layers.2" before
"layers.10"). Every problem is a `CheckpointError` (a ValueError) naming the file.

Writing: the tensor names, dtypes and shapes are known before any data, so shards are planned up front (default
5 GiB each, as transformers writes them; a tensor larger than that gets a shard of its own) and each shard is
written header first, then tensor by tensor (whole, or as consecutive row blocks): one shard is
`model.safetensors`, several are `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`. Write into
an `jax_cat.io.atomic.atomic_output_dir` so a half-written checkpoint is never seen.

numpy, ml_dtypes and safetensors only (no JAX, no torch).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "Checkpoint", "DEFAULT_SHARD_SIZE", "DTYPES", "FLOAT_DTYPES",
    "INDEX_FILES", "SAFE_INDEX", "SAFE_SINGLE", "ShardedWriter", "TensorInfo", "copy_side_files", "dtype_code",
    "natural_key", "open_safetensors", "parse_size", "read_json_object", "tensor_files",
]

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".gguf")
INDEX_FILES = (SAFE_INDEX, "pytorch_model.bin.index.json")
DEFAULT_SHARD_SIZE = 5 * 2**30  # bytes: transformers' default shard size


class CheckpointError(ValueError):
    """A checkpoint's files are missing, unreadable or disagree with each other (or with the model's config)."""


class CheckpointMismatchError(CheckpointError):
    """Checkpoints (or the files of one) do not share one architecture; the message names the tensor."""


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders "layers.2" before "layers.10"."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in _NUM.split(name))


def parse_size(size: int | str) -> int:
    """Bytes from 2000000000, "2GB" (10^9), "5GiB" (2^30), "500MiB", "64KB"..."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"cannot parse size {size!r} (use e.g. 5GiB, 2GB, 500MiB or a number of bytes)")
    base = 1024 if m.group(3) else 1000
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * base**power)


def dtype_code(dtype: Any) -> str:
    """The safetensors dtype string ("F32", "BF16", ...) of a numpy / ml_dtypes / jnp dtype."""
    try:
        return _DTYPE_NAMES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError(f"dtype {dtype!r} cannot be stored in safetensors") from None


def open_safetensors(file: str | os.PathLike[str]):
    """`safe_open(file, framework="numpy")` (use as a context manager); CheckpointError naming the file when it is
    truncated or corrupt."""
    try:
        return safe_open(str(file), framework="numpy")
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt headers
        raise CheckpointError(f"cannot read safetensors file {file}: {exc}") from exc


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; CheckpointError naming the file when it is not a JSON object."""
    try:
        value = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def tensor_files(ckpt_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """tensor name -> the file holding it: from the index's `weight_map`, else model.safetensors, else every
    *.safetensors in the folder (headers only; a name in two files is refused)."""
    ckpt_dir = Path(ckpt_dir)
    index = ckpt_dir / SAFE_INDEX
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
        files = {name: ckpt_dir / fname for name, fname in weight_map.items()}
        missing_files = sorted({str(p) for p in files.values() if not p.exists()})
        if missing_files:
            raise CheckpointError(f"{index} refers to missing shard file(s): {', '.join(missing_files)}")
        return files
    single = ckpt_dir / SAFE_SINGLE
    candidates = [single] if single.exists() else sorted(ckpt_dir.glob("*.safetensors"))
    if not candidates:
        hint = " (only PyTorch .bin weights found: convert them to safetensors first)" if any(
            ckpt_dir.glob("*.bin")
        ) else ""
        raise CheckpointError(f"no {SAFE_SINGLE} / {SAFE_INDEX} / *.safetensors in {ckpt_dir}{hint}")
    files: dict[str, Path] = {}
    for file in candidates:
        with open_safetensors(file) as handle:
            for name in handle.keys():
                if name in files:
                    raise CheckpointMismatchError(f"tensor {name!r} appears in two files of {ckpt_dir}: "
                                                  f"{files[name].name} and {file.name}")
                files[name] = file
    return files


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry (safetensors dtype, shape, file holding it): enough to plan a read without reading."""

    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        """The tensor's size in bytes, for shard planning and memory budgets without reading it."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize


class Checkpoint:
    """A HF checkpoint folder (or one .safetensors file): tensor metadata up front, tensors read one at a time."""

    def __init__(self, path: str | os.PathLike[str]):
        path = Path(path)
        if path.is_file() and path.suffix == ".safetensors":
            self.dir = path.parent
            with open_safetensors(path) as handle:
                files = {name: path for name in handle.keys()}
        elif path.is_dir():
            self.dir = path
            files = tensor_files(path)
        else:
            raise FileNotFoundError(
                f"no checkpoint at {path}: give a folder holding model.safetensors (or model.safetensors.index.json "
                f"and its shards), or a .safetensors file"
            )
        self.path = path
        self.info: dict[str, TensorInfo] = {}
        by_file: dict[Path, list[str]] = {}
        for name, file in files.items():
            by_file.setdefault(file, []).append(name)
        for file, names in by_file.items():
            with open_safetensors(file) as handle:
                available = set(handle.keys())
                for name in names:
                    if name not in available:
                        raise CheckpointError(f"index says {name!r} is in {file.name}, but that file does not hold it")
                    sl = handle.get_slice(name)
                    self.info[name] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), file)
        self.names: list[str] = sorted(self.info, key=natural_key)

    @property
    def files(self) -> dict[str, Path]:
        """tensor name -> the file holding it."""
        return {name: info.file for name, info in self.info.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """tensor name -> its shape."""
        return {name: info.shape for name, info in self.info.items()}

    def get(self, name: str) -> np.ndarray:
        """Read one tensor (numpy; bf16 as ml_dtypes.bfloat16). The file handle is closed again at once."""
        with open_safetensors(self.info[name].file) as f:
            return f.get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Read rows [start, stop) (axis 0; stop clipped to the row count) of one tensor, without reading the rest."""
        stop = min(stop, self.info[name].shape[0])
        with open_safetensors(self.info[name].file) as f:
            return f.get_slice(name)[start:stop]

    @property
    def config(self) -> dict[str, Any] | None:
        """The folder's config.json as a dict (None when there is none), for the model's architecture and dtype."""
        cfg = self.dir / "config.json"
        if not cfg.exists():
            return None
        try:
            return json.loads(cfg.read_text())
        except ValueError as exc:
            raise ValueError(f"{cfg} is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors)"


class ShardedWriter:
    """Write a safetensors checkpoint whose entries (name, dtype, shape) are known in advance, tensor by tensor.

    Shards fill in order up to `max_shard_bytes` (a tensor larger than that gets a shard of its own). One shard is
    written as model.safetensors; several as model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
    `dtype` is a safetensors dtype string ("BF16") or anything `dtype_code` takes.
    """

    def __init__(self, out_dir: Path, entries: Sequence[tuple[str, Any, tuple[int, ...]]],
                 max_shard_bytes: int = DEFAULT_SHARD_SIZE):
        self.out_dir = Path(out_dir)
        self.entries = [(name, dtype if isinstance(dtype, str) and dtype in DTYPES else dtype_code(dtype),
                         tuple(shape))
                        for name, dtype, shape in entries]
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
        self.files = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.total_size = sum(e[3] for s in shards for e in s)
        self._shard = -1
        self._pos = 0
        self._done = 0  # bytes of the current tensor written so far (a tensor may come in row blocks)
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
        with self._naming_the_shard():
            self._fh = open(self.out_dir / self.files[self._shard], "wb")
            self._fh.write(struct.pack("<Q", len(raw)))
            self._fh.write(raw)

    @contextlib.contextmanager
    def _naming_the_shard(self) -> Iterator[None]:
        """An OSError of a write (a full disk: ENOSPC) names the shard being written."""
        try:
            yield
        except OSError as err:
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror, str(self.out_dir / self.files[self._shard])) from err

    def write(self, name: str, array: Any) -> None:
        """Append the next tensor (must come in the planned order, with the planned dtype and shape), whole or as
        consecutive row blocks (axis 0) under the same name."""
        if self._fh is None:
            self._open_next()
        expected, dtype, shape, nbytes = self.shards[self._shard][self._pos]
        arr = np.ascontiguousarray(np.asarray(array))
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected!r}, got {name!r}")
        whole = tuple(arr.shape) == tuple(shape)
        rows = len(shape) >= 1 and arr.ndim == len(shape) and tuple(arr.shape[1:]) == tuple(shape[1:])
        if _DTYPE_NAMES.get(arr.dtype) != dtype or not (whole or rows) or self._done + arr.nbytes > nbytes:
            raise RuntimeError(f"tensor {name!r}: got {arr.dtype}{arr.shape}, planned {dtype}{tuple(shape)}")
        with self._naming_the_shard():
            self._fh.write(arr.reshape(-1).view(np.uint8).data)
        self._done += arr.nbytes
        if self._done < nbytes:
            return
        self._done = 0
        self._pos += 1
        if self._pos == len(self.shards[self._shard]):
            fh, self._fh = self._fh, None
            with self._naming_the_shard():
                fh.close()

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
            (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other non-weight files of a checkpoint folder."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name in INDEX_FILES or f.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied
