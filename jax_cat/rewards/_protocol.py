"""Frames for the verifier's worker pipes: a 4-byte big-endian length, then a pickle (both directions)."""
from __future__ import annotations

import os
import pickle
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20  # a frame claiming more is a corrupt stream, not a message


def write_frame(fd: int, obj: object) -> None:
    """Write one length-prefixed pickle to a file descriptor (header and payload in one write call)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> object | None:
    """One frame from a file descriptor; None on EOF (including a frame cut short by the writer's death)."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"jax_cat.rewards._worker: corrupt frame header (claims {size} bytes)")
    payload = _read_exact(fd, size)
    return None if payload is None else pickle.loads(payload)
