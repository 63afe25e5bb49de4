"""PEFT LoRA adapter folders read with JSON and safetensors only: the checks of adapter_config.json and the pairing
of adapter_model.safetensors' lora_A / lora_B tensors. `jax_cat.models.peft` (adapters onto our models) and
`merging.adapters` (adapters as task vectors) both read folders through it, each adding its own policy (which
targets, rsLoRA or not); each passes the exception class its callers catch."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "AdapterFormatError", "is_adapter_folder", "lora_tensor_pairs",
           "read_lora_config"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# any PEFT LoRA tensor name: group "module" the adapted module's name, "ab" which factor
ANY_LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


class AdapterFormatError(ValueError):
    """A folder is not a LoRA adapter we can read (the message names the file, key or tensor)."""


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding adapter_config.json (a PEFT adapter, not a full checkpoint)."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_lora_config(folder: str | os.PathLike[str], *, error: type[ValueError] = AdapterFormatError
                     ) -> tuple[dict[str, Any], Path]:
    """(adapter_config.json as a dict, its path); `error` naming the file and the key for what no reader here
    supports: another peft_type, DoRA, fan_in_fan_out, per-module rank / alpha patterns, a bias."""
    file = Path(folder) / CONFIG_FILE
    try:
        cfg = json.loads(file.read_text())
    except FileNotFoundError:
        raise error(f"{folder}: no {CONFIG_FILE} (not a PEFT adapter folder)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{file} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise error(f"{file}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r} is not supported "
                    "(LORA only)")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise error(f"{file}: {key}={cfg[key]!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise error(f"{file}: {key} (per-module rank/alpha) is not supported")
    if cfg.get("bias", "none") != "none":
        raise error(f"{file}: bias={cfg['bias']!r} is not supported (adapters without bias terms only)")
    return cfg, file


def lora_tensor_pairs(folder: str | os.PathLike[str], *, pattern: re.Pattern[str] = ANY_LORA_TENSOR,
                      unmatched: str = "", error: type[ValueError] = AdapterFormatError
                      ) -> dict[str, tuple[str, str]]:
    """{HF weight name ("<module>.weight"): (lora_A tensor name, lora_B tensor name)} of adapter_model.safetensors.

    `pattern` (named groups "module" and "ab") says which tensor names are accepted; any other tensor, or a module
    with only one of A / B, is `error` naming the file and the tensor (`unmatched` is appended to say what is
    accepted)."""
    file = Path(folder) / WEIGHTS_FILE
    if not file.is_file():
        raise error(f"{folder}: no {WEIGHTS_FILE}")
    with safe_open(str(file), framework="numpy") as handle:
        names = list(handle.keys())
    pairs: dict[str, dict[str, str]] = {}
    for name in names:
        m = pattern.match(name)
        if m is None:
            raise error(f"{file}: tensor {name!r} is not a LoRA A/B weight{unmatched}")
        pairs.setdefault(m.group("module") + ".weight", {})[m.group("ab")] = name
    broken = [k for k, v in pairs.items() if set(v) != {"A", "B"}]
    if broken:
        raise error(f"{file}: {broken[0]} has only one of lora_A / lora_B")
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}
