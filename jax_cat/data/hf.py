"""Prompt datasets through HF ``datasets`` (hub ids online, local json/jsonl/parquet offline) as common records.

Every loader returns a list of records ``{"prompt", "answer", "level", "id", "solution", ...}``:

* GSM8K (``question``, ``answer`` = rationale ending in ``#### x``): answer ``x`` without thousands commas,
  solution = the rationale with its ``<<48/2=24>>`` calculator annotations removed, level None;
* MATH (Hendrycks / MATH-500: ``problem``, ``solution`` with ``\\boxed{}``, ``level`` "Level 3" or 3,
  ``type`` / ``subject``): answer = the ``answer`` column when present, else the solution's last box;
  ``level`` an int (None for "Level ?"); ``subject`` kept;
* anything with ``prompt`` and ``answer`` columns passes through (``level``/``id``/``solution`` optional).

``load_prompt_dataset("arithmetic:sum3", split="test")`` serves the shipped generator through the same door.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jax_cat.extras import require
from jax_cat.rewards.extract import clean_answer, extract_answer


def _head(table: Any, n: int) -> Any:
    """The first n rows of a list or a ``datasets.Dataset``."""
    return table[:n] if isinstance(table, list) else table.select(range(min(n, len(table))))

Schema = Literal["auto", "gsm8k", "math", "prompt_answer"]
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class HubDataset:
    """Where a known benchmark lives on the hub and how to read it."""

    repo_id: str
    configs: tuple[str | None, ...]
    default_split: str
    schema: Schema


KNOWN_DATASETS: dict[str, HubDataset] = {
    "gsm8k": HubDataset("openai/gsm8k", ("main",), "test", "gsm8k"),
    "math500": HubDataset("HuggingFaceH4/MATH-500", (None,), "test", "math"),
    "hendrycks_math": HubDataset("EleutherAI/hendrycks_math", MATH_SUBJECTS, "test", "math"),
}
KNOWN_DATASETS.update({spec.repo_id: spec for spec in list(KNOWN_DATASETS.values())})
KNOWN_DATASETS["math"] = KNOWN_DATASETS["hendrycks_math"]


class MissingAnswer(ValueError):
    """A row without an answer: it cannot be a training target or a graded problem (``to_records(skipped=...)``)."""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


# ------------------------------------------------------------------------------------------------ adapters

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_LEVEL_RE = re.compile(r"(\d+)")


def gsm8k_record(row: Mapping[str, Any], index: int, *, prefix: str = "gsm8k") -> dict:
    """A GSM8K row (question, answer with '#### x') as a common record."""
    try:
        question, rationale = row["question"], row["answer"]
    except KeyError as err:
        raise KeyError(f"gsm8k_record: row {index} lacks column {err}; columns are {sorted(row)}") from None
    if _blank(rationale):
        raise MissingAnswer(f"gsm8k_record: row {index} has no answer")
    final = extract_answer(rationale, style="gsm8k")
    if final is None:
        raise MissingAnswer(f"gsm8k_record: row {index} has no '#### answer' line: {rationale[-80:]!r}")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", final):
        final = final.replace(",", "")
    solution = _CALCULATOR_RE.sub("", rationale).strip()
    return {
        "prompt": question.strip(),
        "answer": final,
        "level": None,
        "id": str(row.get("id", f"{prefix}/{index}")),
        "solution": solution,
    }


def _math_level(level: Any) -> int | None:
    if level is None:
        return None
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return int(level)
    match = _LEVEL_RE.search(str(level))
    return int(match.group(1)) if match else None


def math_record(row: Mapping[str, Any], index: int, *, prefix: str = "math") -> dict:
    """A MATH row (problem, solution with \\boxed{}, level, type/subject) as a common record."""
    try:
        problem, solution = row["problem"], row["solution"]
    except KeyError as err:
        raise KeyError(f"math_record: row {index} lacks column {err}; columns are {sorted(row)}") from None
    answer = row.get("answer")
    answer = (clean_answer(str(answer)) if not _blank(answer) else
              extract_answer(solution, style="boxed") if isinstance(solution, str) else None)
    if not answer:
        raise MissingAnswer(f"math_record: row {index} has no 'answer' column and no \\boxed{{}} in its solution")
    record = {
        "prompt": problem.strip(),
        "answer": answer,
        "level": _math_level(row.get("level")),
        "id": str(row.get("unique_id") or row.get("id") or f"{prefix}/{index}"),
        "solution": solution,
    }
    subject = row.get("subject", row.get("type"))
    if subject is not None:
        record["subject"] = subject
    return record


def prompt_answer_record(row: Mapping[str, Any], index: int, *, prefix: str = "data") -> dict:
    """A row that already has ``prompt`` and ``answer``; other common fields are kept when present."""
    if "prompt" not in row:
        raise KeyError(f"prompt_answer_record: row {index} lacks ['prompt']; columns are {sorted(row)}")
    if _blank(row.get("answer")):  # a null cell (e.g. a JSONL row without the key) is no answer, never the text "None"
        raise MissingAnswer(f"prompt_answer_record: row {index} has no answer")
    record = dict(row)
    record["answer"] = str(row["answer"])
    record.setdefault("level", None)
    record["id"] = str(row.get("id") or f"{prefix}/{index}")
    record.setdefault("solution", None)
    return record


ADAPTERS: dict[str, Callable[..., dict]] = {
    "gsm8k": gsm8k_record,
    "math": math_record,
    "prompt_answer": prompt_answer_record,
}


def detect_schema(columns: Iterable[str]) -> str:
    """Which adapter fits a table with these columns."""
    cols = set(columns)
    if {"prompt", "answer"} <= cols:
        return "prompt_answer"
    if {"problem", "solution"} <= cols:
        return "math"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    raise ValueError(
        f"cannot tell the schema of columns {sorted(cols)}: expected (question, answer) for GSM8K, "
        "(problem, solution[, level, type]) for MATH, or (prompt, answer)"
    )


def to_records(rows: Iterable[Mapping[str, Any]], *, schema: Schema = "auto", prefix: str = "data",
               skipped: list[int] | None = None) -> list[dict]:
    """Map raw rows (a ``datasets.Dataset`` or dicts) to common records with the named or detected adapter.

    A row without an answer raises `MissingAnswer` naming it; with a ``skipped`` list it is left out instead and
    its index appended (the caller reports the count).
    """
    rows = list(rows)
    if not rows:
        return []
    columns: dict[str, None] = {}
    for row in rows:  # the union (a JSON-lines file need not give every row every key)
        columns.update(dict.fromkeys(row.keys()))
    name = detect_schema(columns) if schema == "auto" else schema
    if name not in ADAPTERS:
        raise ValueError(f"schema must be 'auto' or one of {sorted(ADAPTERS)}, got {schema!r}")
    adapter = ADAPTERS[name]
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(adapter(row, i, prefix=prefix))
        except MissingAnswer:
            if skipped is None:
                raise
            skipped.append(i)
    return records


# ------------------------------------------------------------------------------------------------ loading


def looks_local(source: str) -> bool:
    """Whether a dataset / model name is meant as a local path (not a hub id 'owner/name')."""
    return (source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source
            or Path(source).suffix in _LOCAL_BUILDERS)


def _json_rows(path: Path) -> list[dict]:
    """Rows of a .json (a list of objects, or JSON lines) or .jsonl file; ValueError naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines in a .json file, as `datasets` accepts
        else:
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise ValueError(f"{path}: expected a list of objects (or one object per line)")
            return data
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_local_rows(path: str | Path) -> list[dict]:
    """The rows of a local .json / .jsonl / .parquet file or folder of them (no ``datasets`` cache, no progress
    bars); errors name the file (and the line, for JSON lines)."""
    path = Path(path).expanduser()
    builder, files = _local_files(path)
    rows: list[dict] = []
    for file in map(Path, files):
        if builder == "parquet":
            pq = require("pyarrow.parquet", feature="Parquet dataset files")

            try:
                rows.extend(pq.read_table(file).to_pylist())
            except Exception as err:  # noqa: BLE001 - pyarrow's errors name neither the file nor the fix
                raise ValueError(f"{file}: not a readable parquet file ({type(err).__name__}: {err})") from None
        else:
            rows.extend(_json_rows(file))
    return rows


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = sorted(p for p in path.iterdir() if p.suffix in _LOCAL_BUILDERS) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"load_prompt_dataset: no .json/.jsonl/.parquet files in {path}")
    builders = {_LOCAL_BUILDERS.get(p.suffix) for p in files}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"load_prompt_dataset: {path} must hold files of one kind among {sorted(_LOCAL_BUILDERS)}, "
            f"got {sorted({p.suffix for p in files})}"
        )
    return builders.pop(), [str(p) for p in files]


