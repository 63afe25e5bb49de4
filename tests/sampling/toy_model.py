"""A hand-checkable model and tokenizer that follow the CausalLM contract, for testing the decode loop's bookkeeping.

`ToyLM`: the next-token logits depend only on the current token and its position,
logits = table[token] + pos_table[position], so greedy continuations can be worked out with numpy. Its "cache" just
records the fed token ids at their slots, so tests can check the slots the loop writes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ToyCache:
    tokens: jax.Array  # [B, max_len]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    max_position_embeddings: int = 512


class ToyLM(nnx.Module):
    def __init__(self, table: np.ndarray, pos_table: np.ndarray, eos_token_id: int | None = None):
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))
        self.pos_table = nnx.Param(jnp.asarray(pos_table, jnp.float32))
        self.config = ToyConfig(vocab_size=table.shape[0], eos_token_id=eos_token_id, pad_token_id=0,
                                max_position_embeddings=pos_table.shape[0])

    def init_cache(self, batch_size, max_len, dtype=None):
        return ToyCache(tokens=jnp.full((batch_size, max_len), -1, jnp.int32))

    def forward_cached(self, input_ids, positions, cache, cache_index, kv_mask):
        logits = self.table[...][input_ids] + self.pos_table[...][positions]
        tokens = jax.lax.dynamic_update_slice(cache.tokens, input_ids.astype(jnp.int32), (0, cache_index))
        return logits, ToyCache(tokens=tokens)


def greedy_reference(table: np.ndarray, pos_table: np.ndarray, prompt: list[int], max_new: int, eos: set[int]) -> list[int]:
    out, tok, pos = [], prompt[-1], len(prompt) - 1
    for _ in range(max_new):
        tok = int(np.argmax(table[tok] + pos_table[pos]))
        pos += 1
        out.append(tok)
        if tok in eos:
            break
    return out


class CharTokenizer:
    """Characters 'a'.. as ids 3..; 0 = <pad>, 1 = <bos>, 2 = <eos>."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, texts, add_special_tokens=True):
        ids = [[1] * add_special_tokens + [3 + ord(c) - ord("a") for c in t] for t in texts]
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + int(i) - 3) for i in ids if not (skip_special_tokens and int(i) < 3))
