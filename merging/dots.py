"""`python -m merging.dots`: DoTS end to end -- pick the SFT and RL coefficients with no labels and no training.

    python -m merging.dots --base BASE --sft SFT --rl RL --queries QUERIES --trials 30 --out DIR [--resume]

The command line of `merging.dots_run.run_dots`: flags -> `merging.dots_config.DotsConfig` (one field per flag,
`--query-pool` is `query_pool`) -> `run_dots(config, base=, sft=, rl=, queries=, out=)` -> one summary line on
stdout. What the run does and writes: `merging.dots_run` and docs/dots.md.

Errors follow `jax_cat.io.cli` (every CLI's policy): one line on stderr, exit 2 for bad input, 1 for a failure, 130
for Ctrl-C; `--debug` prints the traceback first. Every input is validated before anything is written into DIR;
one process owns DIR at a time (`DIR.lock`); a run killed at any point resumes with `--resume`
(docs/reliability.md).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jax_cat.io.cli import ArgumentParser, quiet_third_party, run_cli, split_debug
from merging.dots_config import EXTRACT_STYLES, STUDY_KEYS, DotsConfig
from merging.search import DESIGNERS

__all__ = ["PROG", "STUDY_KEYS", "build_parser", "config_from_args", "main", "run"]

PROG = "python -m merging.dots"


def build_parser() -> argparse.ArgumentParser:
    """The DoTS command-line parser (checkpoints, queries, search and output settings): its flags and --help."""
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
    p.add_argument("--extract", choices=EXTRACT_STYLES, default="auto",
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


def config_from_args(args: argparse.Namespace) -> DotsConfig:
    """The `DotsConfig` the parsed flags set (ValueError naming the flag when one is out of range)."""
    return DotsConfig(
        trials=args.trials, resume=args.resume, query_pool=args.query_pool, designer=args.designer,
        density=args.density, topk_scope=args.topk_scope, rescale=args.rescale == "on",
        search_density=tuple(args.search_density or ()), coeff_range=tuple(args.coeff_range),
        perplexity=args.perplexity, ppl_budget=args.ppl_budget, votes=args.votes, vote_strategy=args.vote_strategy,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, extract=args.extract,
        n_easy=args.n_easy, n_hard=args.n_hard, max_difficulty=args.max_difficulty,
        selection_votes=args.selection_votes, seed=args.seed, dtype=args.dtype,
        mesh=None if args.mesh is None else tuple(args.mesh), batch_size=args.batch_size,
        max_shard_size=args.max_shard_size, out_dtype=args.out_dtype, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """flags -> config -> `run_dots`; prints the pick on stdout and returns 0."""
    config = config_from_args(args)
    # The pipeline (JAX models, the sampler) is imported once the flags are known to be good, inside
    # the error policy and after quiet_third_party().
    from merging.dots_run import run_dots

    result = run_dots(config, base=args.base, sft=args.sft, rl=args.rl, queries=args.queries, out=args.out)
    m, ref = result.metrics, result.reference
    print(f"picked trial {result.trial}: sft={result.coefficients[0]:.4f} rl={result.coefficients[1]:.4f} "
          f"density={list(result.densities)} consistency={m['consistency']:.4f} perplexity={m['perplexity']:.4g} "
          f"(base: {ref['consistency']:.4f}, {ref['perplexity']:.4g}); "
          f"{len(result.front)} on the front of {result.num_trials} trials -> {result.model}")
    return 0


def _main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in process through `jax_cat.io.cli.run_cli`: one line on stderr and exit 2 (bad input), 1
    (failure) or 130 (Ctrl-C); `--debug` prints the traceback first; third-party logging quiet unless --debug."""
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_third_party(debug=split_debug(argv)[1])
    return run_cli(_main, argv, prog=PROG)


# Old homes of helpers that moved with the pipeline: `merging.dots.write_tables` etc. keep working (imported on use,
# so importing this CLI stays light).
_MOVED = {"write_tables": "merging.dots_run", "plot_pareto": "merging.dots_run", "run_dots": "merging.dots_run",
          "DotsResult": "merging.dots_run", "clean_stale_temporaries": "jax_cat.io.atomic"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
