"""Training data from a DataConfig: records, SFT sequence batches and GRPO prompt batches (grain, resumable).

Both pipelines run `source -> seeded shuffle -> this process's shard -> repeat forever -> batch`, so every process
reads its own shard and an iterator's `get_state()` / `set_state()` resumes exactly (see `jax_cat.data.pipeline`).
"""
from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jax_cat.data.pipeline import PromptCollator, prompt_pipeline
from jax_cat.training.checkpoint import is_primary
from jax_cat.training.config import Config, ConfigError, DataConfig


def _arithmetic_task(cfg: DataConfig):
    from jax_cat.data.arithmetic import ArithmeticTask

    preset = cfg.dataset.partition(":")[2] or "sum3"
    specs = [int(p) if p.isdigit() else p for p in preset.split(",")]
    try:
        return ArithmeticTask.from_preset(specs, seed=cfg.data_seed, style=cfg.style)
    except ValueError as err:
        raise ConfigError(f"data.dataset={cfg.dataset!r}: {err}") from None


def is_arithmetic(cfg: DataConfig) -> bool:
    """Whether `data.dataset` names the built-in arithmetic task ("arithmetic" or "arithmetic:<preset>"), which is
    generated, not read."""
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


def _local_file(dataset: str) -> Path | None:
    """The resolved path when `dataset` is a local file or folder (one table: splits do not apply), else None."""
    path = Path(dataset).expanduser()
    return path.resolve() if path.exists() else None


def eval_dataset(cfg: Config) -> str:
    """The evaluation problems' source: eval.dataset, else data.dataset."""
    return cfg.eval.dataset or cfg.data.dataset


def eval_holdout(cfg: Config) -> int:
    """Rows of the training table held out for the end-of-run evaluation: eval.num_problems when evaluation reads
    the very file training reads (a local file has no splits), else 0. A hub dataset whose eval split is its
    training split is refused (ConfigError naming the keys)."""
    d = cfg.data
    if not cfg.train.eval_at_end or cfg.eval.num_problems <= 0 or is_arithmetic(d):
        return 0
    source = eval_dataset(cfg)
    train_file, eval_file = _local_file(d.dataset), _local_file(source)
    if train_file is not None:
        return cfg.eval.num_problems if eval_file == train_file else 0
    if eval_file is None and source == d.dataset and d.split == d.eval_split:
        raise ConfigError(f"data.split and data.eval_split are both {d.split!r}: the evaluation would score training "
                          "rows; set data.eval_split (e.g. test) or eval.dataset")
    return 0


def eval_note(cfg: Config, num_train_rows: int | None = None) -> str | None:
    """One line for the log when the evaluation rows are held out of a local training file, else None."""
    held = eval_holdout(cfg)
    if not held:
        return None
    rest = f" (training on the first {num_train_rows})" if num_train_rows is not None else ""
    return (f"eval: data.dataset={cfg.data.dataset} is one local table (data.split/eval_split apply only to hub "
            f"datasets): its last {held} rows are held out of training and evaluated{rest}; set eval.dataset=FILE "
            "to evaluate on a separate file")


def _load_table(cfg: DataConfig) -> list[dict]:
    return _dataset_records(cfg.dataset, cfg.split, None)


def train_records(cfg: DataConfig, holdout: int = 0) -> Sequence[Mapping[str, Any]]:
    """The training records (random access): the arithmetic train stream (never a held-out prompt) or a dataset
    less its last `holdout` rows (`eval_holdout`: the rows the end-of-run evaluation scores), then data.limit."""
    if is_arithmetic(cfg):
        task = _arithmetic_task(cfg)
        size = cfg.limit or 1_000_000
        return ArithmeticBlocks(task, size) if hasattr(task, "batch") else task.source("train", size)
    if not holdout:
        return _dataset_records(cfg.dataset, cfg.split, cfg.limit)
    table = _load_table(cfg)
    if holdout >= len(table):
        raise ConfigError(f"data.dataset={cfg.dataset}: its {len(table)} rows cannot give eval.num_problems={holdout} "
                          "held-out rows and still train; lower eval.num_problems or set eval.dataset=FILE")
    rows = table[: len(table) - holdout]
    return rows[: cfg.limit] if cfg.limit is not None else rows


def eval_records(cfg: DataConfig, limit: int, *, dataset: str | None = None, holdout: int = 0) -> list[dict]:
    """The first `limit` held-out problems: the arithmetic test set, the last `holdout` rows of the training file
    (`eval_holdout`), or `dataset` (default data.dataset) at data.eval_split."""
    if is_arithmetic(cfg) and dataset in (None, cfg.dataset):
        return _arithmetic_task(cfg).test_set()[:limit]
    if holdout:
        table = _load_table(cfg)
        return table[len(table) - holdout:][:limit]
    return list(_dataset_records(dataset or cfg.dataset, cfg.eval_split, limit))


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