def load_prompt_dataset(
    source: str | Path,
    *,
    split: str | None = None,
    config: str | Sequence[str] | None = None,
    schema: Schema = "auto",
    limit: int | None = None,
    cache_dir: str | None = None,
    arithmetic_style: str = "plain",
    data_seed: int | None = None,
    skipped: list[int] | None = None,
) -> list[dict]:
    """Records from a local json/jsonl/parquet file or folder, a hub dataset id, or ``arithmetic[:preset]``.

    Known hub ids and aliases (``gsm8k``, ``math500``, ``hendrycks_math``/``math``) get their config(s),
    default split (test) and schema filled in; ``hendrycks_math`` loads and concatenates all seven subjects
    unless ``config`` names some. ``split`` applies to hub datasets and the arithmetic task (a local file or
    folder is one table). ``limit`` keeps the first rows. ``data_seed`` seeds the arithmetic generator
    (None = 0). A row without an answer raises `MissingAnswer`; with a
    ``skipped`` list such rows are left out and their indices appended. A path-looking source that does not
    exist is a FileNotFoundError (never tried as a hub id); a hub id fails at once when the hub is unreachable.
    """
    arithmetic_seed = 0 if data_seed is None else int(data_seed)
    source_str = str(source)
    if source_str == "arithmetic" or source_str.startswith("arithmetic:"):
        from jax_cat.data.arithmetic import ArithmeticTask

        preset = source_str.partition(":")[2] or "sum3"
        specs = tuple(int(p) if p.isdigit() else p for p in preset.split(","))
        task = ArithmeticTask(specs, seed=arithmetic_seed, style=arithmetic_style)
        split = split or "test"
        if split == "test":
            records = task.test_set()
            return records[:limit] if limit is not None else records
        return list(task.source(split, limit if limit is not None else 10_000))

    path = Path(source_str).expanduser()
    if path.exists():
        prefix = path.stem
        tables = [read_local_rows(path)]
    elif looks_local(source_str):
        raise FileNotFoundError(f"load_prompt_dataset: no such file or folder: {source_str} (a local dataset; a hub "
                                "dataset id looks like 'owner/name')")
    else:
        from jax_cat.hub import go_offline_if_unreachable

        datasets = require("datasets", feature="hub datasets")
        go_offline_if_unreachable()

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        known = KNOWN_DATASETS.get(source_str)
        repo_id = known.repo_id if known else source_str
        if config is None:
            configs: Sequence[str | None] = known.configs if known else (None,)
        else:
            configs = (config,) if isinstance(config, str) else tuple(config)
        split = split or (known.default_split if known else "test")
        if schema == "auto" and known is not None:
            schema = known.schema
        prefix = f"{repo_id.split('/')[-1]}/{split}"
        tables = []
        for name in configs:
            try:
                tables.append(datasets.load_dataset(repo_id, name=name, split=split, cache_dir=cache_dir))
            except Exception as err:  # noqa: BLE001 - add what the user can do about it
                from jax_cat.hub import is_offline, short_reason

                where = "the hub is unreachable (offline)" if is_offline() else short_reason(err)
                raise FileNotFoundError(
                    f"load_prompt_dataset: could not load hub dataset {repo_id!r} (config={name!r}, split={split!r}): "
                    f"{where}. Pass a local .json/.jsonl/.parquet file or 'arithmetic:sum3' instead."
                ) from err
    records: list[dict] = []
    consumed = 0  # rows read from earlier tables (skipped indices count across tables)
    for table in tables:
        if skipped is None:
            rows = table if limit is None else _head(table, max(0, limit - len(records)))
            records.extend(to_records(rows, schema=schema, prefix=prefix))
        else:  # rows without answers are left out, so every row is read and `limit` applies to the kept ones
            lost: list[int] = []
            records.extend(to_records(table, schema=schema, prefix=prefix, skipped=lost))
            skipped.extend(consumed + i for i in lost)
            consumed += len(table)
        if limit is not None and len(records) >= limit:
            records = records[:limit]
            break
    if len({r["id"] for r in records}) != len(records):  # ids from per-config prefixes can collide
        for i, record in enumerate(records):
            record["id"] = f"{prefix}/{i}"
    return records


