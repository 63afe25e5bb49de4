"""`python -m jax_cat.train`: SFT and GRPO with CAT objectives on a device mesh.

    python -m jax_cat.train [--config PATH_OR_NAME] [--set KEY=VALUE ...] [--out DIR] [--resume | --overwrite]
                            [--compile-cache DIR | --no-compile-cache] [--debug]

Without --config it runs the default experiment (`jax_cat.training.default_run`, settings in configs/default.toml;
`--set` changes that recipe's keys) into runs/default or --out DIR. With --config it is one trainer run of a recipe:
the files of configs/ (`--config grpo_cat`; `--config sft_tiny`: a 100-step plain SFT) or any .toml/.json path;
`--set` overrides one key (`--set strategy=pass@8`). A bad key, value
or mesh is one line on stderr and exit status 2 before anything compiles; a non-finite loss stops the run with
exit status 1, keeping the last good checkpoint. A folder that holds a run is never replaced by accident (--resume
continues it with the same config, --overwrite replaces it), and one trainer at a time owns it. Multi-host: when the environment names a coordinator
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; or JAX_CAT_DISTRIBUTED=auto on a cluster JAX
detects), `jax.distributed` is
initialised first and each process reads its own data shard. Compiled programs are kept in XLA's persistent cache
(default ~/.cache/jax-cat/xla; jax_cat.io.compile_cache), so a run after the first skips the step compiles.
"""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jax_cat.cli import ArgumentParser, CLIError, quiet_third_party, run_cli, split_debug
from jax_cat.io import compile_cache


PROG = "python -m jax_cat.train"


def build_parser() -> ArgumentParser:
    """The trainer's command-line parser (recipe, --set overrides, run folder, resume): its flags and --help."""
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])  # adds --debug (tracebacks on errors)
    p.add_argument("--config", default=None, help="recipe file (.toml/.json) or name in configs/ (e.g. grpo_cat)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>; the default experiment: runs/default)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out (same "
                   "config, by default the run's own config.json; only the keys listed in docs/training.md may "
                   "change)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its config.json, "
                   "metrics, checkpoints, final/, eval/)")
    p.add_argument("--list", action="store_true", help="list the named recipes and exit")
    p.add_argument("--plan", nargs="?", const=0, type=int, default=None, metavar="DEVICES",
                   help="print the run's per-device memory plan (training step, rollouts) from the checkpoint's "
                        "config.json alone and exit; DEVICES: plan for that many (CPU devices are forced if needed)")
    compile_cache.add_flags(p)
    return p


def _several_processes() -> bool:
    """Whether the environment describes a multi-process run (then process 0 alone checks the run folder)."""
    return (os.environ.get("JAX_CAT_DISTRIBUTED") == "auto"
            or (bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1))


def _distributed_init() -> None:
    """jax.distributed.initialize() when the environment describes several processes (before any JAX use)."""
    if os.environ.get("JAX_CAT_DISTRIBUTED") == "auto":  # a cluster JAX detects by itself (SLURM, TPU pods, ...)
        import jax

        jax.distributed.initialize()
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
        import jax

        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )


def _train(argv: list[str]) -> int:
    """Parse, check the config and mesh before anything compiles, then run; bad input raises (see jax_cat.cli)."""
    args = build_parser().parse_args(argv)
    from jax_cat.training.config import check_mesh, load_config, recipe_names

    if args.list:
        print("\n".join(recipe_names()))
        return 0
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                       "--overwrite replaces it; pass one")
    if args.config is None and args.plan is None and not (
            args.resume and args.out and (Path(args.out) / "config.json").is_file()):
        # no --config: the default experiment (README's first command; configs/default.toml, --set changes its keys)
        # into runs/default or --out DIR (docs/training.md)
        from jax_cat.training import default_run

        compile_cache.enable_from_args(args, prog=PROG)
        return int(default_run.main(args) or 0)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "run")
    recipe = args.config
    if args.resume and recipe is None and (out / "config.json").is_file():
        recipe = str(out / "config.json")  # `--out DIR --resume [--set ...]`: the run's own settings
    elif recipe is None:  # --plan without --config: the default experiment's recipe
        from jax_cat.training.default_settings import DEFAULT_RECIPE

        recipe = DEFAULT_RECIPE
    cfg = load_config(recipe, args.overrides)  # ConfigError (a ValueError): one line, exit 2
    if args.plan is not None:  # before JAX starts: it may need N forced CPU devices; no weights are loaded
        from jax_cat.training import plan

        n = plan.devices_needed(cfg, args.plan)
        if n:
            plan.force_host_devices(n)
        plan.run_plan(cfg, devices=n, name=plan.recipe_name(args.config))
        return 0
    if not _several_processes():  # the run folder, before JAX starts (run() checks again under the owner lock)
        from jax_cat.training.run_folder import check_out_dir, check_run_folder

        check_out_dir(out)
        check_run_folder(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if args.resume and not (out / "checkpoints").is_dir():
        hint = "start without --resume" if not (out / "config.json").exists() else "start it over with --overwrite"
        raise CLIError(f"--resume: no checkpoints in {out}/checkpoints ({hint})")
    compile_cache.enable_from_args(args, prog=PROG)  # before anything compiles; not part of the run's config
    _distributed_init()
    import jax

    check_mesh(cfg, jax.device_count())

    from jax_cat.training.run import run
    from jax_cat.training.runtime import NonFiniteLoss

    try:
        summary = run(cfg, out=out, resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLoss as err:  # not bad input and not a bug: the run stopped, checkpoints kept; exit 1
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a full disk surfaces from the checkpoint library's own threads too
        if not _out_of_space(err):
            raise
        print(f"{PROG}: error: no space left on the device holding {out} (complete checkpoints are kept); "
              "free some space, then continue with --resume", file=sys.stderr)
        _ENDED_EARLY[:] = [True]  # the checkpoint library's threads may still complain at exit
        return 1
    except KeyboardInterrupt:
        saved = any(p.name.isdigit() for p in (out / "checkpoints").glob("*/*"))
        hint = "resume with --resume" if saved else "no checkpoint was written yet: start again with --overwrite"
        print(f"{PROG}: interrupted ({hint})", file=sys.stderr)
        _ENDED_EARLY[:] = [True]
        return 130
    if jax.process_index() == 0:
        _report(summary, out)
    return 0


def _out_of_space(err: BaseException | None) -> bool:
    """Whether `err` (or an exception it was raised from) is a full disk (ENOSPC)."""
    seen = 0
    while err is not None and seen < 10:
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


# Set when a run ended on a full disk or Ctrl-C after its one line: the checkpoints that could be written were
# waited for, and the checkpoint library's threads must not print tracebacks at interpreter exit.
_ENDED_EARLY: list[bool] = []


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status (bad input: one stderr line, exit 2; `--debug` adds the traceback).

    Run as a program (argv None: `python -m jax_cat.train`, the `jax-cat-train` script), a run that ended on a full
    disk or Ctrl-C leaves the process at once after its one line, skipping exit hooks."""
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = split_debug(argv)[1]
    quiet_third_party(debug=debug)
    status = run_cli(_train, argv, prog=PROG)
    if as_program and _ENDED_EARLY and not debug:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _report(summary: dict, out: Path) -> None:
    for name, result in summary["stages"].items():
        if result.history:
            last = result.history[-1]
            shown = {k: last[k] for k in ("loss", "reward", "pass@1") if k in last}
            print(f"{name}: {last['step']} steps; " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if summary["final"] is not None:
        print(f"final checkpoint: {summary['final']}")
    if summary["eval"] is not None:
        for metric, rows in summary["eval"]["metrics"].items():
            print(f"{metric:7s} " + "  ".join(f"k={k}: {m:.3f}" for k, m in zip(rows["k"], rows["mean"])))
        print(f"evaluation: {out / 'eval'}")
    print(f"metrics: {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    raise SystemExit(main())
