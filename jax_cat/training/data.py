"""Training data from a DataConfig: records, SFT sequence batches and GRPO prompt batches (grain, resumable).

Both pipelines run `source -> seeded shuffle -> this process's shard -> repeat forever -> batch`, so every process
reads its own shard and an iterator's `get_state()` / `set_state()` resumes exactly (see `jax_cat.data.pipeline`).
"""
from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jax_cat.data.pipeline import PromptCollator, prompt_pipeline
from jax_cat.training.checkpoint import is_primary
from jax_cat.training.config import ConfigError, DataConfig


def _arithmetic_task(cfg: DataConfig):
    from jax_cat.data.arithmetic import ArithmeticTask

    preset = cfg.dataset.partition(":")[2] or "sum3"
    specs = [int(p) if p.isdigit() else p for p in preset.split(",")]
    try:
        return ArithmeticTask.from_preset(specs, seed=cfg.data_seed, style=cfg.style)
    except ValueError as err:
        raise ConfigError(f"data.dataset={cfg.dataset!r}: {err}") from None


def is_arithmetic(cfg: DataConfig) -> bool:
    return cfg.dataset == "arithmetic" or cfg.dataset.startswith("arithmetic:")


class ArithmeticBlocks(Sequence):
    """Random access to the arithmetic train stream, drawn `block` problems at a time with the task's vectorised
    `batch(index, size)` when it has one (~7x cheaper than problem by problem); the last two blocks are cached,
    which suits the in-order reads of `train_records` (generated problems need no shuffle)."""

    def __init__(self, task: Any, size: int, block: int = 1024, stream: int = 0) -> None:
        self.task, self.size, self.block, self.stream = task, size, block, stream
        self._cache: dict[int, list] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not 0 <= index < self.size:
            raise IndexError(f"ArithmeticBlocks: index {index} out of range [0, {self.size})")
        b, r = divmod(int(index), self.block)
        with self._lock:
            rows = self._cache.get(b)
            if rows is None:
                rows = (self.task.batch(b, self.block, split="train", stream=self.stream) if self.stream else
                        self.task.batch(b, self.block, split="train"))
                self._cache = {k: v for k, v in self._cache.items() if k == b - 1}
                self._cache[b] = rows
        return dict(rows[r])

    def with_stream(self, stream: int) -> "ArithmeticBlocks":
        """The same records drawn from train stream `stream` (a training seed's own problem order; 0 = this one)."""
        return ArithmeticBlocks(self.task, self.size, self.block, int(stream))

    def __getstate__(self) -> dict:
        return {"task": self.task, "size": self.size, "block": self.block, "stream": self.stream}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["task"], state["size"], state["block"], state.get("stream", 0))


def task_reward_fn(cfg: DataConfig) -> Any:
    """The reward_fn the task needs, or None for the general verifier (`jax_cat.rewards.compute_rewards`).

    The shipped arithmetic task in "plain" style writes its answer in one exact form (zero-padded digits, then EOS),
    so a completion scores 1 only when it IS the gold answer (`jax_cat.rewards.exact_match_rewards`): the general
    verifier would also accept `=84` or `1+084` for `084`, a hole an RL policy learns to use.
    """
    if is_arithmetic(cfg) and cfg.style == "plain":
        from jax_cat.rewards.exact import exact_match_rewards

        return exact_match_rewards
    return None


def train_records(cfg: DataConfig) -> Sequence[Mapping[str, Any]]:
    """The training records (random access): the arithmetic train stream (never a held-out prompt) or a dataset."""
    if is_arithmetic(cfg):
        task = _arithmetic_task(cfg)
        size = cfg.limit or 1_000_000
        return ArithmeticBlocks(task, size) if hasattr(task, "batch") else task.source("train", size)
    return _dataset_records(cfg.dataset, cfg.split, cfg.limit)


def eval_records(cfg: DataConfig, limit: int) -> list[dict]:
    """The first `limit` held-out problems (the arithmetic test set, or the dataset's eval split)."""
    if is_arithmetic(cfg):
        return _arithmetic_task(cfg).test_set()[:limit]
    return list(_dataset_records(cfg.dataset, cfg.eval_split, limit))


