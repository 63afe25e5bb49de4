"""PEFT-format LoRA adapter folders: `save_peft` (ours -> `adapter_config.json` + `adapter_model.safetensors`, what
`peft.PeftModel.from_pretrained` loads onto the transformers base), `load_peft` (such a folder -> adapters on our
model) and `read_peft` (the folder's tensors, one at a time, for task-vector arithmetic: `merging`).

PEFT names: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight`
[out, r] (HF's [out, in] convention: delta W = B @ A * lora_alpha / r). No peft or torch import here.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jax_cat.atomic import atomic_output_dir
from jax_cat.io.peft import CONFIG_FILE, WEIGHTS_FILE, lora_tensor_pairs, read_lora_config
from jax_cat.models.lora import TARGETS, LoRAConfig, adapters_of

PREFIX = "base_model.model."
_NAME = re.compile(r"^base_model\.model\.(?P<module>model\.layers\.\d+\.(?:self_attn|mlp)\.\w+)\.lora_(?P<ab>[AB])\.weight$")


class PeftFormatError(ValueError):
    """A folder is not a LoRA adapter folder we can read (the message names the file or tensor and what is wrong)."""


def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding adapter_config.json (a PEFT adapter, not a full checkpoint)."""
    return (Path(path) / CONFIG_FILE).is_file()


def _hf_pair(adapter: Any, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(A [r, in], B [out, r]) in PEFT's layout from our adapter (one layer of a stacked one)."""
    a, b = (np.asarray(jax.device_get(v.get_value()), np.float32) for v in (adapter.lora_a, adapter.lora_b))
    if layer is not None:
        a, b = a[layer], b[layer]
    r = a.shape[-1]
    return np.ascontiguousarray(a.reshape(-1, r).T), np.ascontiguousarray(b.reshape(r, -1).T)


def lora_weights(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF weight name ("model.layers.0.self_attn.q_proj.weight"): (A [r, in], B [out, r])} of `model`'s adapters,
    float32 numpy in PEFT's layout (tau = B @ A * model.lora.scale): what `save_peft` writes, and with the scale
    the in-memory adapter `merging.LoRAAdapter(lora_weights(model), model.lora.scale)` takes."""
    if getattr(model, "lora", None) is None:
        raise ValueError("lora_weights: the model has no LoRA adapters (build it with lora=LoRAConfig(...))")
    n = model.config.num_hidden_layers
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _, li, path, adapter in adapters_of(model):
        for layer in (range(n) if li is None else [li]):
            out[f"model.layers.{layer}.{path}.weight"] = _hf_pair(adapter, layer if li is None else None)
    return out


def save_peft(model: Any, out_dir: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
              dtype: Any = np.float32, tokenizer: Any = None, source: str | os.PathLike | None = None) -> Path:
    """Writes `model`'s adapters as a PEFT LoRA folder (atomically; an existing folder is replaced). `base_model`:
    recorded as base_model_name_or_path. `dtype`: of the written tensors (float32 default; adapters are small).
    `tokenizer` (an object or a folder) and `source`'s generation_config / tokenizer files go in too, as `save_hf`."""
    config: LoRAConfig | None = getattr(model, "lora", None)
    if config is None:
        raise ValueError("save_peft: the model has no LoRA adapters (build it with lora=LoRAConfig(...))")
    tensors: dict[str, np.ndarray] = {}
    for weight, (a, b) in lora_weights(model).items():
        stem = PREFIX + weight.removesuffix(".weight")
        tensors[f"{stem}.lora_A.weight"] = a.astype(dtype)
        tensors[f"{stem}.lora_B.weight"] = b.astype(dtype)
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.rank, "lora_alpha": config.alpha,
        "lora_dropout": config.dropout, "target_modules": sorted(config.targets), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None, "rank_pattern": {},
        "alpha_pattern": {}, "base_model_name_or_path": str(base_model) if base_model is not None else None,
    }
    out = Path(out_dir).expanduser().resolve()
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        from jax_cat.models.hf_keys import write_side_files

        write_side_files(tmp, tokenizer=tokenizer, source=source)
    return out


