"""Peak resident memory of `python -m merging.dots` on checkpoints of a Qwen2.5 shape, optionally cut in depth.

Builds (once, under --work) a random base of the shape with scripts/real_path.py's `build_checkpoint` (transformers,
bf16, tied embeddings, the offline BPE tokenizer and chat template), two "fine-tunes" (base + N(0, 0.02) on every
entry for sft, on 10 % of them for rl, saved by transformers) and a query file, then runs merging.dots under
`/usr/bin/time -v` (pinned with taskset when --cpus is given) and reports its "Maximum resident set size". --repo
runs the merging.dots of another checkout (e.g. a worktree of an older commit) on the same files, for a before /
after comparison in one session.

    python benchmarks/dots_memory.py --layers 4 --work /tmp/dots-mem --cpus 0 --json R.jsonl
    python benchmarks/dots_memory.py --layers 4 --work /tmp/dots-mem --cpus 0 --repo /tmp/old-checkout --json R.jsonl
    python benchmarks/dots_memory.py --work /tmp/dots-mem-full --cpus 0                     # the whole 0.5B shape
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
           "Ana reads 12 pages a day. How many pages in 3 days?",
           "Li had 20 coins and gave away 7. How many are left?",
           "Sara packs 5 boxes of 6 pencils. How many pencils?"]


def _real_path():
    spec = importlib.util.spec_from_file_location("real_path", ROOT / "scripts" / "real_path.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(work: Path, layers: int | None) -> dict[str, Path]:
    """base / sft / rl checkpoints of the 0.5B shape (cut to `layers`) and a query file under `work` (once)."""
    import torch
    import transformers

    paths = {n: work / n for n in ("base", "sft", "rl")}
    paths["queries"] = work / "queries.txt"
    if all((p / "config.json").exists() for n, p in paths.items() if n != "queries"):
        return paths
    rp = _real_path()
    shape = "qwen2.5-0.5b"
    if layers is not None:
        rp.SHAPES["cut"] = dict(rp.SHAPES[shape], num_hidden_layers=layers)
        shape = "cut"
    rp.build_checkpoint(paths["base"], shape=shape)
    model = transformers.AutoModelForCausalLM.from_pretrained(paths["base"], torch_dtype=torch.bfloat16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    for name, frac in (("sft", 1.0), ("rl", 0.1)):
        with torch.no_grad():
            for key, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen) * 0.02
                keep = (torch.rand(param.shape, generator=gen) < frac).float()
                param.copy_(state[key] + (noise * keep).to(param.dtype))
        model.save_pretrained(paths[name])
        for f in paths["base"].iterdir():  # tokenizer and generation config beside the weights
            if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "vocab", "merges")):
                (paths[name] / f.name).write_bytes(f.read_bytes())
    paths["queries"].write_text("\n".join(QUERIES) + "\n")
    return paths


def run(paths: dict[str, Path], out: Path, *, repo: Path, cpus: str | None, trials: int) -> dict:
    """merging.dots (RANDOM_SEARCH, seeded) under /usr/bin/time -v; its peak RSS, wall and CPU seconds."""
    cmd = [sys.executable, "-m", "merging.dots", "--base", str(paths["base"]), "--sft", str(paths["sft"]),
           "--rl", str(paths["rl"]), "--queries", str(paths["queries"]), "--trials", str(trials),
           "--designer", "RANDOM_SEARCH", "--seed", "0", "--votes", "2", "--max-new-tokens", "8",
           "--dtype", "bfloat16", "--no-progress", "--out", str(out)]
    shutil.rmtree(out, ignore_errors=True)  # a fresh study each time
    prefix = ["/usr/bin/time", "-v"] + (["taskset", "-c", cpus] if cpus else [])
    env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    proc = subprocess.run(prefix + cmd, capture_output=True, text=True, cwd=repo, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"merging.dots failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    field = lambda pat: float(re.search(pat, proc.stderr).group(1))  # noqa: E731
    return dict(peak_rss_gib=field(r"Maximum resident set size \(kbytes\): (\d+)") / 2**20,
                user_s=field(r"User time \(seconds\): ([\d.]+)"), sys_s=field(r"System time \(seconds\): ([\d.]+)"),
                wall_s=round(wall, 1), command=" ".join(prefix + cmd))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--layers", type=int, default=None, help="cut the 0.5B shape to this many layers")
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose merging.dots runs (default: this one)")
    p.add_argument("--cpus", default=None, help="taskset -c CPUS for the run")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="append the result as a JSON line here")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import cpu_info, git_commit, library_versions

    paths = build(args.work, args.layers)
    sizes = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors"))
    result = run(paths, args.work / "dots", repo=args.repo.resolve(), cpus=args.cpus, trials=args.trials)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.repo, capture_output=True, text=True).stdout.strip()
    result.update(layers=args.layers, checkpoint_gib=sizes / 2**30, repo_commit=commit[:12], trials=args.trials,
                  load_avg=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  context=dict(**git_commit(), cpu=cpu_info(), libraries=library_versions()))
    print(f"merging.dots at commit {result['repo_commit']}: peak RSS {result['peak_rss_gib']:.2f} GiB, "
          f"{result['user_s'] + result['sys_s']:.0f} CPU s, {result['wall_s']:.0f} s wall "
          f"(checkpoint {result['checkpoint_gib']:.2f} GiB, load average {result['load_avg']:.1f})")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