def target_end_ids(tokenizer: Any, use_chat_template: bool = True) -> list[int]:
    """The tokens that end an SFT target: the chat template's end of an assistant turn (e.g. Qwen's <|im_end|>,
    `jax_cat.data.end_of_turn_ids`) when prompts are formatted with the template, else the tokenizer's EOS (nothing
    when it has none)."""
    from jax_cat.data import end_of_turn_ids

    eos = tokenizer.eos_token_id
    fallback = [int(eos[0] if isinstance(eos, (list, tuple)) else eos)] if eos is not None else []
    return end_of_turn_ids(tokenizer, use_chat_template) or fallback


class SFTCollator:
    """grain batch_fn: records -> {input_ids, attention_mask, loss_mask} int32 [B, max_prompt_len + max_target_len].

    The formatted prompt is left-padded to max_prompt_len (as for sampling); the target (the record's `solution`,
    else its `answer`) plus its end (`target_end_ids`: the chat template's end-of-turn, else EOS) follows,
    right-padded to max_target_len (too long: cut, the end kept off; `check_target_lengths` counts those before
    training). loss_mask marks the target tokens.
    """

    def __init__(self, tokenizer: Any, cfg: DataConfig) -> None:
        self.prompts = PromptCollator(tokenizer, max_prompt_len=cfg.max_prompt_len, system=cfg.system,
                                      use_chat_template=cfg.use_chat_template)
        self.max_target_len = cfg.max_target_len
        self.eos = target_end_ids(tokenizer, cfg.use_chat_template)

    def target_ids(self, records: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """Each record's whole target (solution or answer, then the end tokens), before any cut."""
        targets = [str(r.get("solution") or r["answer"]) for r in records]
        with self.prompts._lock:
            encoded = self.prompts.tokenizer(targets, add_special_tokens=False)["input_ids"]
        return [list(toks) + self.eos for toks in encoded]

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        batch = self.prompts(records)
        b, t = len(records), self.max_target_len
        ids = np.full((b, t), self.prompts.pad_id, np.int32)
        mask = np.zeros((b, t), np.int32)
        for row, toks in enumerate(self.target_ids(records)):
            toks = toks[:t]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        prompt_mask = np.asarray(batch["attention_mask"], np.int32)
        return {
            "input_ids": np.concatenate([np.asarray(batch["input_ids"], np.int32), ids], axis=1),
            "attention_mask": np.concatenate([prompt_mask, mask], axis=1),
            "loss_mask": np.concatenate([np.zeros_like(prompt_mask), mask], axis=1),
        }


def check_prompt_lengths(records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *,
                         max_rows: int = 5_000) -> None:
    """ConfigError naming data.max_prompt_len when a formatted prompt (chat template and system prompt included)
    of the first `max_rows` records is longer: found before training, not at the batch that holds it."""
    n = min(len(records), max_rows)
    if n == 0:
        return
    collator = PromptCollator(tokenizer, max_prompt_len=cfg.max_prompt_len, system=cfg.system,
                              use_chat_template=cfg.use_chat_template)
    texts = collator.texts([records[i] for i in range(n)])
    lengths = np.asarray([len(t) for t in tokenizer(texts, add_special_tokens=collator.add_special_tokens)["input_ids"]])
    over = int((lengths > cfg.max_prompt_len).sum())
    if over:
        scope = f"{n}" if n == len(records) else f"the first {n}"
        raise ConfigError(f"data: {over} of {scope} prompts (formatted: chat template, data.system) are longer than "
                          f"data.max_prompt_len={cfg.max_prompt_len} tokens (longest {int(lengths.max())}); raise "
                          f"data.max_prompt_len to {int(lengths.max())} or drop the long rows from {cfg.dataset}")


def check_target_lengths(records: Sequence[Mapping[str, Any]], tokenizer: Any, cfg: DataConfig, *,
                         max_rows: int = 5_000) -> str:
    """One line counting the SFT targets (end token included) longer than data.max_target_len, over the first
    `max_rows` records; ConfigError when their fraction exceeds data.max_truncated_fraction (a cut target trains
    the model on a fragment with no end, in silence)."""
    n = min(len(records), max_rows)
    if n == 0:
        return "no records"
    collator = SFTCollator(tokenizer, cfg)
    lengths = np.asarray([len(t) for t in collator.target_ids([records[i] for i in range(n)])])
    cut = int((lengths > cfg.max_target_len).sum())
    fraction = cut / n
    scope = f"{n}" if n == len(records) else f"the first {n}"
    line = (f"{cut} of {scope} targets ({100 * fraction:.1f}%) are longer than data.max_target_len="
            f"{cfg.max_target_len} tokens and are cut; longest {int(lengths.max())}, 99th percentile "
            f"{int(np.percentile(lengths, 99))}")
    if fraction > cfg.max_truncated_fraction:
        raise ConfigError(f"data: {line}: more than data.max_truncated_fraction={cfg.max_truncated_fraction}; raise "
                          f"data.max_target_len (e.g. to {int(lengths.max())}) or set data.max_truncated_fraction="
                          f"{min(1.0, round(fraction + 0.005, 3))} to train on the cut targets")
    return line
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
