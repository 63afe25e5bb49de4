"""Merge and analyse HF safetensors checkpoints tensor by tensor, so memory stays a few tensors, not a model.

Reading and writing checkpoints (any number of shards in, 5 GiB shards out) live in `jax_cat.io.safetensors`,
atomic output folders in `jax_cat.io.atomic` (the low layer jax_cat and merging share); this module runs the merge engine (`merging.methods.merge_tensors`) and the DoTS analysis
over them. Inputs are checked up front: same tensor names and shapes, float dtypes may differ (computed in float32
or wider and rounded once to the base's dtype or the one chosen; very large tensors go in row blocks), float64
needs JAX's x64 mode, a fine-tuned model that ties its output head to its embedding is only merged into a base whose
head is (in effect) tied too, and NaN/Inf weights are refused with the tensor named unless `allow_nonfinite`.

Depends on safetensors, numpy, jax and `jax_cat.io` only (not on jax_cat.models): any loader of HF checkpoints reads the output.
"""
from __future__ import annotations

import ctypes
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from merging._checks import check_finite, check_float64
from merging._paths import make_selector
from merging.adapters import open_checkpoint
from merging.analysis import Comparison
from jax_cat.io.atomic import OutputBusyError, atomic_output_dir
from jax_cat.io.safetensors import (
    DEFAULT_SHARD_SIZE, DTYPES, FLOAT_DTYPES, Checkpoint, CheckpointMismatchError, ShardedWriter, TensorInfo,
    copy_side_files, parse_size,
)
from merging.methods import MergeMethod, merge_tensors
from merging.methods.engine import RoundingCount

