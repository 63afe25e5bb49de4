"""`python -m merging.dots`: DoTS end to end -- pick the SFT and RL coefficients with no labels and no training.

    python -m merging.dots --base BASE --sft SFT --rl RL --queries QUERIES --trials 30 --out DIR [--resume]

Steps: (1) the task-vector analysis of tau_sft and tau_rl (analysis.json); (2) both vectors taken in float32 and
sparsified once (per-tensor top 30 % by default; `--rescale on` restores each vector's global L2 norm, off by
default as in every config the authors shipped); (3) query selection: each sparse vector applied alone scores
every query of the pool with 5 votes, difficulty = 1 - mean consistency, queries above 0.8 are dropped, 8 easy + 8
hard are drawn (queries.json); (4) a Vizier study over the coefficients (consistency maximised, perplexity
minimised; GP-bandit by default) whose sqlite datastore lives in DIR, so `--resume` continues it with no repeated
trial; (5) the Pareto front, the automatic pick (highest consistency within `--ppl-budget` of the base model's
perplexity, see `merging.search.pick`), the trial table (trials.csv, trials.json), pareto.png, summary.json, and the
picked model written tensor by tensor as an HF checkpoint (DIR/model). Nothing is written per trial except the
table. See docs/dots.md.

Every input is validated before anything is written into DIR (flags, checkpoint shapes, the queries, a resumed
study's files): a refused run leaves nothing behind. Errors follow `merging._cli` (the trainer's policy): one line on
stderr, exit 2 for bad input, 1 for a failure, 130 for Ctrl-C; `--debug` adds the traceback. One process owns DIR at a
time (`DIR.lock`). A run killed at any point (SIGKILL, Ctrl-C, full disk) resumes with `--resume`; see
docs/reliability.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from jax_cat.extras import pyplot, require
from merging._cli import ArgumentParser, CLIError, quiet_third_party, run_cli
from merging.queries import load_queries
from merging.search import DESIGNERS

PROG = "python -m merging.dots"
# Arguments that must not change between a run and its --resume (they define the study and its objectives).
STUDY_KEYS = ("base", "sft", "rl", "queries", "query_pool", "density", "topk_scope", "rescale", "search_density",
              "coeff_range", "designer", "perplexity", "votes", "vote_strategy", "temperature", "top_p",
              "max_new_tokens", "extract", "seed", "n_easy", "n_hard", "max_difficulty", "selection_votes", "dtype")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="DoTS: label-free multi-objective search of task-vector merge coefficients "
                "(consistency and perplexity on unlabeled queries, Vizier), then the picked merge as an HF checkpoint.")
    p.add_argument("--base", required=True, help="base HF checkpoint folder")
    p.add_argument("--sft", required=True, help="SFT checkpoint folder (fine-tuned from --base)")
    p.add_argument("--rl", required=True, help="RL checkpoint folder (fine-tuned from --base)")
    p.add_argument("--queries", required=True, help="unlabeled queries: a .txt file (one per line), a .json/.jsonl/"
                   ".parquet file or folder with a prompt/question/problem column, a hub dataset id, or arithmetic:PRESET")
    p.add_argument("--query-pool", type=int, default=128, help="how many queries of --queries enter the selection "
                   "(the first N; default 128)")
    p.add_argument("--trials", type=int, default=30, help="completed trials the study should have (default 30)")
    p.add_argument("--out", required=True, help="output folder (study, tables, plot, picked model)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out (same arguments)")
    p.add_argument("--designer", choices=DESIGNERS, default="GAUSSIAN_PROCESS_BANDIT", help="Vizier algorithm")
    p.add_argument("--density", type=float, default=0.3, help="fraction of each task vector kept (default 0.3)")
    p.add_argument("--topk-scope", choices=("tensor", "global"), default="tensor",
                   help="top-k per tensor (DoTS code, default) or over the whole task vector")
    p.add_argument("--rescale", choices=("on", "off"), default="off",
                   help="restore each sparse vector's global L2 norm (the authors' option; off in their configs)")
    p.add_argument("--search-density", type=float, nargs="+", metavar="D",
                   help="also search each vector's density among these values (discrete)")
    p.add_argument("--coeff-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LOW", "HIGH"),
                   help="range of both coefficients (default 0.5 2.0, the authors')")
    p.add_argument("--perplexity", choices=("prompt", "answer"), default="prompt",
                   help="the perplexity objective: of the query prompts (authors') or of the sampled answers; "
                   "both are recorded in the table")
    p.add_argument("--ppl-budget", type=float, default=0.1,
                   help="automatic pick: highest consistency with perplexity <= (1 + budget) x the base's")
    p.add_argument("--votes", type=int, default=7, help="samples per query in a trial (default 7)")
    p.add_argument("--vote-strategy", metavar="SPEC", help="score each query by a test-time strategy's chance of "
                   "landing on the pool's modal answer (e.g. maj@5, pass@2) instead of the modal share")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512, help="per sample (authors: 8192)")
    p.add_argument("--extract", choices=("auto", "boxed", "gsm8k", "answer_is", "number"), default="auto",
                   help="answer extraction (jax_cat.rewards.extract_answer style)")
    p.add_argument("--n-easy", type=int, default=8)
    p.add_argument("--n-hard", type=int, default=8)
    p.add_argument("--max-difficulty", type=float, default=0.8)
    p.add_argument("--selection-votes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every trial) and query draw")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype in memory")
    p.add_argument("--mesh", type=int, nargs=3, metavar=("DATA", "FSDP", "TENSOR"),
                   help="device mesh; default: every device on the data axis")
    p.add_argument("--batch-size", type=int, default=128, help="rows decoded together")
    p.add_argument("--max-shard-size", default="2GB", help="shard size of the written model")
    p.add_argument("--out-dtype", choices=("base", "float32", "bfloat16", "float16"), default="base",
                   help="float dtype of the written model (as merging.merge --dtype; default: the base's)")
    p.add_argument("--no-progress", action="store_true")
    return p


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    """Temp then rename (`merging.checkpoint.atomic_write_text`): the temporary is removed on every error path."""
    from merging.checkpoint import atomic_write_text

    atomic_write_text(path, text)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _records_table(records: Sequence[Any], front: set[int], picked: int | None) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = r.row()
        row["on_front"] = r.trial_id in front
        row["picked"] = r.trial_id == picked
        rows.append(row)
    return rows


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    """trials.json and trials.csv (atomic)."""
    _write_json(out / "trials.json", rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    _write_atomic(out / "trials.csv", buf.getvalue())


def plot_pareto(path: Path, records: Sequence[Any], front: set[int], picked: Any, reference: dict[str, float] | None,
                perplexity_label: str) -> None:
    """Consistency against perplexity of every trial; the front joined, the pick starred, the base marked."""
    plt = pyplot(feature="the Pareto plot")
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r.metrics["perplexity"] for r in records]
    ys = [r.metrics["consistency"] for r in records]
    ax.scatter(xs, ys, s=18, c=[r.trial_id for r in records], cmap="viridis", label="trials (colour: trial id)")
    fr = sorted((r for r in records if r.trial_id in front), key=lambda r: r.metrics["perplexity"])
    ax.plot([r.metrics["perplexity"] for r in fr], [r.metrics["consistency"] for r in fr], "r-o", ms=5, lw=1,
            mfc="none", label="Pareto front")
    if picked is not None:
        ax.plot(picked.metrics["perplexity"], picked.metrics["consistency"], "r*", ms=16, label="picked")
    if reference is not None:
        ax.plot(reference["perplexity"], reference["consistency"], "kx", ms=10, label="base model")
    ax.set_xlabel(f"{perplexity_label} perplexity (lower is better)")
    ax.set_ylabel("consistency (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from merging.checkpoint import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise CLIError(f"{name} must be a finite number, got {value}")
    return value


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag in its range, named in the message (`--query-pool -1` used to drop the last query)."""
    def at_least(flag: str, value: int, low: int, why: str = "") -> None:
        if value < low:
            raise CLIError(f"{flag} must be >= {low}{why}, got {value}")

    def within(flag: str, value: float, lo: float, hi: float, lo_open: bool = True) -> None:
        _finite(flag, value)
        if not ((lo < value) if lo_open else (lo <= value)) or value > hi:
            raise CLIError(f"{flag} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}")

    at_least("--query-pool", args.query_pool, 1)
    at_least("--trials", args.trials, 1)
    within("--density", args.density, 0, 1)
    for d in args.search_density or ():
        within("--search-density", d, 0, 1)
    lo, hi = (_finite("--coeff-range", v) for v in args.coeff_range)
    if not lo < hi:
        raise CLIError(f"--coeff-range LOW HIGH needs LOW < HIGH, got {lo:g} {hi:g}")
    if _finite("--ppl-budget", args.ppl_budget) < 0:
        raise CLIError(f"--ppl-budget must be >= 0, got {args.ppl_budget:g}")
    at_least("--votes", args.votes, 2, " (consistency over one sample is always 1)")
    at_least("--selection-votes", args.selection_votes, 2, " (difficulty from one sample is always 0)")
    if not _finite("--temperature", args.temperature) > 0:
        raise CLIError(f"--temperature must be > 0 (greedy samples all agree: consistency 1 for every trial), got "
                       f"{args.temperature:g}")
    within("--top-p", args.top_p, 0, 1)
    at_least("--max-new-tokens", args.max_new_tokens, 1)
    at_least("--n-easy", args.n_easy, 0)
    at_least("--n-hard", args.n_hard, 0)
    if args.n_easy + args.n_hard < 1:
        raise CLIError("--n-easy + --n-hard must be >= 1 (the queries each trial is scored on)")
    within("--max-difficulty", args.max_difficulty, 0, 1, lo_open=False)
    at_least("--seed", args.seed, 0)
    at_least("--batch-size", args.batch_size, 1)
    for axis, n in zip(("DATA", "FSDP", "TENSOR"), args.mesh or ()):
        at_least(f"--mesh {axis}", n, 1)
    from merging.checkpoint import parse_size

    try:
        parse_size(args.max_shard_size)
    except ValueError as err:
        raise CLIError(f"--max-shard-size: {err}") from None


