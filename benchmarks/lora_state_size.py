"""Train-state bytes of full fine-tuning vs LoRA at real model shapes, from abstract shapes only (nothing is
allocated or compiled): params, trainable parameters, AdamW state and the params part of a checkpoint, per model.

The state is `jax_cat.training.steps.abstract_state` of the model the trainer builds (`CausalLM(..., lora=...)`,
bf16 compute, scan_layers), so the numbers are what `TrainState` holds on one device (divide by the FSDP size for a
sharded run). Printed in docs/lora.md.

    PYTHONPATH=. .venv/bin/python benchmarks/lora_state_size.py [--rank 16] [--alpha 32]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models import CausalLM
from jax_cat.models.config import ModelConfig
from jax_cat.models.lora import LoRAConfig
from jax_cat.sharding import make_mesh
from jax_cat.training import steps
from jax_cat.training.config import OptimizerConfig

SHAPES = {  # the config.json fields that fix the parameter shapes
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, max_position_embeddings=4096),
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       tie_word_embeddings=False, max_position_embeddings=32768),
}


def gib(tree) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    args = parser.parse_args()
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    settings = (("full FT, float32 masters", None, jnp.float32),
                (f"LoRA r={args.rank}, bf16 base", LoRAConfig(rank=args.rank, alpha=args.alpha), jnp.bfloat16))
    for name, hf in SHAPES.items():
        config = ModelConfig.from_hf(hf)
        for label, lora, param_dtype in settings:
            model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                                    param_dtype=param_dtype, scan_layers=True, lora=lora))
            tx = steps.make_optimizer(OptimizerConfig(), 10)
            state = steps.abstract_state(tx, model, steps.state_shardings_for(tx, model, mesh))
            trainable = steps.trainable_params(state.params)
            count = sum(x.size for x in jax.tree.leaves(trainable))
            print(f"{name:14s} {label:26s} params {gib(state.params):7.2f} GiB  trainable {count / 1e6:8.1f}M  "
                  f"optimizer state {gib(state.opt_state):7.3f} GiB  checkpoint params {gib(trainable):7.3f} GiB")


if __name__ == "__main__":
    main()
