"""`python -m jax_cat`: the offline smoke job on the embedded default model.

Builds the tiny default checkpoint under artifacts/tiny-default/ when missing (no network), loads it with
`load_hf`, greedily completes a few arithmetic prompts and prints them. The model is random until trained, so the
answers are gibberish: the job shows that the load -> generate path works end to end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jax_cat.models.tiny import DEFAULT_CHECKPOINT
PROMPTS = ("12+7=", "3*4=", "45-17=", "8+8+8=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jax_cat", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="HF-format checkpoint dir (built offline if it is the default and missing)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the default tiny checkpoint")
    parser.add_argument("prompts", nargs="*", default=list(PROMPTS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the smoke job; returns the process exit code."""
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from jax_cat.models import load_hf
    from jax_cat.models.tiny import build_tiny_checkpoint
    from jax_cat.sampling import generate

    start = time.perf_counter()
    ckpt = args.checkpoint
    if args.rebuild or not (ckpt / "config.json").exists():
        if ckpt != DEFAULT_CHECKPOINT and not args.rebuild:
            print(f"error: no checkpoint at {ckpt}", file=sys.stderr)
            return 2
        print(f"building the tiny default checkpoint in {ckpt} ...")
        build_tiny_checkpoint(ckpt)
    model = load_hf(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    c = model.config
    print(f"loaded {c.model_type} from {ckpt}: {model.num_params:,} params, {c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}")
    completions = generate(model, tokenizer, list(args.prompts), max_new_tokens=args.max_new_tokens, temperature=0.0)
    for prompt, (completion, *_) in zip(args.prompts, completions):
        print(f"{prompt!r} -> {completion.text!r}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
