"""The model GRPO rollouts sample from when the policy has LoRA adapters (`lora.rollout`, docs/lora.md).

- "adapters": the adapted model as it is trained: every decode step runs x.W plus the low-rank path (x.A).B.s for
  each adapted projection (two small extra matmuls per target and layer); nothing is materialised.
- "merged": once per rollout batch each adapted kernel is replaced by W + A.B.s (one jitted op per kernel, written
  with the kernel's dtype and sharding) and the sampler runs the plain model. The state's params are not touched:
  the train step and the log-prob passes keep the adapter path on the frozen base. Peak memory while sampling: the
  base plus one merged copy of each adapted kernel (not of the embeddings, norms or head, which are shared), freed
  when the rollout batch is assembled.

Both give the same distribution up to float rounding (the sampler's per-token log-probs equal the train step's
within 1e-5 in float32, tests/training/test_rollout_policy.py); which is faster is measured in
benchmarks/lora_rollout.py (docs/lora.md).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cat.models.lora import SUFFIX, adapters_of

ROLLOUT_MODES = ("adapters", "merged")


@functools.lru_cache(maxsize=None)
def _merge_kernel_fn(scale: float, stacked: bool, sharding: Any) -> Any:
    """Jitted (W, A, B) -> W + A.B.scale in W's dtype (float32 sum), placed with `sharding` (None: XLA's choice)."""
    def merge(w, a, b):
        dot = (lambda x, y: jnp.tensordot(x, y, axes=1))
        delta = jax.vmap(dot)(a.astype(jnp.float32), b.astype(jnp.float32)) if stacked else \
            dot(a.astype(jnp.float32), b.astype(jnp.float32))
        return (w.astype(jnp.float32) + delta * scale).astype(w.dtype)

    return jax.jit(merge, out_shardings=sharding)


def merged_policy(graphdef: nnx.GraphDef, params: Any) -> Any:
    """A CausalLM without adapters whose adapted kernels are W + A.B.alpha/r, from the adapted model's graphdef and
    params (a pure dict): only the adapted kernels are new arrays, every other leaf is `params`' own."""
    return _merge_in_place(nnx.merge(graphdef, params))  # fresh Variables over the same arrays: params unchanged


def _merge_in_place(policy: Any) -> Any:
    for _, li, path, adapter in list(adapters_of(policy)):
        sub, attr = path.split(".")
        module = getattr(policy.layers if li is None else policy.layers[li], sub)
        kernel = getattr(module, attr)
        w = kernel.get_value()
        sharding = w.sharding if isinstance(getattr(w, "sharding", None), jax.sharding.NamedSharding) else None
        fn = _merge_kernel_fn(adapter.scale, adapter.stacked, sharding)
        kernel.set_value(fn(w, adapter.lora_a.get_value(), adapter.lora_b.get_value()))
        delattr(module, attr + SUFFIX)
    policy.lora = None
    return policy


def rollout_policy(graphdef: nnx.GraphDef, params: Any, mode: str = "adapters") -> Any:
    """The model a rollout batch samples from: the adapted model itself ("adapters", and any model without
    adapters) or `merged_policy` ("merged")."""
    if mode not in ROLLOUT_MODES:
        raise ValueError(f"lora.rollout={mode!r}: expected one of {', '.join(ROLLOUT_MODES)}")
    model = nnx.merge(graphdef, params)
    if mode == "adapters" or getattr(model, "lora", None) is None:
        return model
    return _merge_in_place(model)


__all__ = ["ROLLOUT_MODES", "merged_policy", "rollout_policy"]
