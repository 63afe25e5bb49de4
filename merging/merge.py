"""`python -m merging.merge`: merge fine-tuned HF checkpoints into their base, tensor by tensor.

Example (DoTS: per-tensor top 30 %, one global L2 rescale per task vector, coefficients 0.5 / 0.5):

    python -m merging.merge --base BASE --models SFT RL --method dots --coefficients 0.5 0.5 --density 0.3 --out MERGED

Each option belongs to the methods that use it (see docs/merging.md); giving one to a method that does not use it
is an error, not silently ignored. The function behind it is `merging.stream.merge_checkpoints`; the methods are
`merging.methods` (a registry, one module per method).
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Sequence

from merging._cli import ArgumentParser, CLIError, run_cli
from merging.methods import DEFAULT_DENSITY, REGISTRY

PROG = "python -m merging.merge"
# CLI option dest -> the settings field it sets (one vocabulary: coefficients, rescale_scope, scale, ...)
_SETTINGS = {
    "coefficients": "coefficients", "density": "density", "topk_scope": "topk_scope", "tie_break": "tie_break",
    "rescale_scope": "rescale_scope", "norm": "norm", "seed": "seed", "dare_rescale": "rescale",
    "top_remove": "top_remove", "axis": "axis", "scale": "scale", "threshold": "threshold",
    "rescale_factor": "rescale_factor", "count_scope": "count_scope", "filter": "filter", "exclude": "exclude",
}


def build_parser() -> ArgumentParser:
    """The merge command-line parser (base, models, method and its settings, output): its flags and --help."""
    p = ArgumentParser(
        prog=PROG,
        description="Merge fine-tuned HF safetensors checkpoints into their base model, tensor by tensor "
        "(memory: a few tensors, not the model). See docs/merging.md for each method's exact rule.",
    )
    p.add_argument("--base", required=True, help="base checkpoint folder (the model the others were fine-tuned from)")
    p.add_argument("--models", required=True, nargs="+", help="fine-tuned checkpoint folders (e.g. SFT RL)")
    p.add_argument("--method", required=True, choices=tuple(REGISTRY))
    p.add_argument("--coefficients", "--coeffs", type=float, nargs="+",
                   help="one coefficient per model (default 1.0 each)")
    p.add_argument("--density", type=float, help=f"fraction of entries kept; defaults {DEFAULT_DENSITY} "
                   "(dare drops 1 - density)")
    p.add_argument("--topk-scope", choices=("tensor", "global"),
                   help="dots/ties: top-k per tensor (default; DoTS code, mergekit) or over the whole vector (TIES code)")
    p.add_argument("--tie-break", choices=("index", "keep_all"),
                   help="dots/ties: exactly k entries, ties by index (default), or keep every entry tied with the "
                   "k-th largest (the DoTS authors' keep_top_k_abs)")
    p.add_argument("--no-rescale", dest="rescale", action="store_false", default=None,
                   help="dots: no norm-preserving rescale (the authors' shipped configs)")
    p.add_argument("--rescale-scope", "--scope", choices=("tensor", "global"),
                   help="dots, dare --dare-rescale norm: one rescale factor per task vector (default) or per tensor")
    p.add_argument("--norm", choices=("l2", "l1", "linf"), help="norm kept by the rescale (default l2)")
    p.add_argument("--seed", type=int, help="dare: seed (model i uses seed + i; default 0)")
    p.add_argument("--dare-rescale", choices=("inverse", "norm"),
                   help="dare: survivors times 1/(1-p) (default, the paper) or rescaled to the original norm")
    p.add_argument("--top-remove", type=float, help="breadcrumbs: fraction of largest |x| per row dropped (0.01)")
    p.add_argument("--axis", choices=("last", "tensor"), help="breadcrumbs: band per row (default) or per tensor")
    p.add_argument("--scale", "--lam", type=float, help="ties: coefficient of the merged task vector (lambda, 1.0)")
    p.add_argument("--threshold", "--ram-threshold", type=float, help="ram: |tau| above this counts as changed (1e-5)")
    p.add_argument("--rescale-factor", "--ram-rescale", type=float,
                   help="ram_plus: factor r (default 1.2; ram: 1.0)")
    p.add_argument("--count-scope", "--ram-scope", choices=("tensor", "global"),
                   help="ram: overlap counts over the whole vector (default) or per tensor")
    p.add_argument("--filter", help="regex: only tensors whose name matches are merged (others keep the base)")
    p.add_argument("--exclude", help="regex: tensors whose name matches keep the base value (e.g. 'embed|lm_head')")
    p.add_argument("--dtype", choices=("base", "float32", "bfloat16", "float16"), default="base",
                   help="float dtype of the output (default: each tensor's dtype in the base). Merges are computed "
                   "in float32 and rounded once; a warning says when this dtype loses the update")
    p.add_argument("--block-size", default="32MiB",
                   help="tensors whose float32 copy is larger are merged in row blocks (default 32MiB; same result, "
                   "peak memory set by a block)")
    p.add_argument("--max-shard-size", default="5GiB", help="output shard size (default 5GiB; e.g. 2GB, 500MiB)")
    p.add_argument("--files-from", type=int, help="copy config/tokenizer files from models[i] instead of the base")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge weights holding NaN/Inf instead of refusing them (they are corruption)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder (written to <out>.tmp-<pid>-XXXX, then renamed)")
    return p


def settings_from_args(args) -> object:
    """The method's settings from the parsed options; an option the method does not use is a CLIError."""
    cls = REGISTRY[args.method]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for dest, field in {**_SETTINGS, "rescale": "rescale"}.items():
        value = getattr(args, dest)
        if value is None:
            continue
        applies = field in fields
        if field == "rescale":  # --no-rescale is DoTS's on/off, --dare-rescale DARE's kind of rescale
            applies = applies and (dest == "rescale") == (args.method == "dots")
        if not applies:
            flag = "--no-rescale" if dest == "rescale" else "--" + dest.replace("_", "-")
            raise CLIError(f"{flag} has no effect with --method {args.method}; drop it (docs/merging.md lists "
                           f"each method's settings)")
        kwargs[field] = tuple(value) if field == "coefficients" else value
    return cls(**kwargs)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.coefficients is not None and len(args.coefficients) != len(args.models):
        raise CLIError(f"{len(args.models)} --models but {len(args.coefficients)} --coefficients; give one "
                       f"coefficient per model (or none for 1.0 each)")
    spec = settings_from_args(args)
    from merging.stream import PrecisionWarning, merge_checkpoints  # imports JAX: after argument errors are reported

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrecisionWarning)
        out = merge_checkpoints(
            args.base, args.models, spec, args.out, max_shard_size=args.max_shard_size,
            copy_files_from=args.files_from, overwrite=args.overwrite, progress=not args.no_progress,
            allow_nonfinite=args.allow_nonfinite, dtype=args.dtype, block_size=args.block_size,
        )
    for w in caught:
        if issubclass(w.category, PrecisionWarning):
            print(f"{PROG}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"merged {len(args.models)} model(s) into {args.base} with {args.method} -> {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in process (bad input: one line on stderr, returns 2; --debug shows the traceback)."""
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
