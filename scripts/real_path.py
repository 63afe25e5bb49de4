"""The real-model path end to end on a CPU, with one command: a checkpoint of the real Qwen2.5-0.5B shape (random
weights saved by transformers, tied embeddings, bf16 on disk), a byte-level BPE tokenizer trained offline with a
Qwen-style chat template, a local GSM8K-format JSONL; then the `qwen2.5-math-1.5b_math_maj16` recipe on it for 2
GRPO steps, `--resume` to 3, `final/` read by transformers (logits against `load_hf`), `jax_cat.evaluate`, a short
SFT run (the second fine-tune), and `merging.merge` / `merging.dots` on the three checkpoints. Each step runs as a
subprocess under `/usr/bin/time -v`; the table of wall time and peak RSS is printed (and written as JSON).

    python scripts/real_path.py --out /tmp/real-path            # the Qwen2.5-0.5B shape (~30 min, < 8 GiB a step)
    python scripts/real_path.py --shape tiny --out /tmp/rp-tiny # the same code paths on a tiny shape (~2 min)

Nothing here needs the network. `build_*` are importable (tests/training/test_real_path.py runs the tiny shape).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "qwen2.5-math-1.5b_math_maj16"

# The shape of Qwen/Qwen2.5-0.5B (its config.json), and a reduced one with the same fields.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024),
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's template, cut to what a plain conversation needs.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ken", "Zoe"]
ITEMS = ["apples", "pencils", "marbles", "books", "coins", "stickers"]


# ----------------------------------------------------------------------------------------------------- data
def gsm8k_rows(n: int, seed: int) -> list[dict[str, str]]:
    """GSM8K-format rows ({question, answer = rationale with <<calc>> annotations and '#### x'}), two-step sums."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 20)
        s = a + b
        question = (f"{name} has {a} {item} and buys {b} more. Then {name} gives away {c} {item}. "
                    f"How many {item} does {name} have now?")
        answer = (f"After buying, {name} has {a}+{b}=<<{a}+{b}={s}>>{s} {item}.\n"
                  f"After giving some away, {name} has {s}-{c}=<<{s}-{c}={s - c}>>{s - c} {item}.\n#### {s - c}")
        rows.append({"question": question, "answer": answer})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_data(out: Path, *, n_train: int = 256, n_test: int = 64) -> tuple[Path, Path]:
    """(train.jsonl, test.jsonl) in GSM8K format under `out` (disjoint seeds)."""
    return (write_jsonl(gsm8k_rows(n_train, seed=1), out / "gsm8k_train.jsonl"),
            write_jsonl(gsm8k_rows(n_test, seed=2), out / "gsm8k_test.jsonl"))


