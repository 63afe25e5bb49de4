"""Prompt data: the shipped arithmetic task, HF ``datasets`` adapters (GSM8K, MATH) and grain pipelines.

``jax_cat.data.arithmetic``, ``jax_cat.data.hf`` and ``jax_cat.data.padding`` are light (no JAX); the grain pipeline (which imports
JAX through grain) is loaded on first use of its names.
"""
from jax_cat.data.arithmetic import (
    LEVELS,
    PRESETS,
    ArithmeticSource,
    ArithmeticSpec,
    ArithmeticTask,
    get_spec,
    make_problem,
    prompt_length,
)
from jax_cat.data.hf import (
    KNOWN_DATASETS,
    MissingAnswer,
    detect_schema,
    end_of_turn_ids,
    format_prompt,
    gsm8k_record,
    load_prompt_dataset,
    math_record,
    prompt_answer_record,
    read_local_rows,
    stop_token_ids,
    to_records,
)

from jax_cat.data.padding import left_pad, pad_token_id, resolve_eos_token_ids, resolve_pad_token_id

_PIPELINE_NAMES = ("PromptCollator", "filter_by_length", "prompt_pipeline")


def __getattr__(name: str):
    if name in _PIPELINE_NAMES:
        from jax_cat.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'jax_cat.data' has no attribute {name!r}")


__all__ = [
    "KNOWN_DATASETS",
    "LEVELS",
    "MissingAnswer",
    "PRESETS",
    "ArithmeticSource",
    "ArithmeticSpec",
    "ArithmeticTask",
    "detect_schema",
    "end_of_turn_ids",
    "format_prompt",
    "get_spec",
    "left_pad",
    "gsm8k_record",
    "load_prompt_dataset",
    "make_problem",
    "math_record",
    "pad_token_id",
    "prompt_answer_record",
    "prompt_length",
    "read_local_rows",
    "resolve_eos_token_ids",
    "resolve_pad_token_id",
    "stop_token_ids",
    "to_records",
    *_PIPELINE_NAMES,
]
