"""grain pipelines from prompt records to fixed-shape, left-padded token batches.

Order of operations (all index-based, so deterministic and exactly resumable):
``source -> seeded global shuffle (reshuffled every epoch) -> this process's shard -> repeat -> batch+tokenise``.
Sharding after a shuffle that uses the same seed on every process gives disjoint shards that together cover
each epoch; with ``even_shards`` every shard has the same length (the few records past a multiple of the
shard count are dropped, differently each epoch), so all processes run the same number of steps.

A batch is a dict: ``input_ids`` and ``attention_mask`` int32 ``[batch, max_prompt_len]`` (left padding, so
the last column is every prompt's last token), ``text`` (the formatted prompt strings) and, as lists, every
record field (``prompt``, ``answer``, ``level``, ``id``, ...).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jax_cat.data.hf import format_prompt
from jax_cat.data.padding import left_pad, pad_token_id, resolve_pad_token_id

__all__ = ["PromptCollator", "filter_by_length", "left_pad", "pad_token_id", "prompt_pipeline"]


class PromptCollator:
    """grain ``batch_fn``: format (chat template) and tokenise a list of records into one fixed-shape batch."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_prompt_len: int,
        system: str | None = None,
        use_chat_template: bool = True,
        add_special_tokens: bool | None = None,
        truncate: bool = False,
    ) -> None:
        if max_prompt_len < 1:
            raise ValueError(f"PromptCollator: max_prompt_len must be >= 1, got {max_prompt_len}")
        self.tokenizer = tokenizer
        self.max_prompt_len = max_prompt_len
        self.system = system
        self.use_chat_template = use_chat_template
        templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        # A chat template writes its own BOS; a raw prompt gets the tokenizer's usual special tokens.
        self.add_special_tokens = (not templated) if add_special_tokens is None else add_special_tokens
        self.truncate = truncate
        self.pad_token_id = resolve_pad_token_id(tokenizer=tokenizer)
        self._lock = threading.Lock()  # HF fast tokenizers mutate state per call; grain reads in threads

    @property
    def pad_id(self) -> int:
        """Old name of `pad_token_id`."""
        return self.pad_token_id

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def texts(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """The prompt strings of `records` as the model sees them (system prompt and chat template applied)."""
        return [
            format_prompt(r, self.tokenizer, system=self.system, use_chat_template=self.use_chat_template)
            for r in records
        ]

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        texts = self.texts(records)
        with self._lock:
            encoded = self.tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]
        names = [str(r.get("id", i)) for i, r in enumerate(records)]
        ids, mask = left_pad(encoded, self.max_prompt_len, self.pad_token_id, truncate=self.truncate, names=names)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "text": texts}
        for key in records[0]:
            batch[key] = [r.get(key) for r in records]
        return batch


def filter_by_length(records: Sequence[Mapping[str, Any]], collator: PromptCollator) -> list[Mapping[str, Any]]:
    """The records whose formatted prompt fits ``collator.max_prompt_len`` tokens (for finite datasets)."""
    texts = collator.texts(records)
    lengths = [len(ids) for ids in collator.tokenizer(texts, add_special_tokens=collator.add_special_tokens)["input_ids"]]
    return [r for r, n in zip(records, lengths) if n <= collator.max_prompt_len]


def _default_shard() -> tuple[int, int]:
    import jax  # only when the caller lets the process topology decide

    return jax.process_index(), jax.process_count()


def prompt_pipeline(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    batch_size: int,
    max_prompt_len: int,
    data_seed: int | None = None,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    even_shards: bool = True,
    drop_remainder: bool = True,
    system: str | None = None,
    use_chat_template: bool = True,
    add_special_tokens: bool | None = None,
    truncate: bool = False,
    read_options: grain.ReadOptions | None = None,
    seed: int | None = None,
) -> grain.IterDataset:
    """Seeded, sharded, repeated, tokenised batches of prompts as a ``grain.IterDataset``.

    ``iter(ds)`` gives an iterator with ``get_state()`` / ``set_state()`` for exact resumption. The shard is
    ``jax.process_index()`` of ``jax.process_count()`` unless both are given. ``num_epochs=None`` repeats
    forever. Records may be any random-access sequence (a list, ``ArithmeticTask.source(...)``). ``data_seed``
    (default 0) fixes the shuffle; ``seed`` is its old name.
    """
    if data_seed is not None and seed is not None and int(data_seed) != int(seed):
        raise ValueError(f"prompt_pipeline: data_seed={data_seed} and its old name seed={seed} disagree; give data_seed")
    data_seed = int(data_seed if data_seed is not None else seed if seed is not None else 0)
    if batch_size < 1:
        raise ValueError(f"prompt_pipeline: batch_size must be >= 1, got {batch_size}")
    if (shard_index is None) != (shard_count is None):
        raise ValueError("prompt_pipeline: give both shard_index and shard_count, or neither")
    if shard_index is None:
        shard_index, shard_count = _default_shard()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"prompt_pipeline: need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    if len(records) < shard_count:
        raise ValueError(f"prompt_pipeline: {len(records)} records cannot feed {shard_count} shards")
    collator = PromptCollator(
        tokenizer,
        max_prompt_len=max_prompt_len,
        system=system,
        use_chat_template=use_chat_template,
        add_special_tokens=add_special_tokens,
        truncate=truncate,
    )
    ds = grain.MapDataset.source(records)
    if shuffle:
        ds = ds.seed(data_seed).shuffle()
    stop = (len(records) // shard_count) * shard_count if even_shards else None
    ds = ds[shard_index:stop:shard_count]
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collator)
    return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