# ----------------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(out: Path, *, vocab_size: int = 2048, corpus_rows: int = 2000) -> Any:
    """A byte-level BPE (`tokenizers`) trained on GSM8K-format text, Qwen's special tokens and a chat template,
    wrapped in PreTrainedTokenizerFast and saved to `out` (AutoTokenizer reloads it). As in Qwen2.5's base models,
    EOS is <|endoftext|> and the template ends a turn with <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [r["question"] + "\n" + r["answer"] for r in gsm8k_rows(corpus_rows, seed=0)]
    text += ["Please reason step by step, and put your final answer within \\boxed{}.", "You are a helpful assistant."]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(text, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIAL_TOKENS[1:2])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


# ----------------------------------------------------------------------------------------------------- checkpoint
def build_checkpoint(out: Path, *, shape: str = "qwen2.5-0.5b", seed: int = 0, dtype: str = "bfloat16") -> Path:
    """A random Qwen2 checkpoint of `shape` (tied embeddings, rope_theta 1e6) saved by transformers in `dtype`,
    with the offline tokenizer and a generation_config; the base the path starts from."""
    import torch
    import transformers

    out = Path(out)
    fields = dict(SHAPES[shape], rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                  initializer_range=0.02, use_sliding_window=False, sliding_window=None)
    tok = build_tokenizer(out, vocab_size=min(2048, fields["vocab_size"]), corpus_rows=200 if shape == "tiny" else 2000)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    fields.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
                  pad_token_id=ids["<|endoftext|>"])
    config = transformers.Qwen2Config(**fields)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)
    del model
    return out


# ----------------------------------------------------------------------------------------------------- checks
def check_logits(folder: str | Path, *, atol: float = 1e-4) -> dict[str, float]:
    """transformers loads `folder` (float32) and its logits on a tokenised prompt equal `load_hf`'s to `atol`;
    returns {max_abs_diff, max_abs_logit}; raises AssertionError beyond."""
    import numpy as np
    import torch
    import transformers

    from jax_cat.models import load_hf

    folder = Path(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": gsm8k_rows(1, seed=5)[0]["question"]}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="np")["input_ids"][:, :64]
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.as_tensor(ids)).logits.numpy()
    del ref_model
    ours = np.asarray(load_hf(folder)(ids))
    diff = float(np.abs(ours - ref).max())
    result = {"max_abs_diff": diff, "max_abs_logit": float(np.abs(ref).max())}
    assert diff <= atol * max(1.0, result["max_abs_logit"]), f"{folder}: logits differ by {diff} (> {atol})"
    return result


# ----------------------------------------------------------------------------------------------------- the steps
def steps(out: Path, *, shape: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step of the path, in order (argv after `python`)."""
    base, run, sft = out / "base", out / "grpo", out / "sft"
    train, test = out / "gsm8k_train.jsonl", out / "gsm8k_test.jsonl"
    tiny = shape == "tiny"
    new_tokens = "16" if tiny else "32"
    prompt_len = "128" if tiny else "80"  # the longest formatted prompt: 107 tokens (512-token BPE), 68 (2048)
    target_len = "64" if tiny else "48"  # the longest target with its end token: 50, 44
    # The recipe as a user on a CPU overrides it: a rollout batch of 2 prompts x 4 samples x 32 tokens, bf16 master
    # weights (float32 AdamW state of 0.5B params alone is 5.9 GB), a learning rate that moves bf16 weights.
    grpo = ["-m", "jax_cat.train", "--config", RECIPE, "--out", str(run),
            "--set", f"model.path={base}", "--set", f"data.dataset={train}", "--set", f"eval.dataset={test}",
            "--set", "model.param_dtype=bfloat16", "--set", "optimizer.learning_rate=1e-3",
            "--set", "optimizer.warmup_steps=2",
            "--set", "data.batch_size=2", "--set", "rollout.group_size=4", "--set", "train.micro_batches=1",
            "--set", f"data.max_prompt_len={prompt_len}", "--set", f"rollout.max_new_tokens={new_tokens}",
            "--set", "train.steps=3", "--set", "checkpoint.keep=1",
            "--set", "eval.num_problems=4", "--set", "eval.n=4", "--set", "eval.ks=1,2,4",
            "--set", f"eval.max_new_tokens={new_tokens}"]
    sft_run = ["-m", "jax_cat.train", "--config", "sft", "--out", str(sft),
               "--set", f"model.path={base}", "--set", f"data.dataset={train}", "--set", f"eval.dataset={test}",
               "--set", "model.param_dtype=bfloat16", "--set", "model.compute_dtype=bfloat16",
               "--set", "model.scan_layers=true", "--set", "model.remat=true",
               "--set", "optimizer.learning_rate=1e-3", "--set", "optimizer.warmup_steps=0",
               "--set", "data.use_chat_template=true", "--set", "data.batch_size=4",
               "--set", f"data.max_prompt_len={prompt_len}", "--set", f"data.max_target_len={target_len}", "--set", "train.steps=2",
               "--set", "train.eval_at_end=false", "--set", "checkpoint.keep=1"]
    queries = out / "queries.txt"
    return [
        ("build checkpoint", [str(Path(__file__).resolve()), "build", "--out", str(out), "--shape", shape]),
        ("grpo 2 steps", grpo + ["--set", "train.stop_after=2"]),
        ("grpo --resume to 3", grpo + ["--resume", "--set", "train.stop_after=none"]),
        ("final/ in transformers", [str(Path(__file__).resolve()), "check", str(run / "final")]),
        ("evaluate final/", ["-m", "jax_cat.evaluate", "--model", str(run / "final"), "--dataset", str(test),
                             "--limit", "4", "--n", "4", "--k", "1,2,4", "--max-new-tokens", new_tokens,
                             "--dtype", "bfloat16", "--out", str(out / "eval")]),
        ("sft 2 steps", sft_run),
        ("merge (dots, 3 checkpoints)", ["-m", "merging.merge", "--base", str(base), "--models", str(sft / "final"),
                                         str(run / "final"), "--method", "dots", "--coefficients", "0.5", "0.5",
                                         "--density", "0.3", "--overwrite", "--out", str(out / "merged")]),
        ("merging.dots (2 trials)", ["-m", "merging.dots", "--base", str(base), "--sft", str(sft / "final"),
                                     "--rl", str(run / "final"), "--queries", str(queries), "--trials", "2",
                                     "--designer", "RANDOM_SEARCH", "--votes", "2", "--max-new-tokens", new_tokens,
                                     "--dtype", "bfloat16", "--no-progress", "--out", str(out / "dots")]),
    ]


