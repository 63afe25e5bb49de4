"""Which checkpoint a model setting names: "tiny" | an HF-format folder | a hub id -> a local folder.

One rule for every entry point that takes a model (`--model` of `jax_cat.evaluate`, `model.path` of the trainer):

- "tiny": the embedded default checkpoint (`jax_cat.models.tiny.default_checkpoint`, built once in the user cache);
- "tiny-arithmetic": the default experiment's arithmetic model (`jax_cat.models.tiny.arithmetic_checkpoint`, built
  once; configs/default.toml);
- an existing path: a folder holding config.json (a file, or a folder without config.json, is refused);
- anything else that looks like "owner/name": a hub id, fetched once (`jax_cat.models.hf.resolve_checkpoint_dir`:
  config, tokenizer and exactly the shards the index names) and read from the local snapshot. When the hub cannot be
  reached the hub libraries are switched offline first (`jax_cat.hub`), so an uncached name fails at once.

Every refusal is a `FileNotFoundError` / `NotADirectoryError` whose one-line message names the setting and the value
and says what to give instead. It lives beside the models because "tiny" is built by them; the checkpoint files
themselves are read by `jax_cat.io.safetensors`.
"""
from __future__ import annotations

import os
from pathlib import Path

from jax_cat.hub import go_offline_if_unreachable, is_offline, short_reason
from jax_cat.models import hf
from jax_cat.models.tiny import arithmetic_checkpoint, default_checkpoint

__all__ = ["TINY", "TINY_ARITHMETIC", "resolve_model"]

TINY = "tiny"
TINY_ARITHMETIC = "tiny-arithmetic"
_WHAT = "give an HF-format checkpoint folder (config.json, safetensors, tokenizer files), a hub id, or tiny"


def resolve_model(spec: str | os.PathLike[str], *, setting: str = "--model") -> Path:
    """The local HF-format checkpoint folder for `spec` ("tiny" | folder | hub id); `setting` names the flag or
    config key in error messages ("--model", "model.path")."""
    text = str(spec)
    if text == TINY:
        return default_checkpoint()
    if text == TINY_ARITHMETIC:
        return arithmetic_checkpoint()
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{setting}={text!r} is a file; {_WHAT}")
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{setting}={text!r}: no config.json there; {_WHAT}")
        return local
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{setting}={text!r}: no such folder (a local checkpoint; a hub id looks like "
                                "'owner/name')")
    go_offline_if_unreachable()
    try:
        return hf.resolve_checkpoint_dir(text)
    except FileNotFoundError as err:
        cause = err.__cause__ or err
        why = ("the hub is unreachable (offline) and it is not in the local cache" if is_offline() else
               short_reason(cause))
        raise FileNotFoundError(f"{setting}={text!r}: not a local folder, and fetching it from the hub failed: {why}; "
                                "pass a local HF-format checkpoint folder") from None
