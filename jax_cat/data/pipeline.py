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


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def left_pad(
    sequences: Sequence[Sequence[int]],
    *,
    max_len: int,
    pad_id: int,
    truncate: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """int32 ``(ids, mask)`` of shape [len(sequences), max_len], right-aligned; too-long sequences raise
    (naming the offender) unless ``truncate``, which keeps their last ``max_len`` tokens."""
    ids = np.full((len(sequences), max_len), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), max_len), dtype=np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > max_len:
            if not truncate:
                who = names[row] if names is not None else f"row {row}"
                raise ValueError(
                    f"prompt {who} has {len(seq)} tokens > max_prompt_len={max_len}; raise max_prompt_len, "
                    "filter long prompts (filter_by_length) or pass truncate=True (keeps the last tokens)"
                )
            seq = seq[len(seq) - max_len :]
        if len(seq):
            ids[row, max_len - len(seq) :] = seq
            mask[row, max_len - len(seq) :] = 1
    return ids, mask


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
        self.pad_id = pad_token_id(tokenizer)
        self._lock = threading.Lock()  # HF fast tokenizers mutate state per call; grain reads in threads

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def texts(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        return [
            format_prompt(r, self.tokenizer, system=self.system, use_chat_template=self.use_chat_template)
            for r in records
        ]

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        texts = self.texts(records)
        with self._lock:
            encoded = self.tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]
        names = [str(r.get("id", i)) for i, r in enumerate(records)]
        ids, mask = left_pad(encoded, max_len=self.max_prompt_len, pad_id=self.pad_id, truncate=self.truncate, names=names)
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
    seed: int = 0,
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
) -> grain.IterDataset:
    """Seeded, sharded, repeated, tokenised batches of prompts as a ``grain.IterDataset``.

    ``iter(ds)`` gives an iterator with ``get_state()`` / ``set_state()`` for exact resumption. The shard is
    ``jax.process_index()`` of ``jax.process_count()`` unless both are given. ``num_epochs=None`` repeats
    forever. Records may be any random-access sequence (a list, ``ArithmeticTask.source(...)``).
    """
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
        ds = ds.seed(seed).shuffle()
    stop = (len(records) // shard_count) * shard_count if even_shards else None
    ds = ds[shard_index:stop:shard_count]
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collator)
    return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