def check_checkpoints(args: argparse.Namespace) -> None:
    """--base, --sft and --rl are readable safetensors checkpoints of one architecture (headers only: no weights
    are read): the same tensor names and shapes (a tied lm_head.weight may be missing on either side)."""
    from merging.checkpoint import CheckpointMismatchError

    from merging.adapters import open_checkpoint

    ckpts = {}
    for name in ("base", "sft", "rl"):
        path = Path(getattr(args, name))
        if not path.is_dir():
            raise FileNotFoundError(f"--{name}: no checkpoint folder {path}")
        try:  # --sft / --rl may be LoRA adapter folders (base + B.A.alpha/r)
            ckpts[name] = open_checkpoint(path, ckpts.get("base"))
        except (ValueError, OSError) as err:
            raise type(err)(f"--{name}: {err}") from None
    base = ckpts["base"].info
    for name in ("sft", "rl"):
        info = ckpts[name].info
        for tensor in sorted(set(base) & set(info)):
            if base[tensor].shape != info[tensor].shape:
                raise CheckpointMismatchError(
                    f"--{name} {args.__dict__[name]} is not a fine-tune of --base: tensor {tensor!r} has shape "
                    f"{info[tensor].shape} there and {base[tensor].shape} in the base")
        missing = sorted((set(base) ^ set(info)) - {"lm_head.weight"})
        if missing:
            where = "--base" if missing[0] in info else f"--{name}"
            raise CheckpointMismatchError(
                f"--{name} {args.__dict__[name]} is not a fine-tune of --base: tensor {missing[0]!r} is missing in "
                f"{where} ({len(missing)} tensor name(s) differ)")


