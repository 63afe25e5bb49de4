"""HF datasets adapters on tiny local files (no network), the hub call construction, and prompt formatting."""
import json

import datasets
import pytest

from jax_cat.data import format_prompt, load_prompt_dataset
from jax_cat.data import hf as hf_module

GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A farm has 1,000 cows and buys 250 more. How many cows?",
     "answer": "1,000 + 250 = <<1000+250=1250>>1,250\n#### 1,250"},
]
MATH_ROWS = [
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "Divide: $\\boxed{\\frac{1}{2}}$.", "level": "Level 2",
     "type": "Prealgebra"},
    {"problem": "Find the set.", "solution": "We get \\boxed{3} then \\boxed{\\{1, \\{2\\}\\}}", "level": "Level ?",
     "type": "Algebra"},
]
MATH500_ROWS = [
    {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/1.json"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    records = load_prompt_dataset(path, cache_dir=str(tmp_path / "cache"))
    assert records == [
        {"prompt": GSM8K_ROWS[0]["question"], "answer": "72", "level": None, "id": "gsm8k/0",
         "solution": "In May she sold 48/2 = 24 clips.\nIn total 48+24 = 72.\n#### 72"},
        {"prompt": GSM8K_ROWS[1]["question"], "answer": "1250", "level": None, "id": "gsm8k/1",
         "solution": "1,000 + 250 = 1,250\n#### 1,250"},
    ]


def test_math_parquet_and_math500_json(tmp_path):
    datasets.Dataset.from_list(MATH_ROWS).to_parquet(str(tmp_path / "math.parquet"))
    records = load_prompt_dataset(tmp_path / "math.parquet", cache_dir=str(tmp_path / "cache"))
    assert [(r["answer"], r["level"], r["subject"], r["id"]) for r in records] == [
        ("\\frac{1}{2}", 2, "Prealgebra", "math/0"),
        ("\\{1, \\{2\\}\\}", None, "Algebra", "math/1"),  # last box, nested escaped braces; "Level ?" -> None
    ]
    (tmp_path / "m500").mkdir()
    (tmp_path / "m500" / "a.json").write_text(json.dumps(MATH500_ROWS))
    (record,) = load_prompt_dataset(tmp_path / "m500", cache_dir=str(tmp_path / "cache"))
    assert (record["prompt"], record["answer"], record["level"], record["id"], record["subject"]) == (
        "What is $1+1$?", "2", 1, "test/prealgebra/1.json", "Prealgebra")


def test_passthrough_folder_limit_and_schema_errors(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", [{"prompt": "1+1=", "answer": 2, "level": None, "id": ""},
                                       {"prompt": "2+2=", "answer": 4, "level": 3, "id": ""}])
    _write_jsonl(folder / "b.jsonl", [{"prompt": "3+3=", "answer": 6, "level": None, "id": "x"}])  # int answers -> str
    records = load_prompt_dataset(folder, cache_dir=str(tmp_path / "cache"))
    assert [(r["prompt"], r["answer"], r["level"], r["id"]) for r in records] == [
        ("1+1=", "2", None, "mine/0"), ("2+2=", "4", 3, "mine/1"), ("3+3=", "6", None, "x")]
    assert len(load_prompt_dataset(folder, limit=2, cache_dir=str(tmp_path / "cache"))) == 2
    _write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="cannot tell the schema"):
        load_prompt_dataset(tmp_path / "bad.jsonl", cache_dir=str(tmp_path / "cache"))


class _FakeHub:
    def __init__(self, rows_by_config):
        self.rows_by_config, self.calls = rows_by_config, []

    def __call__(self, path, name=None, split=None, cache_dir=None, **kwargs):
        self.calls.append((path, name, split))
        if name not in self.rows_by_config:
            raise ConnectionError("no network")
        return datasets.Dataset.from_list(self.rows_by_config[name])


def test_hub_calls_are_constructed_right(monkeypatch):
    fake = _FakeHub({"main": GSM8K_ROWS})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    records = load_prompt_dataset("gsm8k")
    assert fake.calls == [("openai/gsm8k", "main", "test")]
    assert [r["answer"] for r in records] == ["72", "1250"] and records[0]["id"] == "gsm8k/test/0"
    load_prompt_dataset("openai/gsm8k", split="train", limit=1)
    assert fake.calls[-1] == ("openai/gsm8k", "main", "train")

    subjects = hf_module.MATH_SUBJECTS
    fake = _FakeHub({s: MATH_ROWS for s in subjects})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    records = load_prompt_dataset("hendrycks_math")
    assert fake.calls == [("EleutherAI/hendrycks_math", s, "test") for s in subjects]
    assert len(records) == 2 * len(subjects) and len({r["id"] for r in records}) == len(records)
    load_prompt_dataset("EleutherAI/hendrycks_math", config="algebra", split="train")
    assert fake.calls[-1] == ("EleutherAI/hendrycks_math", "algebra", "train")

    fake = _FakeHub({None: MATH500_ROWS})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_prompt_dataset("HuggingFaceH4/MATH-500")[0]["answer"] == "2"
    assert fake.calls == [("HuggingFaceH4/MATH-500", None, "test")]
    with pytest.raises(FileNotFoundError, match="hub is unreachable \\(offline\\).*arithmetic:sum3"):
        load_prompt_dataset("someone/unknown", config="nope")


def test_arithmetic_through_the_same_door():
    records = load_prompt_dataset("arithmetic:sum3", limit=3)
    assert [r["id"] for r in records] == ["sum3/test/0", "sum3/test/1", "sum3/test/2"]
    train = load_prompt_dataset("arithmetic:1,2", split="train", limit=4)
    assert [r["level"] for r in train] == [1, 2, 1, 2]
    natural = load_prompt_dataset("arithmetic", limit=1, arithmetic_style="natural")
    assert natural[0]["prompt"].startswith("What is ")


def test_format_prompt(chat_tokenizer, plain_tokenizer):
    record = {"prompt": "012+345+006=", "answer": "0363"}
    assert format_prompt(record, chat_tokenizer) == "<bos><|user|>012+345+006=\n<|assistant|>"
    assert format_prompt(record, chat_tokenizer, system="Add.") == "<bos><|system|>Add.\n<|user|>012+345+006=\n<|assistant|>"
    assert format_prompt(record, chat_tokenizer, use_chat_template=False) == "012+345+006="
    assert format_prompt("2+2=", plain_tokenizer) == "2+2="
    assert format_prompt("2+2=", plain_tokenizer, system="Add.") == "Add.\n\n2+2="
    assert format_prompt("2+2=", None) == "2+2="