__all__ = [
    "CheckpointMismatchError", "Checkpoint", "ShardedWriter", "OutputBusyError", "merge_checkpoints",
    "analyze_checkpoints", "parse_size", "tqdm_progress", "PrecisionWarning", "OUTPUT_DTYPES",
    "DEFAULT_BLOCK_SIZE",
]
# --dtype / dtype=: the output's float dtype ("base": each tensor in the base's dtype, as before)
OUTPUT_DTYPES = {"base": None, "float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DEFAULT_BLOCK_SIZE = 32 * 2**20  # bytes of a float32 copy above which a tensor is merged in row blocks
PRECISION_WARN_FRACTION = 0.01  # warn when at least this fraction of the changed entries rounds back to the base


class PrecisionWarning(UserWarning):
    """The output dtype rounds a noticeable part of the merge's update back to the base's values."""
_REEXPORTED = (DTYPES, TensorInfo)  # old import locations keep working: merging.stream.DTYPES, .TensorInfo
LM_HEAD = "lm_head.weight"


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


def _embed_name(ckpt: Checkpoint) -> str | None:
    candidates = [n for n in ckpt.names if n.endswith("embed_tokens.weight") or n.endswith("wte.weight")]
    return candidates[0] if len(candidates) == 1 else None


def _head_is_embedding(ckpt: Checkpoint) -> bool:
    """Does the model's output head equal its input embedding (no lm_head stored, tie_word_embeddings, or a stored
    lm_head that is a bitwise copy of the embedding)?"""
    if LM_HEAD not in ckpt.info:
        return True
    embed = _embed_name(ckpt)
    if embed is None:
        return False
    if (ckpt.config or {}).get("tie_word_embeddings") is True:
        return True
    a, b = ckpt.info[LM_HEAD], ckpt.info[embed]
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if len(a.shape) < 2:
        return bool(np.array_equal(ckpt.get(LM_HEAD), ckpt.get(embed)))
    rows = max(1, DEFAULT_BLOCK_SIZE // max(1, a.nbytes // a.shape[0]))  # compared in row blocks, not whole
    return all(np.array_equal(ckpt.get_rows(LM_HEAD, r, r + rows), ckpt.get_rows(embed, r, r + rows))
               for r in range(0, a.shape[0], rows))


def _aliases(base: Checkpoint, model: Checkpoint, label: str, uses_head: bool = True) -> dict[str, str]:
    """Check `model` against `base`; return {base tensor name: model tensor name} (tied output heads resolved).

    `uses_head`: whether lm_head enters the result (False when a filter leaves it at the base's value).
    """
    alias = {n: n for n in base.names}
    missing = [n for n in base.names if n not in model.info]
    extra = [n for n in model.names if n not in base.info]
    if LM_HEAD in missing and (embed := _embed_name(model)) is not None:
        missing.remove(LM_HEAD)
        alias[LM_HEAD] = embed  # read only when both heads are their embeddings: tau_head = embed_ft - embed_base
        if uses_head and not _head_is_embedding(base):
            raise CheckpointMismatchError(
                f"{label} ({model.path}) ties its output head to its input embedding (no '{LM_HEAD}'), but the base "
                f"has its own '{LM_HEAD}': the head's 'task vector' would be {embed}(fine-tuned) - {LM_HEAD}(base), "
                f"not a fine-tuning update. Keep the base's head (exclude='lm_head' / --exclude lm_head) or use a "
                f"base with tied embeddings."
            )
    if LM_HEAD in extra:
        if _head_is_embedding(model):
            extra.remove(LM_HEAD)  # a stored copy of a tied head: the base's (tied) embedding carries it
        else:
            raise CheckpointMismatchError(
                f"{label} ({model.path}) has its own '{LM_HEAD}' but the base ties it to the input embedding (no "
                f"'{LM_HEAD}' in its files): merging would drop that model's output-head update. Merge into an "
                f"untied base (save it with tie_word_embeddings=False)."
            )
    if missing:
        raise CheckpointMismatchError(f"tensor {missing[0]!r} of the base is missing from {label} ({model.path})")
    if extra:
        raise CheckpointMismatchError(f"tensor {extra[0]!r} of {label} ({model.path}) is not in the base")
    for name in base.names:
        b, m = base.info[name], model.info[alias[name]]
        if b.shape != m.shape:
            raise CheckpointMismatchError(f"tensor {name!r}: shape {m.shape} in {label} vs {b.shape} in the base")
        if b.dtype != m.dtype and not (b.dtype in FLOAT_DTYPES and m.dtype in FLOAT_DTYPES):
            raise CheckpointMismatchError(
                f"tensor {name!r}: dtype {m.dtype} in {label} vs {b.dtype} in the base (convert one of them first)"
            )
        if b.dtype.startswith("F8") or m.dtype.startswith("F8"):
            raise CheckpointMismatchError(f"tensor {name!r} is FP8: FP8 checkpoints (with scales) are not supported")
        for info, who in ((b, "the base"), (m, label)):
            if info.dtype == "F64":
                check_float64(name, np.float64, who)
    return alias


def merge_checkpoints(
    base: str | os.PathLike[str],
    models: Sequence[str | os.PathLike[str]],
    spec: MergeMethod,
    out: str | os.PathLike[str],
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    copy_files_from: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    release_memory: bool = True,
    allow_nonfinite: bool = False,
    dtype: str | None = None,
    block_size: int | str | None = DEFAULT_BLOCK_SIZE,
) -> Path:
    """Merge fine-tuned HF checkpoints into `base` with `spec` (a method's settings, e.g. `DotsMerge(...)` or
    `method_settings("dots", ...)`), tensor by tensor; write an HF checkpoint to `out` (shards of `max_shard_size`,
    default 5 GiB).

    Task vectors are taken against the base tensor by tensor (float32 arithmetic, or float64 under x64; mixed
    float dtypes computed in the wider one), rounded once to the output dtype (below). Non-weight files (config.json,
    generation_config.json, tokenizer files) come from the base, or from models[copy_files_from];
    `merge_info.json` records the recipe. Refuses, before any work: checkpoints whose tensor sets or shapes differ
    (`CheckpointMismatchError` naming the tensor), float64 without x64, a tied fine-tuned head into an untied base;
    and, when met, NaN/Inf weights (`NonFiniteError`) unless `allow_nonfinite`. The output appears complete or not
    at all (`<out>.tmp-<pid>-*`, renamed at the end; a concurrent writer of `out` gets `OutputBusyError`).
    `release_memory` returns freed buffers to the OS after each tensor (glibc malloc_trim). Returns `out`.

    Precision: merged values are computed in float32 and rounded once to the output dtype: `dtype` "float32",
    "bfloat16" or "float16" for every float tensor, or None / "base" for each tensor's dtype in the base. When that
    rounding puts >= 1 % of the entries the merge changed back on the base's value (float32 fine-tunes into a
    bf16 base: small RL updates vanish), a `PrecisionWarning` says how many; merge_info.json records the counts.
    Memory: a float tensor whose float32 copy exceeds `block_size` (default 32 MiB; None = never) is read, merged
    and written in row blocks, with the same result, for every method but RAM with per-tensor counts, Breadcrumbs
    with axis="tensor" and a per-tensor norm rescale (those read such a tensor whole).
    """
    out = Path(out)
    if not isinstance(spec, MergeMethod):
        raise TypeError(f"spec must be a merge method's settings (e.g. DotsMerge(...)), got {spec!r}")
    if not models:
        raise ValueError("need at least one fine-tuned model")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    base_ckpt = Checkpoint(base)
    model_ckpts = [open_checkpoint(m, base_ckpt) for m in models]  # a LoRA adapter folder: base + B.A.alpha/r
    uses_head = make_selector(spec.filter, spec.exclude)(LM_HEAD)
    labels = [f"models[{i}]" for i in range(len(model_ckpts))]
    aliases = [_aliases(base_ckpt, m, label, uses_head) for m, label in zip(model_ckpts, labels)]
    spec.resolved_coefficients(len(model_ckpts))  # validates the number of coefficients before any work
    if copy_files_from is not None and not 0 <= copy_files_from < len(model_ckpts):
        raise ValueError(f"copy_files_from={copy_files_from}: there are only {len(model_ckpts)} models")
    names = base_ckpt.names
    info = base_ckpt.info
    shard_bytes = parse_size(max_shard_size)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(OUTPUT_DTYPES)} (the output's float dtype)")
    out_code = OUTPUT_DTYPES[dtype or "base"]
    out_dtypes = {n: out_code if out_code and info[n].dtype in FLOAT_DTYPES else info[n].dtype for n in names}
    block_bytes = None if block_size is None else parse_size(block_size)
    rounding = RoundingCount()

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        writer = ShardedWriter(tmp, [(n, out_dtypes[n], info[n].shape) for n in names], shard_bytes)
        merged = merge_tensors(
            names,
            {n: info[n].shape for n in names},
            base_ckpt.get,
            lambda i, name: model_ckpts[i].get(aliases[i][name]),
            len(model_ckpts),
            spec,
            is_float=lambda name: info[name].dtype in FLOAT_DTYPES,
            progress=_per_tensor(progress, release_memory),
            allow_nonfinite=allow_nonfinite,
            labels=[f"the base ({base_ckpt.path})"] + [f"{l} ({m.path})" for l, m in zip(labels, model_ckpts)],
            out_dtype=None if out_code is None else DTYPES[out_code],
            rounding=rounding,
            block_bytes=block_bytes,
            get_base_rows=base_ckpt.get_rows,
            get_finetuned_rows=lambda i, name, a, b: model_ckpts[i].get_rows(aliases[i][name], a, b),
        )
        trim = _malloc_trim() if release_memory else None
        for name, tensor in merged:
            writer.write(name, np.asarray(tensor))
            del tensor
            if trim is not None:  # after each row block too (the per-tensor trim comes after a whole tensor)
                trim(0)
        writer.close()
        _warn_rounding(rounding, dtype)
        src = base_ckpt.dir if copy_files_from is None else model_ckpts[copy_files_from].dir
        copied = copy_side_files(src, tmp)
        record = {
            "base": str(base_ckpt.path), "models": [str(m.path) for m in model_ckpts], "spec": spec.describe(),
            "side_files_from": str(src), "side_files": copied, "shards": writer.files,
            "dtype": dtype or "base",
            "rounding": {"changed": rounding.changed, "rounded_back_to_base": rounding.lost},
        }
        (tmp / "merge_info.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def _warn_rounding(rounding: RoundingCount, dtype: str | None) -> None:
    """PrecisionWarning when the output dtype rounded >= 1 % of the changed entries back to the base's value."""
    if rounding.changed and rounding.fraction >= PRECISION_WARN_FRACTION:
        where = f"in {dtype}" if dtype not in (None, "base") else "in the base's dtype"
        warnings.warn(PrecisionWarning(
            f"{100 * rounding.fraction:.1f} % of the {rounding.changed:,} entries the merge changed round back to "
            f"the base's value {where} (the output dtype cannot represent updates that small); write float32 "
            f"to keep them (dtype='float32' / --dtype float32)"), stacklevel=3)


def analyze_checkpoints(
    base: str | os.PathLike[str],
    sft: str | os.PathLike[str],
    rl: str | os.PathLike[str],
    *,
    top_fraction: float = 0.3,
    labels: tuple[str, str] = ("sft", "rl"),
    progress: bool = True,
    release_memory: bool = True,
    allow_nonfinite: bool = False,
) -> Comparison:
    """DoTS analysis of tau_sft = sft - base and tau_rl = rl - base, read tensor by tensor (never whole models).

    The same input checks as `merge_checkpoints` (NaN/Inf refused unless `allow_nonfinite`)."""
    import jax.numpy as jnp

    from merging.methods.engine import tau_dtype
    from merging.task_vectors import tv_leaf

    base_ckpt = Checkpoint(base)
    a_ckpt, b_ckpt = open_checkpoint(sft, base_ckpt), open_checkpoint(rl, base_ckpt)  # adapter folders welcome
    a_alias = _aliases(base_ckpt, a_ckpt, labels[0])
    b_alias = _aliases(base_ckpt, b_ckpt, labels[1])
    names = [n for n in base_ckpt.names if base_ckpt.info[n].dtype in FLOAT_DTYPES]
    where = [f"the base ({base_ckpt.path})", f"{labels[0]} ({a_ckpt.path})", f"{labels[1]} ({b_ckpt.path})"]

    def pairs():
        for name in _per_tensor(progress, release_memory)(names, "analysing", len(names)):
            b = jnp.asarray(base_ckpt.get(name))
            a_ft, b_ft = jnp.asarray(a_ckpt.get(a_alias[name])), jnp.asarray(b_ckpt.get(b_alias[name]))
            if not allow_nonfinite:
                check_finite(name, [b, a_ft, b_ft], where)
            dtype = tau_dtype(b.dtype, [a_ft.dtype, b_ft.dtype])
            yield name, np.asarray(tv_leaf(a_ft, b, out_dtype=dtype)), np.asarray(tv_leaf(b_ft, b, out_dtype=dtype))

    return Comparison.from_pairs(pairs(), labels=labels, top_fraction=top_fraction)
