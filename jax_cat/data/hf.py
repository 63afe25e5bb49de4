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

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jax_cat.extras import require
from jax_cat.rewards.extract import clean_answer, extract_answer

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


# ------------------------------------------------------------------------------------------------ adapters

_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_LEVEL_RE = re.compile(r"(\d+)")


def gsm8k_record(row: Mapping[str, Any], index: int, *, prefix: str = "gsm8k") -> dict:
    """A GSM8K row (question, answer with '#### x') as a common record."""
    try:
        question, rationale = row["question"], row["answer"]
    except KeyError as err:
        raise KeyError(f"gsm8k_record: row {index} lacks column {err}; columns are {sorted(row)}") from None
    final = extract_answer(rationale, style="gsm8k")
    if final is None:
        raise ValueError(f"gsm8k_record: row {index} has no '#### answer' line: {rationale[-80:]!r}")
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
    answer = clean_answer(str(answer)) if answer not in (None, "") else extract_answer(solution, style="boxed")
    if not answer:
        raise ValueError(f"math_record: row {index} has no 'answer' column and no \\boxed{{}} in its solution")
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
    missing = [key for key in ("prompt", "answer") if key not in row]
    if missing:
        raise KeyError(f"prompt_answer_record: row {index} lacks {missing}; columns are {sorted(row)}")
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


def to_records(rows: Iterable[Mapping[str, Any]], *, schema: Schema = "auto", prefix: str = "data") -> list[dict]:
    """Map raw rows (a ``datasets.Dataset`` or dicts) to common records with the named or detected adapter."""
    rows = list(rows)
    if not rows:
        return []
    name = detect_schema(rows[0].keys()) if schema == "auto" else schema
    if name not in ADAPTERS:
        raise ValueError(f"schema must be 'auto' or one of {sorted(ADAPTERS)}, got {schema!r}")
    adapter = ADAPTERS[name]
    return [adapter(row, i, prefix=prefix) for i, row in enumerate(rows)]


# ------------------------------------------------------------------------------------------------ loading


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
    arithmetic_seed: int = 0,
    arithmetic_style: str = "plain",
    data_seed: int | None = None,
) -> list[dict]:
    """Records from a local json/jsonl/parquet file or folder, a hub dataset id, or ``arithmetic[:preset]``.

    Known hub ids and aliases (``gsm8k``, ``math500``, ``hendrycks_math``/``math``) get their config(s),
    default split (test) and schema filled in; ``hendrycks_math`` loads and concatenates all seven subjects
    unless ``config`` names some. ``split`` applies to hub datasets and the arithmetic task (a local file or
    folder is one table). ``limit`` keeps the first rows. ``data_seed`` seeds the arithmetic generator
    (``arithmetic_seed`` is its old name; give one).
    """
    if data_seed is not None:
        if arithmetic_seed not in (0, data_seed):
            raise ValueError(f"load_prompt_dataset: data_seed={data_seed} and arithmetic_seed={arithmetic_seed} disagree")
        arithmetic_seed = int(data_seed)
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

    datasets = require("datasets", feature="reading dataset files and hub datasets")

    path = Path(source_str).expanduser()
    if path.exists():
        builder, files = _local_files(path)
        table = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
        prefix = path.stem
        tables = [table]
    else:
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
                raise RuntimeError(
                    f"load_prompt_dataset: could not load hub dataset {repo_id!r} (config={name!r}, split={split!r}): "
                    f"{err}. Offline? Pass a local .json/.jsonl/.parquet file or 'arithmetic:sum3' instead."
                ) from err
    records: list[dict] = []
    for table in tables:
        rows = table if limit is None else table.select(range(min(limit - len(records), len(table))))
        records.extend(to_records(rows, schema=schema, prefix=prefix))
        if limit is not None and len(records) >= limit:
            break
    if len({r["id"] for r in records}) != len(records):  # ids from per-config prefixes can collide
        for i, record in enumerate(records):
            record["id"] = f"{prefix}/{i}"
    return records


# ------------------------------------------------------------------------------------------------ prompts


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
