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

Bad input (missing checkpoint, unreadable queries, an existing DIR without --resume, a study that does not match)
prints one line on stderr and exits with status 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from merging.search import DESIGNERS

PROG = "python -m merging.dots"
# Arguments that must not change between a run and its --resume (they define the study and its objectives).
STUDY_KEYS = ("base", "sft", "rl", "queries", "query_pool", "density", "topk_scope", "rescale", "search_density",
              "coeff_range", "designer", "perplexity", "votes", "vote_strategy", "temperature", "top_p",
              "max_new_tokens", "extract", "seed", "n_easy", "n_hard", "max_difficulty", "selection_votes", "dtype")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's convention too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="DoTS: label-free multi-objective search of task-vector merge coefficients "
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
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return p


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def load_queries(source: str, limit: int | None = None) -> list[str]:
    """Query texts from a .txt file (one per non-empty line) or anything `jax_cat.data.load_prompt_dataset` reads
    (json/jsonl/parquet, hub ids, arithmetic:PRESET); answers, when the source has them, are never read."""
    path = Path(source).expanduser()
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"--queries: no file {path}")
        queries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        if path.suffix in (".json", ".jsonl", ".parquet") and not path.exists():
            raise FileNotFoundError(f"--queries: no file {path}")
        from jax_cat.data import load_prompt_dataset

        try:
            records = load_prompt_dataset(source, limit=limit)
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"--queries {source!r}: {err}") from err
        queries = [str(r["prompt"]) for r in records]
    queries = queries[:limit] if limit is not None else queries
    if not queries:
        raise ValueError(f"--queries {source!r} holds no queries")
    return queries


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
def _check_out(args: argparse.Namespace, out: Path, record: dict[str, Any]) -> None:
    cfg_path = out / "config.json"
    if out.exists() and any(out.iterdir()):
        if not args.resume:
            raise FileExistsError(f"--out {out} exists and is not empty (pass --resume to continue its study)")
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            changed = [k for k in STUDY_KEYS if json.dumps(old.get(k)) != json.dumps(record.get(k))]
            if changed:
                k = changed[0]
                raise ValueError(f"--resume: --{k.replace('_', '-')} was {old.get(k)!r} in {out}, now "
                                 f"{record.get(k)!r} ({len(changed)} setting(s) differ)")
    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    if not 0 < args.density <= 1:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    for name in ("base", "sft", "rl"):
        if not Path(getattr(args, name)).is_dir():
            raise FileNotFoundError(f"--{name}: no checkpoint folder {getattr(args, name)}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    record = {k: getattr(args, k) for k in STUDY_KEYS}
    record["coeff_range"] = list(args.coeff_range)
    _check_out(args, out, record)
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
    queries = load_queries(args.queries, args.query_pool)
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
        chosen = json.loads(qpath.read_text())["selected"]
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
        reference = json.loads(rpath.read_text())
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
                         study_id="dots", designer=args.designer, on_trial=on_trial)
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
                          overwrite=True, progress=not args.no_progress)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from merging.search import StudyMismatchError  # noqa: F401  (a ValueError)

    try:
        return run(args)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        if args.debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