def read_peft_config(folder: str | os.PathLike) -> LoRAConfig:
    """The LoRAConfig of a PEFT LoRA folder; PeftFormatError naming the file and the key for anything we do not
    support (another peft_type, rslora / DoRA, per-module rank or alpha patterns, a bias, fan_in_fan_out)."""
    cfg, file = read_lora_config(folder, error=PeftFormatError)  # the checks merging.adapters shares (jax_cat.io)
    if cfg.get("use_rslora"):  # LoRAConfig.scale is alpha / r
        raise PeftFormatError(f"{file}: use_rslora={cfg['use_rslora']!r} is not supported")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise PeftFormatError(f"{file}: target_modules {unknown} are not decoder projections we adapt "
                              f"({', '.join(TARGETS)})")
    try:
        return LoRAConfig(rank=int(cfg["r"]), alpha=float(cfg.get("lora_alpha", 8)),
                          dropout=float(cfg.get("lora_dropout", 0.0)),
                          targets=tuple(t for t in TARGETS if t in targets))
    except (KeyError, ValueError, TypeError) as err:
        raise PeftFormatError(f"{file}: {err}") from None


def peft_tensor_names(folder: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """{HF weight name ("model.layers.0.self_attn.q_proj.weight"): (lora_A name, lora_B name)} of a PEFT folder."""
    return lora_tensor_pairs(folder, pattern=_NAME, unmatched=" of a decoder projection", error=PeftFormatError)


def iter_peft_deltas(folder: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(HF weight name, delta W [out, in] = B @ A * alpha / r, float32) of each adapted weight, one at a time: the
    adapter as a (low-rank) task vector in the HF layout."""
    config = read_peft_config(folder)
    with safe_open(str(Path(folder) / WEIGHTS_FILE), framework="numpy") as handle:
        for weight, (a_name, b_name) in peft_tensor_names(folder).items():
            a = handle.get_tensor(a_name).astype(np.float32)
            b = handle.get_tensor(b_name).astype(np.float32)
            yield weight, (b @ a) * config.scale


def load_peft(model: Any, folder: str | os.PathLike) -> Any:
    """`model` (a CausalLM without adapters, of the base the folder was trained on) with the folder's adapters
    added, in place; returns it. PeftFormatError for a folder that does not fit the model."""
    from jax_cat.models.hf_keys import hf_key_table
    from jax_cat.models.lora import add_lora

    config = read_peft_config(folder)
    pairs = peft_tensor_names(folder)
    table = hf_key_table(model.config)
    add_lora(model, config)
    file = Path(folder) / WEIGHTS_FILE
    found = set()
    with safe_open(str(file), framework="numpy") as handle:
        for name, li, path, adapter in adapters_of(model):
            layers = range(model.config.num_hidden_layers) if li is None else [li]
            a_all, b_all = np.array(adapter.lora_a.get_value()), np.array(adapter.lora_b.get_value())
            for layer in layers:
                weight = f"model.layers.{layer}.{path}.weight"
                if weight not in pairs:
                    raise PeftFormatError(f"{file}: no adapter for {weight} (target_modules lists {name})")
                found.add(weight)
                a_hf, b_hf = (handle.get_tensor(n).astype(np.float32) for n in pairs[weight])
                out_dim, in_dim = table[weight].hf_shape
                if a_hf.shape != (config.rank, in_dim) or b_hf.shape != (out_dim, config.rank):
                    raise PeftFormatError(f"{file}: {weight}: lora_A {a_hf.shape} / lora_B {b_hf.shape} do not fit "
                                          f"the model's [{out_dim}, {in_dim}] weight at r={config.rank}")
                a = a_hf.T.reshape(a_all.shape[1 if li is None else 0:])
                b = b_hf.T.reshape(b_all.shape[1 if li is None else 0:])
                if li is None:
                    a_all[layer], b_all[layer] = a, b
                else:
                    a_all, b_all = a, b
            for var, value in ((adapter.lora_a, a_all), (adapter.lora_b, b_all)):
                old = var.get_value()
                new = jnp.asarray(value, old.dtype)
                sharding = getattr(old, "sharding", None)
                var.set_value(jax.device_put(new, sharding) if sharding is not None else new)
    extra = sorted(set(pairs) - found)
    if extra:
        raise PeftFormatError(f"{file}: adapter for {extra[0]} is not among target_modules / the model's layers")
    return model


__all__ = ["CONFIG_FILE", "PeftFormatError", "WEIGHTS_FILE", "is_peft_folder", "iter_peft_deltas", "load_peft",
           "lora_weights", "peft_tensor_names", "read_peft_config", "save_peft"]
