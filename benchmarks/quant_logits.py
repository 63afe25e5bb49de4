"""How far QLoRA's quantized base moves the logits: nf4 / int8 vs the float32 base on random transformers checkpoints.

Two random Llama checkpoints written by transformers (tests/hf_fixtures.py): the tests' tiny one (hidden 64, 2 layers,
std 0.1 weights) and a larger one (hidden 512, 4 layers, 8 heads of 64, MLP 1408, vocabulary 1024, transformers'
std 0.02). Each loads with `load_hf` in float32 and with `quantize="nf4"` / `"int8"`; on a batch of random token
rows (32 tokens, three rows left-padded) the script reports, over real tokens, the largest and mean |logit
difference|, the logits' own standard deviation (the scale to read them against), the mean KL(base || quantized) of
the next-token distributions and the top-1 agreement. Written to docs/results_data/quant_logits.json; docs/lora.md
quotes it, tests/models/test_quant.py asserts the tiny checkpoint's bound.

    PYTHONPATH=. taskset -c 0 .venv/bin/python benchmarks/quant_logits.py [--out docs/results_data/quant_logits.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = {
    "tiny (hidden 64, 2 layers)": dict(),
    "larger (hidden 512, 4 layers)": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                                          num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=1024,
                                          initializer_range=0.02),
}


def batch(vocab: int, rows: int = 4, t: int = 32, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (rows, t)).astype(np.int32)
    mask = np.ones((rows, t), np.int32)
    for r, pad in enumerate((0, 5, 11, 20)[:rows]):
        ids[r, :pad], mask[r, :pad] = 0, 0
    return ids, mask


def compare(base, quant, mask) -> dict:
    import numpy as np

    real = mask.astype(bool)
    a, b = base[real].astype(np.float64), quant[real].astype(np.float64)
    la = a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)
    lb = b - np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1, keepdims=True)) - b.max(-1, keepdims=True)
    kl = (np.exp(la) * (la - lb)).sum(-1)
    return dict(max_abs_logit_diff=float(np.abs(a - b).max()), mean_abs_logit_diff=float(np.abs(a - b).mean()),
                logit_std=float(a.std()), mean_kl=float(kl.mean()),
                top1_agreement=float((a.argmax(-1) == b.argmax(-1)).mean()), tokens=int(real.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results_data/quant_logits.json"))
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_cat.models import load_hf
    from tests.hf_fixtures import make_tiny_hf_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="quant-logits-") as tmp:
        for name, overrides in CHECKPOINTS.items():
            path = make_tiny_hf_checkpoint("llama", Path(tmp) / name.split()[0], **overrides)
            model = load_hf(path)
            ids, mask = batch(model.config.vocab_size)
            base = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
            for mode in ("nf4", "int8"):
                quant = np.asarray(load_hf(path, quantize=mode)(jnp.asarray(ids), jnp.asarray(mask)))
                row = dict(checkpoint=name, params=int(model.num_params), mode=mode, **compare(base, quant, mask))
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = dict(rows=rows, jax=jax.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               load_avg=os.getloadavg()[0], command="PYTHONPATH=. taskset -c 0 .venv/bin/python "
                                                    "benchmarks/quant_logits.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
