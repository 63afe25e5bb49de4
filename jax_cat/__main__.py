"""`python -m jax_cat`: the offline smoke job on the embedded default model.

Builds the tiny default checkpoint in the user cache (`$JAX_CAT_CACHE/tiny-default`, default
`~/.cache/jax-cat/tiny-default`) when missing (no network), loads it with `load_hf`, greedily completes a few
arithmetic prompts and prints them. The default model is untrained, so its answers are random: the job shows that
the load -> generate path works end to end. Bad input: one line on stderr, exit status 2 (`--debug` for the traceback).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from jax_cat.cli import ArgumentParser, CLIError, quiet_third_party, run_cli
from jax_cat.io import compile_cache
from jax_cat.models.tiny import DEFAULT_CHECKPOINT, default_checkpoint_dir

PROG = "python -m jax_cat"
PROMPTS = ("12+7=", "3*4=", "45-17=", "8+8+8=")

__all__ = ["DEFAULT_CHECKPOINT", "PROMPTS", "main", "parse_args"]


def parse_args(argv: list[str] | None = None):
    """The smoke job's arguments (`--checkpoint` defaults to None: the default tiny checkpoint)."""
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="HF-format checkpoint folder (default: the tiny one in the user cache, built offline)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the default tiny checkpoint")
    parser.add_argument("prompts", nargs="*", default=list(PROMPTS))
    compile_cache.add_flags(parser)
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}; pass e.g. --max-new-tokens 8")
    default = default_checkpoint_dir()
    ckpt = args.checkpoint if args.checkpoint is not None else default
    is_default = Path(ckpt).expanduser().resolve() == default.expanduser().resolve()
    if not is_default and not (ckpt / "config.json").is_file():
        what = "no such folder" if not ckpt.exists() else "no config.json in it"
        raise CLIError(
            f"--checkpoint {ckpt}: {what}; give an HF-format checkpoint folder, or leave --checkpoint out to use "
            f"the default tiny model"
        )
    if args.rebuild and not is_default:
        raise CLIError("--rebuild only rebuilds the default tiny checkpoint; drop --checkpoint or --rebuild")

    quiet_third_party()
    compile_cache.enable_from_args(args, prog=PROG)  # before generate compiles
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.models.tiny import build_tiny_checkpoint
    from jax_cat.sampling import generate

    start = time.perf_counter()
    if is_default and (args.rebuild or not (ckpt / "config.json").exists()):
        print(f"building the tiny default checkpoint in {ckpt} ...")
        build_tiny_checkpoint(ckpt)
    model = load_hf(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    c = model.config
    print(f"loaded {c.model_type} from {ckpt}: {model.num_params:,} params, {c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}")
    if is_default:
        print("(the default model is untrained: its completions are random until you train it)")
    completions = generate(model, tokenizer, list(args.prompts), max_new_tokens=args.max_new_tokens, temperature=0.0)
    for prompt, (completion, *_) in zip(args.prompts, completions):
        print(f"{prompt!r} -> {completion.text!r}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the smoke job; returns the process exit code (2 with one stderr line on bad input)."""
    return run_cli(_run, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
