"""Unlabeled query texts for DoTS from local files: .txt, .jsonl, .json, .parquet, or a folder of them.

Only the prompt column is read -- the first of `PROMPT_COLUMNS` the table has -- so label-free files work and
answers are never read (a Parquet file is read column by column: the others are not even loaded). Bad input is a
`ValueError` / `FileNotFoundError` naming the file (and the line, for JSON Lines). Hub ids and `arithmetic:PRESET`
go through `jax_cat.data.load_prompt_dataset` (a dependency of the DoTS search, imported at the top; the merging
core never imports this module).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jax_cat.data import load_prompt_dataset
from jax_cat.extras import require
from merging._paths import natural_key

__all__ = ["PROMPT_COLUMNS", "QUERY_SUFFIXES", "load_queries", "read_prompt_file"]

PROMPT_COLUMNS = ("prompt", "problem", "question")  # jax_cat.data's prompt / MATH / GSM8K columns, in this order
QUERY_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_TABLE_KEYS = ("data", "rows", "records", "examples", "train", "test")


def load_queries(source: str, limit: int | None = None) -> list[str]:
    """Query texts from a local file or folder (see the module doc), a hub dataset id or `arithmetic:PRESET`; the
    first `limit` of them. Raises ValueError when there is none."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.suffix in QUERY_SUFFIXES[1:] and p.is_file()),
                       key=lambda p: natural_key(str(p)))
        if not files:
            raise FileNotFoundError(f"--queries {path}: the folder holds no .jsonl, .json or .parquet file")
        queries = [q for f in files for q in read_prompt_file(f)]
    elif path.suffix in QUERY_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"--queries: no file {path}")
        queries = read_prompt_file(path)
    elif path.exists():
        raise ValueError(f"--queries {path}: unknown file type {path.suffix!r}; give a .txt, .jsonl, .json or "
                         f".parquet file, or a folder of them")
    else:
        queries = _from_jax_cat(source, limit)
    queries = queries[:limit] if limit is not None else queries
    if not queries:
        raise ValueError(f"--queries {source!r} holds no queries")
    return queries


def read_prompt_file(path: Path) -> list[str]:
    """Every query of one .txt (non-blank lines), .jsonl, .json or .parquet file."""
    if path.suffix == ".txt":
        return [line.strip() for line in _text(path).splitlines() if line.strip()]
    if path.suffix == ".parquet":
        return _parquet(path)
    text = _text(path)
    if path.suffix == ".jsonl":
        return _prompts(path, _jsonl(path, text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].lstrip().startswith("{"):  # JSON Lines in a .json file (datasets reads it)
            return _prompts(path, _jsonl(path, text))
        raise ValueError(f"--queries {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") \
            from None
    if isinstance(data, dict):
        tables = [data[k] for k in _TABLE_KEYS if isinstance(data.get(k), list)]
        if tables:
            data = tables[0]
        elif any(isinstance(data.get(c), list) for c in PROMPT_COLUMNS):  # column-oriented {"prompt": [...]}
            col = next(c for c in PROMPT_COLUMNS if isinstance(data.get(c), list))
            data = [{col: v} for v in data[col]]
    if not isinstance(data, list):
        raise ValueError(f"--queries {path}: expected a JSON list of rows (objects with a {'/'.join(PROMPT_COLUMNS)} "
                         f"field, or strings), got a JSON {type(data).__name__}")
    return _prompts(path, ((i + 1, row) for i, row in enumerate(data)), unit="row")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--queries {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None


def _jsonl(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--queries {path}: line {lineno} is not valid JSON ({err.msg}, column {err.colno})") \
                from None


def _prompts(path: Path, rows: Iterable[tuple[int, Any]], unit: str = "line") -> list[str]:
    out: list[str] = []
    column: str | None = None
    for where, row in rows:
        if isinstance(row, str):
            text = row
        elif isinstance(row, dict):
            if column is None:
                column = next((c for c in PROMPT_COLUMNS if c in row), None)
                if column is None:
                    raise ValueError(f"--queries {path}: {unit} {where} has no {'/'.join(PROMPT_COLUMNS)} field "
                                     f"(fields: {sorted(row)[:8]})")
            text = row.get(column)
            if not isinstance(text, str):
                raise ValueError(f"--queries {path}: {unit} {where}: {column!r} is "
                                 f"{'missing' if text is None else type(text).__name__}, not text")
        else:
            raise ValueError(f"--queries {path}: {unit} {where} is a JSON {type(row).__name__}; expected an object "
                             f"with a {'/'.join(PROMPT_COLUMNS)} field, or a string")
        if text.strip():
            out.append(text.strip())
    return out


def _parquet(path: Path) -> list[str]:
    pa = require("pyarrow", feature="Parquet query files")
    pq = require("pyarrow.parquet", feature="Parquet query files")

    try:
        names = pq.ParquetFile(path).schema_arrow.names
        column = next((c for c in PROMPT_COLUMNS if c in names), None)
        if column is None:
            raise ValueError(f"--queries {path}: no {'/'.join(PROMPT_COLUMNS)} column (columns: {names[:8]})")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"--queries {path}: not a readable Parquet file ({' '.join(str(err).split())[:160]})") \
            from None
    return _prompts(path, ((i + 1, {column: v}) for i, v in enumerate(values)), unit="row")


def _from_jax_cat(source: str, limit: int | None) -> list[str]:
    try:
        records = load_prompt_dataset(source, limit=limit)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"--queries {source!r}: {err}") from None
    return [str(r["prompt"]) for r in records]
