"""Decode speed of jax-cat's sampler vs transformers `generate` (torch, CPU) on the same random checkpoint.

Both sides get the same batch of random prompts (no padding), decode greedily exactly --new-tokens tokens
(transformers: min_new_tokens = max_new_tokens; ours: no EOS ids, so no early exit) and are timed over --repeats
runs after one warm-up run, the two backends' runs interleaved (so both see the same machine load); the figure is new
tokens/s (prefill included) and the ratio of the medians. Our compile time (first call minus the steady-state median)
is reported separately. Each backend runs in its own subprocess, so its peak RSS is its own.

    .venv/bin/python benchmarks/sampling.py                      # tiny + qwen2-40m shapes
    .venv/bin/python benchmarks/sampling.py --shapes qwen2-40m --batch 8 --prompt-len 64 --new-tokens 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Model shapes (HF Qwen2 config fields). qwen2-40m: 39.3M parameters, the same shape as benchmarks/model_forward.py's.
SHAPES = {
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
    "qwen2-40m": dict(vocab_size=16384, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False),
}


def build_checkpoint(shape: str, out_dir: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    fields = dict(SHAPES[shape], max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.02)
    config = transformers.Qwen2Config(**fields)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out_dir)
    return out_dir


def prompts(vocab: int, batch: int, length: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length), dtype=np.int32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_ours(ckpt: Path, args):
    import jax
    import numpy as np

    from jax_cat.models import load_hf
    from jax_cat.sampling import sample_tokens

    model = load_hf(ckpt)
    ids = prompts(model.config.vocab_size, args.batch, args.prompt_len)
    mask = np.ones_like(ids, bool)

    def once():
        out = sample_tokens(model, ids, mask, max_new_tokens=args.new_tokens, temperature=0.0, eos_token_ids=(),
                            key=jax.random.key(0))
        out = jax.block_until_ready(out)
        assert int(np.min(out.lengths)) == args.new_tokens
        return np.asarray(out.tokens).tolist()

    return once, {"jax": jax.__version__, "devices": str(jax.devices())}


def make_torch(ckpt: Path, args):
    import torch
    import transformers

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompts(model.config.vocab_size, args.batch, args.prompt_len)).long()
    mask = torch.ones_like(ids)

    def once():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, pad_token_id=0, eos_token_id=2)
        new = out[:, ids.shape[1]:]
        assert new.shape[1] == args.new_tokens
        return new.tolist()

    return once, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def child(args) -> None:
    """Serve timing requests on stdin ("run" -> one timed generation) so the parent can interleave the backends."""
    once, info = (make_ours if args.backend == "jax" else make_torch)(Path(args.checkpoint), args)
    tokens = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t0 = time.perf_counter()
            tokens = once()
            print(f"TIME {time.perf_counter() - t0}", flush=True)
        elif cmd == "finish":
            print("RESULT " + json.dumps(dict(info, tokens=tokens, peak_rss_mib=peak_rss_mib())), flush=True)
            return


class Backend:
    """A benchmark child process for one backend."""

    def __init__(self, backend: str, ckpt: Path, args):
        cmd = [sys.executable, __file__, "--backend", backend, "--checkpoint", str(ckpt), "--batch", str(args.batch),
               "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
               "--torch-threads", str(args.torch_threads)]
        env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        self.name = backend
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def _ask(self, cmd: str, prefix: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"{self.name} benchmark child died (exit code {self.proc.wait()})")

    def run(self) -> float:
        return float(self._ask("run", "TIME "))

    def finish(self) -> dict:
        result = json.loads(self._ask("finish", "RESULT "))
        self.proc.wait()
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,qwen2-40m", help=f"comma-separated, from {sorted(SHAPES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--backend", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backend:
        return child(args)

    new_tokens = args.batch * args.new_tokens
    print(f"batch {args.batch}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy), "
          f"median of {args.repeats} after a warm-up")
    print("| shape | params | jax-cat tok/s | transformers tok/s | ratio | jax compile s | peak RSS jax / torch MiB | same tokens | torch threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = build_checkpoint(shape, Path(tmp) / shape)
            params = _num_params(ckpt)
            ours, ref = Backend("jax", ckpt, args), Backend("torch", ckpt, args)
            first_call = ours.run()  # compile + run
            ref.run()  # warm-up
            times = {"jax": [], "torch": []}
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                times["jax"].append(ours.run())
                times["torch"].append(ref.run())
            ours_info, ref_info = ours.finish(), ref.finish()
        med = {k: statistics.median(v) for k, v in times.items()}
        same = sum(a == b for a, b in zip(ours_info["tokens"], ref_info["tokens"]))
        ours_tps, ref_tps = new_tokens / med["jax"], new_tokens / med["torch"]
        print(f"| {shape} | {params / 1e6:.1f}M | {ours_tps:,.0f} | {ref_tps:,.0f} | {ours_tps / ref_tps:.2f}x | "
              f"{first_call - med['jax']:.1f} | {ours_info['peak_rss_mib']:,.1f} / {ref_info['peak_rss_mib']:,.1f} | "
              f"{same}/{args.batch} rows | {ref_info['threads']} |")
        print(f"  raw seconds: jax {['%.3f' % t for t in times['jax']]}, torch {['%.3f' % t for t in times['torch']]}",
              file=sys.stderr)
        sys.stdout.flush()


def _num_params(ckpt: Path) -> int:
    import numpy as np
    from safetensors import safe_open

    total = 0
    for file in ckpt.glob("*.safetensors"):
        with safe_open(file, "np") as f:
            total += sum(int(np.prod(f.get_slice(key).get_shape())) for key in f.keys())
    return total


if __name__ == "__main__":
    main()
