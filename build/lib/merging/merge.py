"""`python -m merging.merge`: merge fine-tuned HF checkpoints into their base, tensor by tensor.

Example (DoTS: per-tensor top 30 %, one global L2 rescale per task vector, coefficients 0.5 / 0.5):

    python -m merging.merge --base BASE --models SFT RL --method dots --coeffs 0.5 0.5 --density 0.3 --out MERGED
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from merging.methods import DEFAULT_DENSITY, METHODS, MergeSpec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m merging.merge",
        description="Merge fine-tuned HF safetensors checkpoints into their base model, tensor by tensor "
        "(memory: a few tensors, not the model). See docs/merging.md for each method's exact rule.",
    )
    p.add_argument("--base", required=True, help="base checkpoint folder (the model the others were fine-tuned from)")
    p.add_argument("--models", required=True, nargs="+", help="fine-tuned checkpoint folders (e.g. SFT RL)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--coeffs", type=float, nargs="+", help="one coefficient per model (default 1.0 each)")
    p.add_argument("--density", type=float, help=f"fraction of entries kept; defaults {DEFAULT_DENSITY} "
                   "(dare drops 1 - density)")
    p.add_argument("--scope", choices=("tensor", "global"), default="global",
                   help="norm-preserving rescale: one factor per tensor or per task vector (dots; dare --dare-rescale norm)")
    p.add_argument("--topk-scope", choices=("tensor", "global"), default="tensor",
                   help="top-k threshold per tensor (DoTS code, mergekit TIES) or over the whole vector (TIES code)")
    p.add_argument("--norm", choices=("l2", "l1", "linf"), default="l2", help="norm preserved by the rescale")
    p.add_argument("--seed", type=int, default=0, help="DARE seed (model i uses seed + i)")
    p.add_argument("--dare-rescale", choices=("inverse", "norm"), default="inverse",
                   help="DARE survivors times 1/(1-p) (paper) or rescaled to the original norm")
    p.add_argument("--top-remove", type=float, default=0.01, help="breadcrumbs: fraction of largest |x| per row dropped")
    p.add_argument("--lam", type=float, default=1.0, help="TIES: scale of the merged task vector")
    p.add_argument("--ram-threshold", type=float, default=1e-5, help="RAM: |tau| above this counts as changed")
    p.add_argument("--ram-rescale", type=float, help="RAM+ factor r (default 1.2 for ram_plus, 1.0 for ram)")
    p.add_argument("--ram-scope", choices=("tensor", "global"), default="global", help="RAM+ overlap counts scope")
    p.add_argument("--filter", help="regex: only tensors whose name matches are merged (others keep the base)")
    p.add_argument("--exclude", help="regex: tensors whose name matches keep the base value (e.g. 'embed|lm_head')")
    p.add_argument("--max-shard-size", default="2GB", help="output shard size (e.g. 2GB, 500MiB)")
    p.add_argument("--files-from", type=int, help="copy config/tokenizer files from models[i] instead of the base")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output folder (written to <out>.tmp-XXXX, then renamed)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from merging.stream import merge_checkpoints  # imports JAX: after argument errors are reported

    spec = MergeSpec(
        method=args.method,
        coeffs=tuple(args.coeffs) if args.coeffs else None,
        density=args.density,
        scope=args.scope,
        topk_scope=args.topk_scope,
        norm=args.norm,
        seed=args.seed,
        dare_rescale=args.dare_rescale,
        top_remove=args.top_remove,
        lam=args.lam,
        ram_threshold=args.ram_threshold,
        ram_rescale=args.ram_rescale,
        ram_scope=args.ram_scope,
        filter=args.filter,
        exclude=args.exclude,
    )
    start = time.perf_counter()
    out = merge_checkpoints(
        args.base, args.models, spec, args.out, max_shard_size=args.max_shard_size,
        copy_files_from=args.files_from, overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"merged {len(args.models)} model(s) into {args.base} with {args.method} -> {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