@functools.lru_cache(maxsize=4)
def _dataset_records(dataset: str, split: str, limit: int | None) -> list[dict]:
    """A dataset's records (loaded once per run: the check before the model load and the loops share them).

    Rows without an answer are left out and counted in one stderr line; a missing, empty or malformed file, or one
    where no row has an answer, is a ConfigError naming data.dataset and the file (and line)."""
    from jax_cat.data import load_prompt_dataset

    skipped: list[int] = []
    try:
        records = load_prompt_dataset(dataset, split=split, limit=limit, skipped=skipped)
    except (FileNotFoundError, ValueError, KeyError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ConfigError(f"data.dataset={dataset!r}: {text.removeprefix('load_prompt_dataset: ')}") from None
    if not records:
        why = f"none of its {len(skipped)} rows has an answer" if skipped else "it holds no records"
        raise ConfigError(f"data.dataset={dataset!r} (split {split!r}): {why}; give a file of "
                          "{prompt, answer} records")
    if skipped and is_primary():
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        print(f"warning: data.dataset={dataset!r} (split {split!r}): skipped {len(skipped)} rows without an answer "
              f"(rows {shown}); using {len(records)}", file=sys.stderr, flush=True)
    return records


def check_data(cfg: DataConfig, *, evaluate: bool = False, eval_problems: int = 0) -> None:
    """Load (and cache) the training records, and the held-out ones when `evaluate`, before any model is loaded:
    a bad dataset is refused in seconds, not after compiling (ConfigError naming data.dataset)."""
    records = train_records(cfg)
    if len(records) == 0:
        raise ConfigError(f"data.dataset={cfg.dataset!r}: no training records")
    if evaluate and eval_problems > 0 and not is_arithmetic(cfg):
        eval_records(cfg, eval_problems)


class SFTCollator:
    """grain batch_fn: records -> {input_ids, attention_mask, loss_mask} int32 [B, max_prompt_len + max_target_len].

    The formatted prompt is left-padded to max_prompt_len (as for sampling); the target (the record's `solution`,
    else its `answer`) plus EOS follows, right-padded to max_target_len (too long: cut, EOS kept off). loss_mask
    marks the target tokens.
    """

    def __init__(self, tokenizer: Any, cfg: DataConfig) -> None:
        self.prompts = PromptCollator(tokenizer, max_prompt_len=cfg.max_prompt_len, system=cfg.system,
                                      use_chat_template=cfg.use_chat_template)
        self.max_target_len = cfg.max_target_len
        eos = tokenizer.eos_token_id
        self.eos = [int(eos[0] if isinstance(eos, (list, tuple)) else eos)] if eos is not None else []

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        batch = self.prompts(records)
        targets = [str(r.get("solution") or r["answer"]) for r in records]
        with self.prompts._lock:
            encoded = self.prompts.tokenizer(targets, add_special_tokens=False)["input_ids"]
        b, t = len(records), self.max_target_len
        ids = np.full((b, t), self.prompts.pad_id, np.int32)
        mask = np.zeros((b, t), np.int32)
        for row, toks in enumerate(encoded):
            toks = (list(toks) + self.eos)[:t]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        prompt_mask = np.asarray(batch["attention_mask"], np.int32)
        return {
            "input_ids": np.concatenate([np.asarray(batch["input_ids"], np.int32), ids], axis=1),
            "attention_mask": np.concatenate([prompt_mask, mask], axis=1),
            "loss_mask": np.concatenate([np.zeros_like(prompt_mask), mask], axis=1),
        }


def _seeded(records: Sequence, seed: int) -> Sequence:
    """The records in the order of `seed`: datasets get a seeded shuffle (below); the generated arithmetic stream,
    read in order, is redrawn from the seed's own train stream, so two training seeds never share a problem order
    (seed 0 keeps the historical stream)."""
    if isinstance(records, ArithmeticBlocks) and seed:
        return records.with_stream(int(seed) % 2**63)
    return records


def _shuffle(records: Sequence) -> bool:
    """Datasets are shuffled; the generated arithmetic stream is i.i.d. already and read in order (block reads)."""
    from jax_cat.data.arithmetic import ArithmeticSource

    return not isinstance(records, (ArithmeticBlocks, ArithmeticSource))


def sft_pipeline(records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *, batch_size: int,
                 seed: int, shard_index: int, shard_count: int) -> grain.IterDataset:
    """Endless SFT batches of `batch_size` sequences for this process's shard."""
    if len(records) < shard_count:
        raise ConfigError(f"data: {len(records)} records cannot feed {shard_count} processes")
    records = _seeded(records, seed)
    ds = grain.MapDataset.source(records)
    if _shuffle(records):
        ds = ds.seed(seed).shuffle()
    ds = ds[shard_index:(len(records) // shard_count) * shard_count:shard_count].repeat(None)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=SFTCollator(tokenizer, cfg))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))


def prompt_batches(records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *, batch_size: int,
                   seed: int, shard_index: int, shard_count: int) -> grain.IterDataset:
    """Endless prompt batches for GRPO (`jax_cat.data.prompt_pipeline`, this process's shard)."""
    records = _seeded(records, seed)
    return prompt_pipeline(records, tokenizer, batch_size=batch_size, max_prompt_len=cfg.max_prompt_len, seed=seed,
                           shuffle=_shuffle(records), num_epochs=None, shard_index=shard_index, shard_count=shard_count, system=cfg.system,
                           use_chat_template=cfg.use_chat_template,
                           read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