def _read_json(path: Path, what: str, kind: type = dict) -> Any:
    """A JSON file the run wrote earlier; a damaged one is bad input naming the file and what to do."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({' '.join(str(err).split())[:100]}); {what}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} is damaged (a JSON {type(value).__name__}, not a {kind.__name__}); {what}")
    return value


def _check_database(db: Path) -> None:
    """vizier.db opens as a SQLite database (read only: nothing is created or changed)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            con.execute("select count(*) from sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ValueError(f"{db} is not a readable Vizier study database ({err}); move it aside to start the search "
                         f"afresh (trials.json beside it lists the completed trials), or restore it from a backup") \
            from None


def check_out(args: argparse.Namespace, out: Path, record: dict[str, Any], queries: list[str]) -> None:
    """--out can be written and, with --resume, holds the same study with intact files (read only)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot write in {probe} (read-only file system or no permission); "
                              f"choose another --out")
    if not (out.exists() and any(out.iterdir())):
        return
    if not args.resume:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --resume to continue its study, or "
                              f"choose another --out)")
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = _read_json(cfg_path, "restore it, or start again in another --out")
        changed = [k for k in STUDY_KEYS if json.dumps(old.get(k)) != json.dumps(record.get(k))]
        if changed:
            k = changed[0]
            raise ValueError(f"--resume: --{k.replace('_', '-')} was {old.get(k)!r} in {out}, now "
                             f"{record.get(k)!r} ({len(changed)} setting(s) differ); resume with the same arguments "
                             f"or choose another --out")
    redo = "remove it and --resume to compute it again"
    for name in ("analysis.json", "reference.json"):
        if (out / name).exists():
            _read_json(out / name, redo)
    if (out / "queries.json").exists():
        q = _read_json(out / "queries.json", redo)
        sel = q.get("selected")
        if not (isinstance(sel, list) and sel and all(isinstance(i, int) and 0 <= i < len(queries) for i in sel)):
            raise ValueError(f"{out / 'queries.json'} is damaged (its 'selected' indices do not fit the "
                             f"{len(queries)} queries of --queries); {redo}")
    if (out / "vizier.db").exists():
        _check_database(out / "vizier.db")


def validate(args: argparse.Namespace) -> list[str]:
    """Check every input before anything is written (flags, strategy, mesh, checkpoints, queries, --out); return
    the query pool."""
    check_flags(args)
    if args.vote_strategy:
        from jax_cat.losses import strategy_from_spec

        strategy = strategy_from_spec(args.vote_strategy)
        if getattr(strategy, "n", 0) > args.votes:
            raise CLIError(f"--vote-strategy {args.vote_strategy} needs {strategy.n} samples but --votes is "
                           f"{args.votes}")
    if args.mesh:
        import jax

        need, have = math.prod(args.mesh), len(jax.devices())
        if need > have:
            raise CLIError(f"--mesh {' '.join(map(str, args.mesh))} needs {need} devices, {have} available")
    check_checkpoints(args)
    queries = load_queries(args.queries, args.query_pool)
    record = _record_args(args)
    check_out(args, Path(args.out), record, queries)
    return queries


def _record_args(args: argparse.Namespace) -> dict[str, Any]:
    record = {k: getattr(args, k) for k in STUDY_KEYS}
    record["coeff_range"] = list(args.coeff_range)
    return record


_TMP = re.compile(r"(?:\.(?P<a>.+)\.tmp-(?P<pa>\d+)(?:\.\w+)?|(?P<b>.+)\.tmp-(?P<pb>\d+)-[0-9a-f]+)")


def clean_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporaries (`<name>.tmp-<pid>-<hex>`, and the older `.<name>.tmp-<pid>`) of killed runs from --out:
    only those whose process is gone."""
    from merging.checkpoint import _pid_alive

    removed = []
    for p in out.iterdir() if out.is_dir() else ():
        m = _TMP.fullmatch(p.name)
        if m and p.is_file():
            pid = int(m.group("pa") or m.group("pb"))
            if pid != os.getpid() and not _pid_alive(pid):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def run(args: argparse.Namespace) -> int:
    """Validate everything, then own --out (lock) and run the pipeline; a refused or failed fresh run leaves no
    --out behind (an interrupted one stays, for --resume)."""
    from merging.checkpoint import output_lock

    require("vizier.service.clients", feature="python -m merging.dots (the coefficient search)")
    queries = validate(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        check_out(args, out, _record_args(args), queries)  # again, now that we own it
        created = not out.exists()
        fresh = created or not any(out.iterdir())
        clean_stale_temporaries(out)
        try:
            return _pipeline(args, out, queries)
        except BaseException as err:
            if fresh and not isinstance(err, KeyboardInterrupt) and not (out / "trials.json").exists():
                _remove_run(out, keep_folder=not created)  # ours (this run made it, under our lock), nothing done
            raise


def _remove_run(out: Path, keep_folder: bool) -> None:
    import shutil

    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for p in out.iterdir() if out.is_dir() else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _pipeline(args: argparse.Namespace, out: Path, queries: list[str]) -> int:
    record = _record_args(args)
    from merging.objectives import ObjectiveConfig

    strategy = None
    if args.vote_strategy:
        from jax_cat.losses import strategy_from_spec

        strategy = strategy_from_spec(args.vote_strategy)
    objective_cfg = ObjectiveConfig(votes=args.votes, temperature=args.temperature, top_p=args.top_p,
                                    max_new_tokens=args.max_new_tokens, extract=args.extract, seed=args.seed,
                                    batch_size=args.batch_size, strategy=strategy)
    from merging.search import Metric, SearchSpace

    lo, hi = args.coeff_range
    densities = {n: tuple(args.search_density) for n in ("sft", "rl")} if args.search_density else {}
    space = SearchSpace({"sft": (lo, hi), "rl": (lo, hi)}, densities)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", record)
    log = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # (1) analysis, tensor by tensor
    import jax
    import jax.numpy as jnp

    from merging import analyze_checkpoints

    if not (out / "analysis.json").exists():
        cmp = analyze_checkpoints(args.base, args.sft, args.rl, top_fraction=args.density,
                                  progress=not args.no_progress)
        _write_json(out / "analysis.json", cmp.summary())
        log(cmp.table())

    # (2) models, task vectors, sparsification (once per density)
    from flax import nnx
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.sharding import make_mesh
    from merging import Rescale, task_vector, topk
    from merging.objectives import (
        Candidates, chat_prompt_ids, evaluate_candidate, query_difficulty, select_queries,
    )

    if args.mesh:
        d, f, t = args.mesh
        mesh = make_mesh(d, f, t, devices=jax.devices()[: d * f * t])
    else:
        mesh = make_mesh()
    dtype = jnp.dtype(args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    base_model = load_hf(args.base, dtype=dtype, mesh=mesh)
    base_state = nnx.state(base_model)
    taus = []
    for name in ("sft", "rl"):
        ft = load_hf(getattr(args, name), dtype=dtype, mesh=mesh)
        taus.append(task_vector(nnx.state(ft), base_state, dtype=jnp.float32))
        del ft
    rescale = Rescale("l2", "global") if args.rescale == "on" else None
    cache: dict[tuple[int, float], Any] = {}

    def sparse(i: int, density: float) -> Any:
        if (i, density) not in cache:
            cache[(i, density)] = topk(taus[i], density, scope=args.topk_scope, rescale=rescale)
        return cache[(i, density)]

    candidates = Candidates(base_model, [sparse(0, args.density), sparse(1, args.density)])
    pool_ids = chat_prompt_ids(tokenizer, queries)

    # (3) query selection (cached in queries.json)
    qpath = out / "queries.json"
    if qpath.exists():
        chosen = _read_json(qpath, "remove it and --resume to compute it again")["selected"]
    else:
        n_draw = args.n_easy + args.n_hard
        difficulty = None
        if len(queries) > n_draw:
            sel_cfg = replace(objective_cfg, votes=args.selection_votes, strategy=None)
            log(f"query selection: scoring {len(queries)} queries with each sparse vector alone "
                f"({args.selection_votes} votes)")
            per_model = [evaluate_candidate(candidates.single(i), tokenizer, pool_ids, sel_cfg, mesh=mesh).per_query
                         for i in range(2)]
            difficulty = query_difficulty(per_model)
            try:
                chosen = select_queries(difficulty, n_easy=args.n_easy, n_hard=args.n_hard,
                                        max_difficulty=args.max_difficulty, seed=args.seed)
            except ValueError as err:  # name the flag that lets the run go on
                raise ValueError(f"{err}; raise --max-difficulty (e.g. 1.0) or give easier --queries") from None
        else:
            chosen = list(range(len(queries)))
        _write_json(qpath, {"selected": chosen, "queries": [queries[i] for i in chosen],
                            "difficulty": None if difficulty is None else difficulty.tolist(),
                            "pool_size": len(queries)})
    prompt_ids = [pool_ids[i] for i in chosen]

    # reference: the base model on the same queries and draws (cached)
    rpath = out / "reference.json"
    if rpath.exists():
        reference = _read_json(rpath, "remove it and --resume to compute it again")
    else:
        scores = evaluate_candidate(candidates.model([0.0, 0.0]), tokenizer, prompt_ids, objective_cfg, mesh=mesh)
        reference = scores.metrics()
        reference["perplexity"] = reference[f"{args.perplexity}_perplexity"]
        _write_json(rpath, reference)

    # (4) the search
    from merging.search import pareto_front, pick, run_search

    def objective(params: dict[str, float]) -> dict[str, float]:
        ds = [params.get(f"density_{n}", args.density) for n in ("sft", "rl")]
        model = candidates.model([params["sft"], params["rl"]], [sparse(i, d) for i, d in enumerate(ds)])
        metrics = evaluate_candidate(model, tokenizer, prompt_ids, objective_cfg, mesh=mesh).metrics()
        metrics["perplexity"] = metrics[f"{args.perplexity}_perplexity"]
        return metrics

    def choose(records: Sequence[Any]) -> tuple[set[int], Any]:
        pts = [[r.metrics["consistency"], r.metrics["perplexity"]] for r in records]
        front = {records[i].trial_id for i in pareto_front(pts, ("max", "min"))} if records else set()
        return front, pick(records, reference_perplexity=reference["perplexity"], budget=args.ppl_budget)

    from tqdm.auto import tqdm

    bar = tqdm(total=args.trials, desc="trials", unit="trial", disable=True if args.no_progress else None)

    def on_trial(rec: Any, records: list[Any]) -> None:
        front, best = choose(records)
        write_tables(out, _records_table(records, front, best.trial_id if best else None))
        bar.n = min(len(records), args.trials)
        if best is not None:
            bar.set_postfix_str(f"pick #{best.trial_id}: sft={best.parameters['sft']:.2f} "
                                f"rl={best.parameters['rl']:.2f} cons={best.metrics['consistency']:.3f} "
                                f"ppl={best.metrics['perplexity']:.3g}")
        bar.refresh()

    metrics = [Metric("consistency", "max"), Metric("perplexity", "min")]
    start = time.perf_counter()
    records = run_search(objective, space, metrics, num_trials=args.trials, db_path=out / "vizier.db",
                         study_id="dots", designer=args.designer, on_trial=on_trial, seed=args.seed)
    bar.close()
    if not records:
        raise RuntimeError("the study has no completed feasible trial")
    front, best = choose(records)
    write_tables(out, _records_table(records, front, best.trial_id))
    plot_pareto(out / "pareto.png", records, front, best, reference, args.perplexity)

    # (5) the picked model, tensor by tensor
    picked_d = [best.parameters.get(f"density_{n}", args.density) for n in ("sft", "rl")]
    model_dir = out / "model"
    coeffs = (best.parameters["sft"], best.parameters["rl"])
    if picked_d[0] == picked_d[1]:
        from merging import MergeSpec, merge_checkpoints

        # rescale off = a per-tensor L-inf "rescale": top-k always keeps a tensor's largest |x|, so its factor is
        # exactly 1 (tests/merging/test_dots_cli.py checks the written model equals the searched candidate).
        norm, scope = ("l2", "global") if args.rescale == "on" else ("linf", "tensor")
        spec = MergeSpec("dots", coeffs=coeffs, density=picked_d[0], topk_scope=args.topk_scope, norm=norm,
                         scope=scope)
        merge_checkpoints(args.base, [args.sft, args.rl], spec, model_dir, max_shard_size=args.max_shard_size,
                          overwrite=True, progress=not args.no_progress, dtype=args.out_dtype)
        how = "streamed merge"
    else:  # two densities: not one MergeSpec; write the in-memory candidate (the very weights that were scored)
        from jax_cat.models import save_hf
        from merging.stream import parse_size

        save_hf(candidates.model(list(coeffs), [sparse(i, d) for i, d in enumerate(picked_d)]), model_dir,
                tokenizer=args.base, max_shard_bytes=parse_size(args.max_shard_size))
        how = "in-memory candidate"
    summary = {
        "picked": best.row(), "densities": picked_d, "rescale": args.rescale, "topk_scope": args.topk_scope,
        "reference_base_model": reference, "ppl_budget": args.ppl_budget, "perplexity_objective": args.perplexity,
        "front": [r.row() for r in records if r.trial_id in front], "num_trials": len(records),
        "designer": args.designer, "search_seconds": time.perf_counter() - start, "model": str(model_dir),
        "model_written_by": how,
    }
    _write_json(out / "summary.json", summary)
    print(f"picked trial {best.trial_id}: sft={coeffs[0]:.4f} rl={coeffs[1]:.4f} density={picked_d} "
          f"consistency={best.metrics['consistency']:.4f} perplexity={best.metrics['perplexity']:.4g} "
          f"(base: {reference['consistency']:.4f}, {reference['perplexity']:.4g}); "
          f"{len(front)} on the front of {len(records)} trials -> {model_dir}")
    return 0


def _main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in process through `merging._cli.run_cli`: one line on stderr and exit 2 (bad input), 1 (failure)
    or 130 (Ctrl-C); `--debug` prints the traceback first; third-party logging quiet unless --debug."""
    quiet_third_party()
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
