"""What an evaluation reads: the model and tokenizer ("tiny" | HF folder | hub id) and the problem records."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def load_model_and_tokenizer(model: str | os.PathLike, *, dtype: str = "float32",
                             base: str | os.PathLike | None = None) -> tuple[Any, Any, Path]:
    """(CausalLM, tokenizer, checkpoint path) from an HF-format folder or hub id; "tiny" is the embedded default,
    "tiny-arithmetic" the default experiment's arithmetic model. A PEFT LoRA adapter folder (adapter_config.json)
    loads onto its base: `base`, or else the folder's base_model_name_or_path (`load_adapter_model`)."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf

    from jax_cat.models.resolve import resolve_model

    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    if _is_adapter_folder(model):
        return load_adapter_model(Path(model).expanduser(), dtype=dtypes[dtype], base=base)
    if base is not None:
        raise ValueError(f"--base {base}: only for a LoRA adapter folder given as --model (adapter_config.json), and "
                         f"{model} is not one; leave --base out")
    path = resolve_model(model, setting="--model")  # "tiny" | "tiny-arithmetic" | folder | hub id (fetched once)
    return load_hf(path, dtype=dtypes[dtype]), AutoTokenizer.from_pretrained(path), path


def _is_adapter_folder(model: str | os.PathLike) -> bool:
    local = Path(model).expanduser()
    return local.is_dir() and (local / "adapter_config.json").is_file() and not (local / "config.json").is_file()


def adapter_base(folder: Path, base: str | os.PathLike | None = None) -> Path:
    """The local base checkpoint of a PEFT adapter folder: `base` (the --base flag) or the folder's
    base_model_name_or_path (a folder or hub id, `resolve_model`); FileNotFoundError saying which and how to fix it."""
    from jax_cat.io.safetensors import read_json_object
    from jax_cat.models.resolve import resolve_model

    if base is None:
        base = read_json_object(folder / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise FileNotFoundError(f"{folder} is a LoRA adapter folder without base_model_name_or_path in "
                                    "adapter_config.json; pass --base (the checkpoint it was trained on)")
        setting = f"base_model_name_or_path in {folder / 'adapter_config.json'}"
    else:
        setting = "--base"
    try:
        return resolve_model(base, setting=setting)
    except (FileNotFoundError, NotADirectoryError) as err:
        hint = "; pass --base with the checkpoint it was trained on" if setting != "--base" else ""
        raise FileNotFoundError(f"{folder} is a LoRA adapter folder whose base cannot be found: {err}{hint}") from None


def load_adapter_model(folder: Path, *, dtype: Any, base: str | os.PathLike | None = None) -> tuple[Any, Any, Path]:
    """(base + the folder's adapters, tokenizer, folder): the base from `adapter_base`, the adapters by
    `jax_cat.models.peft.load_peft` (applied in every forward, as peft does); the tokenizer is the folder's when it
    holds one (save_peft writes it), else the base's."""
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.models.peft import load_peft

    base_path = adapter_base(folder, base)
    model = load_peft(load_hf(base_path, dtype=dtype), folder)
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return model, AutoTokenizer.from_pretrained(folder if has_tokenizer else base_path), folder


def load_problems(dataset: str, *, split: str = "test", limit: int | None = None, data_seed: int = 0,
                  arithmetic_style: str = "plain") -> list[dict]:
    """Problem records: "arithmetic[:preset]" (shipped generator), "gsm8k", "math", "math500", a hub id or a local file."""
    from jax_cat.data import load_prompt_dataset

    problems = load_prompt_dataset(dataset, split=split, limit=limit, data_seed=data_seed,
                                   arithmetic_style=arithmetic_style)
    if not problems:
        raise ValueError(f"dataset {dataset!r} (split {split!r}) has no problems")
    return problems
