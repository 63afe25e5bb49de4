"""How `generate` cuts its rows into static-shape batches, so XLA compiles once per bucket, not once per call.

Rows are (prompt, sample) pairs, longest prompts first so each batch pads little; a batch holds a power of two of
rows (capped by `batch_size`, a multiple of the data-parallel size), filler rows included, and its prompt length is
rounded up to a power of two (`_next_pow2`) by `generate`'s decode step.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def _next_pow2(x: int, minimum: int = 1) -> int:
    x = max(int(x), minimum)
    return 1 << (x - 1).bit_length()


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _data_parallel_size(mesh: Any) -> int:
    if mesh is None:
        return 1
    return int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One static-shape decode batch: its (prompt, sample) rows padded with filler rows to `size`."""

    rows: list[tuple[int, int]]  # the real rows
    size: int  # rows incl. filler (a power of two, capped by batch_size, a multiple of the data-parallel size)


def _plan_batches(token_lists: list[list[int]], draws: int, batch_size: int, dp: int) -> list[_Batch]:
    """Step 3: rows = (prompt, sample) pairs, longest prompts first so each batch pads little, cut into buckets."""
    rows = [(i, j) for i in range(len(token_lists)) for j in range(draws)]
    rows.sort(key=lambda r: -len(token_lists[r[0]]))
    size = _round_up(min(_next_pow2(len(rows)), batch_size), dp)  # a power of two never exceeds the cap
    return [_Batch(rows[s: s + size], size) for s in range(0, len(rows), size)]
