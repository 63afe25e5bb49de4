"""What an evaluation reads: the model and tokenizer ("tiny" | HF folder | hub id) and the problem records."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def load_model_and_tokenizer(model: str | os.PathLike, *, dtype: str = "float32") -> tuple[Any, Any, Path]:
    """(CausalLM, tokenizer, checkpoint path) from an HF-format folder or hub id; "tiny" is the embedded default,
    "tiny-arithmetic" the default experiment's arithmetic model."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf

    from jax_cat.models.resolve import resolve_model

    path = resolve_model(model, setting="--model")  # "tiny" | "tiny-arithmetic" | folder | hub id (fetched once)
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    return load_hf(path, dtype=dtypes[dtype]), AutoTokenizer.from_pretrained(path), path


def load_problems(dataset: str, *, split: str = "test", limit: int | None = None, data_seed: int = 0,
                  arithmetic_style: str = "plain") -> list[dict]:
    """Problem records: "arithmetic[:preset]" (shipped generator), "gsm8k", "math", "math500", a hub id or a local file."""
    from jax_cat.data import load_prompt_dataset

    problems = load_prompt_dataset(dataset, split=split, limit=limit, data_seed=data_seed,
                                   arithmetic_style=arithmetic_style)
    if not problems:
        raise ValueError(f"dataset {dataset!r} (split {split!r}) has no problems")
    return problems