def _rss_gib(stderr: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(match.group(1)) / 2**20 if match else None


def _child_rss_gib(pid: int) -> float:
    """Resident memory of the children of `pid` (the python under /usr/bin/time), from ps."""
    ps = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid)], capture_output=True, text=True)
    return sum(int(x) for x in ps.stdout.split()) / 2**20


def _run_capped(cmd: list[str], *, env: dict, max_rss_gib: float | None) -> subprocess.CompletedProcess:
    """subprocess.run with a memory cap: the command is killed (exit -9) when its RSS passes `max_rss_gib`, so a
    shared machine is not pushed into swap or the OOM killer."""
    with open(os.devnull) as devnull:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdin=devnull, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    import signal
    import threading

    chunks: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda s, k: chunks[k].append(s.read()), args=(stream, key), daemon=True)
               for stream, key in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for r in readers:
        r.start()
    while proc.poll() is None:
        if max_rss_gib is not None and _child_rss_gib(proc.pid) > max_rss_gib:
            os.killpg(proc.pid, signal.SIGKILL)  # /usr/bin/time and the python under it
            chunks["err"].append(f"\nreal_path: killed above --max-rss-gib {max_rss_gib}\n")
        time.sleep(2)
    for r in readers:
        r.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]))


def run_all(out: Path, *, shape: str, only: list[str] | None = None,
            max_rss_gib: float | None = None) -> list[dict[str, Any]]:
    """Runs every step as `python ARGV` under /usr/bin/time -v (stops at the first failure); returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    # unlabeled queries, one a line (a .jsonl of {"prompt"} alone is refused by merging.dots: a friction reported)
    (out / "queries.txt").write_text("".join(r["question"] + "\n" for r in gsm8k_rows(8, seed=3)))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    rows = []
    for name, argv in steps(out, shape=shape):
        if only and not any(o in name for o in only):
            continue
        start = time.perf_counter()
        proc = _run_capped(["/usr/bin/time", "-v", sys.executable, *argv], env=env, max_rss_gib=max_rss_gib)
        row = {"step": name, "seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": _rss_gib(proc.stderr),
               "rc": proc.returncode, "command": "python " + " ".join(argv)}
        rows.append(row)
        log = out / "logs" / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".log")
        log.parent.mkdir(exist_ok=True)
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        rss = f"{row['peak_rss_gib']:.2f}" if row["peak_rss_gib"] is not None else "?"
        print(f"{name}: rc {proc.returncode}, {row['seconds']} s, peak RSS {rss} GiB (log {log})", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            break
    (out / "real_path.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| step | wall s | peak RSS GiB | exit |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']:.0f} | {r['peak_rss_gib'] or float('nan'):.2f} | {r['rc']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="only build the checkpoint, tokenizer and data")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    c = sub.add_parser("check", help="transformers vs load_hf logits on a folder")
    c.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/real-path"))
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--only", nargs="*", help="run only the steps whose name contains one of these")
    p.add_argument("--max-rss-gib", type=float, default=None, help="kill a step whose memory passes this")
    args = p.parse_args(argv)
    if args.cmd == "build":
        build_data(args.out)
        build_checkpoint(args.out / "base", shape=args.shape)
        print(f"built {args.out / 'base'}, {args.out / 'gsm8k_train.jsonl'}, {args.out / 'gsm8k_test.jsonl'}")
        return 0
    if args.cmd == "check":
        print(json.dumps(check_logits(args.folder)))
        return 0
    rows = run_all(args.out, shape=args.shape, only=args.only, max_rss_gib=args.max_rss_gib)
    print(table(rows))
    return 0 if rows and all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
