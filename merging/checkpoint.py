"""HF safetensors checkpoints on the merging side: a tensor-by-tensor reader, a planned sharded writer, and atomic
output folders (one home for each; `merging` imports nothing from jax_cat, whose models/hf.py is the other side).

Reading: `model.safetensors`, a sharded `model.safetensors.index.json`, or any number of `*.safetensors` files without
an index (the same checkpoints `jax_cat.models.load_hf` accepts). Each tensor is read with its own short-lived
`safe_open` (a handle kept open maps the whole file into the process). Names are visited in natural order.

Writing: the output's tensor names, dtypes and shapes are known before any data, so shards are planned up front
(default 5 GiB each, as `jax_cat.models.save_hf` and transformers write) and each is written header first, then
tensor by tensor. `atomic_output_dir` gives a temporary folder `<out>.tmp-<pid>-<hex>` that replaces `out` only when
complete, under an exclusive lock `<out>.lock` (a second writer of the same `out` gets `OutputBusyError`), and first
removes temporaries of the same target left by killed runs (their pid no longer exists).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from merging._paths import natural_key

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (the temp-then-rename still protects readers)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CheckpointMismatchError", "DTYPES", "FLOAT_DTYPES", "DEFAULT_SHARD_SIZE", "Checkpoint", "TensorInfo", "ShardedWriter", "OutputBusyError",
    "atomic_output_dir", "atomic_write", "atomic_write_text", "copy_side_files", "parse_size",
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
DEFAULT_SHARD_SIZE = 5 * 2**30  # bytes: jax_cat.models.save_hf's and transformers' default shard size


class CheckpointMismatchError(ValueError):
    """The checkpoints to merge do not share one architecture; the message names the tensor."""


class OutputBusyError(FileExistsError):
    """Another process is writing the same output folder right now."""


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


def _open(file: Path):
    try:
        return safe_open(str(file), framework="numpy")
    except Exception as exc:  # safetensors raises its own types for truncated or corrupt headers
        raise ValueError(f"cannot read safetensors file {file}: {exc}") from None


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
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{index} is not a safetensors index (JSON with a weight_map): {exc}") from None
                files = [path / f for f in sorted(set(weight_map.values()))]
            elif (path / "model.safetensors").exists():
                files = [path / "model.safetensors"]
            else:  # any number of *.safetensors without an index, as jax_cat.models.load_hf reads them
                files = sorted(path.glob("*.safetensors"))
                if not files:
                    bins = " (only PyTorch .bin weights: convert them to safetensors first)" if any(
                        path.glob("*.bin")) else ""
                    raise FileNotFoundError(
                        f"{path}: no model.safetensors, model.safetensors.index.json or *.safetensors file{bins}"
                    )
        else:
            raise FileNotFoundError(
                f"no checkpoint at {path}: give a folder holding model.safetensors (or model.safetensors.index.json "
                f"and its shards), or a .safetensors file"
            )
        self.path = path
        self.info: dict[str, TensorInfo] = {}
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"{file} is listed in the index of {path} but missing")
            with _open(file) as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    if name in self.info:
                        raise CheckpointMismatchError(f"tensor {name!r} appears in two files of {path}")
                    self.info[name] = TensorInfo(sl.get_dtype(), tuple(sl.get_shape()), file)
        self.names: list[str] = sorted(self.info, key=natural_key)

    def get(self, name: str) -> np.ndarray:
        """Read one tensor (numpy; bf16 as ml_dtypes.bfloat16). The file handle is closed again at once."""
        with _open(self.info[name].file) as f:
            return f.get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Read rows [start, stop) (axis 0; stop clipped to the row count) of one tensor, without reading the rest."""
        stop = min(stop, self.info[name].shape[0])
        with _open(self.info[name].file) as f:
            return f.get_slice(name)[start:stop]

    @property
    def config(self) -> dict[str, Any] | None:
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
        self._fh = open(self.out_dir / self.files[self._shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)

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
        self._fh.write(arr.reshape(-1).view(np.uint8).data)
        self._done += arr.nbytes
        if self._done < nbytes:
            return
        self._done = 0
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


# ---------------------------------------------------------------------------------------------------------------
# Atomic output folders
# ---------------------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    pattern = re.compile(re.escape(out.name) + rf"\.{kind}-(\d+)-[0-9a-f]+")
    found = []
    for p in out.parent.iterdir() if out.parent.exists() else ():
        m = pattern.fullmatch(p.name)
        if m:
            found.append((p, int(m.group(1))))
    return found


def clean_stale(out: Path) -> list[Path]:
    """Remove `<out>.tmp-<pid>-*` folders whose pid is dead (a killed run's); put back a `<out>.old-<pid>-*` left
    by a run killed between its two renames when `out` itself is missing. Call under the output lock."""
    removed = []
    for p, pid in _leftovers(out, "tmp"):
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p, pid in _leftovers(out, "old"):
        if pid != os.getpid() and not _pid_alive(pid):
            if out.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, out)  # the previous complete output, moved aside by a run that died before its swap
            removed.append(p)
    return removed


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock on `<out>.lock` (flock: released by the kernel even when the holder is killed)."""
    if fcntl is None:
        yield
        return
    lock = out.with_name(f"{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"another process (pid {holder}) is writing {out} right now; wait for it to finish or choose "
                f"another output folder"
            ) from None
        try:  # the file we locked must still be the one at `lock` (a finishing holder unlinks it)
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder next to `out` that becomes `out` when the block ends without error, else is removed.

    Holds `output_lock(out)` throughout (a concurrent writer of the same `out` gets `OutputBusyError`: one complete
    output or a clear error, never a mix), removes stale temporaries of the same target first, and refuses an
    existing `out` unless `overwrite` (then the old folder is swapped out and deleted after the new one is in place).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        clean_stale(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            yield tmp
            if out.exists():
                old = out.with_name(f"{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on `<path>.tmp-<pid>-<hex>` beside `path`, then rename it to `path`: readers see the old
    file or the new, never half of one; on failure the temporary is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
