"""The HF checkpoint layout of our decoders: which HF tensor lands on which NNX parameter, and how.

`hf_key_table(config)` lists, for every HF tensor name, the NNX path it lands on and the two layout conversions
(HF linear weights are [out, in]; our projection kernels are [in, out] with heads split out). This is the model's
"params file" (as in jax-ml/bonsai): `jax_cat.models.hf` (full checkpoints) and `jax_cat.models.peft` (LoRA
adapter folders) both read checkpoint names through it. `TOKENIZER_FILES` / `copy_side_files` /
`write_side_files`: the files beside the weights that travel with a checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jax_cat.models.config import ModelConfig

__all__ = ["NNXPath", "TOKENIZER_FILES", "TensorRule", "copy_side_files", "hf_key_table", "write_side_files"]

Array = np.ndarray
NNXPath = tuple[str | int, ...]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)
@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor: the NNX path it maps to and the layout conversions both ways."""

    path: NNXPath
    hf_shape: tuple[int, ...]
    to_nnx: Callable[[Array], Array]
    to_hf: Callable[[Array], Array]


def _identity(x: Array) -> Array:
    return x


def _linear(in_dim: int, out_shape: tuple[int, ...]):
    """HF [out, in] weight <-> our kernel [in, *out_shape]."""
    out = int(np.prod(out_shape))
    return (
        lambda w: np.ascontiguousarray(w.T).reshape(in_dim, *out_shape),
        lambda k: np.ascontiguousarray(k.reshape(in_dim, out).T),
    )


def _linear_in_split(in_shape: tuple[int, ...], out_dim: int):
    """HF [out, in] weight <-> our kernel [*in_shape, out] (o_proj: [heads, head_dim, hidden])."""
    in_dim = int(np.prod(in_shape))
    return (
        lambda w: np.ascontiguousarray(w.T).reshape(*in_shape, out_dim),
        lambda k: np.ascontiguousarray(k.reshape(in_dim, out_dim).T),
    )


def _reshape(shape: tuple[int, ...]):
    flat = int(np.prod(shape))
    return (lambda b: b.reshape(shape), lambda b: b.reshape(flat))


def hf_key_table(config: ModelConfig) -> dict[str, TensorRule]:
    """Every HF tensor name of a checkpoint for `config`, mapped to its NNX path and layout conversions."""
    c = config
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    h, kv = c.num_attention_heads, c.num_key_value_heads
    table: dict[str, TensorRule] = {}

    def add(key: str, path: NNXPath, hf_shape: tuple[int, ...], convs=(_identity, _identity)) -> None:
        table[key] = TensorRule(path, hf_shape, *convs)

    add("model.embed_tokens.weight", ("embed_tokens",), (c.vocab_size, d))
    add("model.norm.weight", ("norm", "weight"), (d,))
    if not c.tie_word_embeddings:
        add("lm_head.weight", ("lm_head",), (c.vocab_size, d), (lambda w: np.ascontiguousarray(w.T),) * 2)
    for i in range(c.num_hidden_layers):
        p, lp = f"model.layers.{i}.", ("layers", i)
        add(p + "input_layernorm.weight", (*lp, "input_layernorm", "weight"), (d,))
        add(p + "post_attention_layernorm.weight", (*lp, "post_attention_layernorm", "weight"), (d,))
        att = (*lp, "self_attn")
        add(p + "self_attn.q_proj.weight", (*att, "q_proj"), (h * hd, d), _linear(d, (h, hd)))
        add(p + "self_attn.k_proj.weight", (*att, "k_proj"), (kv * hd, d), _linear(d, (kv, hd)))
        add(p + "self_attn.v_proj.weight", (*att, "v_proj"), (kv * hd, d), _linear(d, (kv, hd)))
        add(p + "self_attn.o_proj.weight", (*att, "o_proj"), (d, h * hd), _linear_in_split((h, hd), d))
        if c.attention_bias:
            add(p + "self_attn.q_proj.bias", (*att, "q_bias"), (h * hd,), _reshape((h, hd)))
            add(p + "self_attn.k_proj.bias", (*att, "k_bias"), (kv * hd,), _reshape((kv, hd)))
            add(p + "self_attn.v_proj.bias", (*att, "v_bias"), (kv * hd,), _reshape((kv, hd)))
        if c.o_proj_bias:
            add(p + "self_attn.o_proj.bias", (*att, "o_bias"), (d,))
        if c.use_qk_norm:
            add(p + "self_attn.q_norm.weight", (*att, "q_norm", "weight"), (hd,))
            add(p + "self_attn.k_norm.weight", (*att, "k_norm", "weight"), (hd,))
        mlp = (*lp, "mlp")
        add(p + "mlp.gate_proj.weight", (*mlp, "gate_proj"), (f, d), _linear(d, (f,)))
        add(p + "mlp.up_proj.weight", (*mlp, "up_proj"), (f, d), _linear(d, (f,)))
        add(p + "mlp.down_proj.weight", (*mlp, "down_proj"), (d, f), _linear(f, (d,)))
        if c.mlp_bias:
            add(p + "mlp.gate_proj.bias", (*mlp, "gate_bias"), (f,))
            add(p + "mlp.up_proj.bias", (*mlp, "up_bias"), (f,))
            add(p + "mlp.down_proj.bias", (*mlp, "down_bias"), (d,))
    return table


# ---------------------------------------------------------------------------------------------------- locating files
def copy_side_files(src: Path, dst: Path, *, keep_existing: bool = False) -> None:
    """Copy the tokenizer files and generation_config.json that `src` has (skipping those `dst` has, if asked)."""
    for fname in TOKENIZER_FILES:
        if (src / fname).exists() and not (keep_existing and (dst / fname).exists()):
            shutil.copy2(src / fname, dst / fname)


def write_side_files(dst: Path, *, tokenizer: Any = None, source: str | os.PathLike | None = None) -> None:
    """What `save_hf` and `save_peft` write beside the weights: the tokenizer (an object, saved with
    save_pretrained, or a folder whose tokenizer files are copied), then `source`'s tokenizer files and
    generation_config.json that `dst` still lacks."""
    if tokenizer is not None:
        if isinstance(tokenizer, str | os.PathLike):
            copy_side_files(Path(tokenizer), dst)
        else:
            tokenizer.save_pretrained(str(dst))
    if source is not None:
        copy_side_files(Path(source), dst, keep_existing=True)