# ------------------------------------------------------------------------------------------------ prompts


def end_of_turn_ids(tokenizer: Any, use_chat_template: bool = True) -> list[int]:
    """The tokens the chat template puts after an assistant turn (e.g. Qwen's <|im_end|>, then nothing), found by
    formatting a one-turn conversation; [] without a template, with ``use_chat_template`` off, or when the template
    refuses the conversation. A base model's EOS (<|endoftext|> for Qwen2.5) is often another token."""
    if not (use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None)):
        return []
    sentinel = "JAXCATTARGETEND"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation: no end-of-turn known
        return []
    suffix = text.partition(sentinel)[2].strip() if sentinel in text else ""
    return [int(i) for i in tokenizer(suffix, add_special_tokens=False)["input_ids"]] if suffix else []


def stop_token_ids(model: Any = None, tokenizer: Any = None, use_chat_template: bool = True) -> tuple[int, ...]:
    """The ids generation stops at: the EOS ids (`resolve_eos_token_ids`: the tokenizer's, then the model config's,
    which `load_hf` extends with generation_config.json's) plus, for chat-template prompts, the template's
    end-of-turn token when it is a single token, as transformers' generate stops at any id of an eos_token_id list."""
    from jax_cat.data.padding import resolve_eos_token_ids

    eos = resolve_eos_token_ids(model, tokenizer)
    end = end_of_turn_ids(tokenizer, use_chat_template)
    return tuple(dict.fromkeys((*eos, *end))) if len(end) == 1 else eos


def format_prompt(
    record: Mapping[str, Any] | str,
    tokenizer: Any = None,
    *,
    system: str | None = None,
    use_chat_template: bool = True,
) -> str:
    """The text to feed the model: the tokenizer's chat template (user turn + generation prompt) when it has
    one and ``use_chat_template``, else the raw prompt (after ``system`` and a blank line when given)."""
    prompt = record if isinstance(record, str) else record["prompt"]
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if use_chat_template and template:
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - some templates refuse a system turn: fold it into the user turn
            if not system:
                raise
            merged = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{prompt}" if system else prompt
