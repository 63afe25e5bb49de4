"""The vocabulary projection (final hidden states -> float32 logits) with a backward pass laid out for XLA:CPU.

Autodiff of `einsum("...d,dv->...v")` asks for the weight gradient as a dot that contracts the token axis of the
[tokens, vocab] logit gradient. XLA:CPU lays that out by copying the whole logit gradient transposed ([vocab,
tokens], 133 MB at 2040 tokens x 16k vocabulary) and running a dot its fast YNNPACK path does not take: on the
39.3M benchmark step that one dot took 14 % of the step, twice the forward projection of the same FLOPs
(jax.profiler trace, docs/benchmarks.md). Here the backward transposes the small operand instead (hidden [D,
tokens], behind `optimization_barrier` so the simplifier does not fold the transpose back into the dot): the
weight gradient becomes a plain [D, tokens] x [tokens, vocab] matmul. Same values (float32 sums in another order:
equal to autodiff within 1e-5, tests/models/test_projection.py). Used only for float32 operands on the CPU
backend; elsewhere (GPU/TPU, bf16) it is the plain einsum.

`dense(x, w)` is the same for the MLP's [..., D] x [D, F] matmuls, whose weight gradients XLA:CPU laid out the same
way (a transposed copy of the [tokens, F] output gradient for each of the 24 gate/up/down weights of the 39.3M
model): two SwiGLU layers' forward + backward 1.30 -> 1.10 CPU-s at B=8, T=256 on one core.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _plain(hidden: jax.Array, weight: jax.Array, tied: bool) -> jax.Array:
    spec = "...d,vd->...v" if tied else "...d,dv->...v"
    return jnp.einsum(spec, hidden, weight, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _cpu_logits_untied(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    return _plain(hidden, weight, False)


@jax.custom_vjp
def _cpu_logits_tied(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    return _plain(hidden, weight, True)


def _fwd_untied(hidden, weight):
    return _plain(hidden, weight, False), (hidden, weight)


def _fwd_tied(hidden, weight):
    return _plain(hidden, weight, True), (hidden, weight)


def _weight_grad_dv(hidden: jax.Array, g: jax.Array) -> jax.Array:
    """sum over tokens of hidden^T g -> [D, V], as [D, tokens] x [tokens, V] with the small operand transposed."""
    h2 = hidden.reshape(-1, hidden.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    return jax.lax.optimization_barrier(h2.T) @ g2


def _bwd_untied(res, g):
    hidden, weight = res
    return jnp.einsum("...v,dv->...d", g, weight), _weight_grad_dv(hidden, g)


def _bwd_tied(res, g):
    hidden, weight = res
    return jnp.einsum("...v,vd->...d", g, weight), _weight_grad_dv(hidden, g).T


_cpu_logits_untied.defvjp(_fwd_untied, _bwd_untied)
_cpu_logits_tied.defvjp(_fwd_tied, _bwd_tied)


@jax.custom_vjp
def _cpu_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _fwd_dense(x, w):
    return x @ w, (x, w)


def _bwd_dense(res, g):
    x, w = res
    return g @ w.T, _weight_grad_dv(x, g)


_cpu_dense.defvjp(_fwd_dense, _bwd_dense)


def _cpu_float32(*arrays: jax.Array) -> bool:
    return jax.default_backend() == "cpu" and all(a.dtype == jnp.float32 for a in arrays)


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., K] @ w [K, N] (`x @ w`), with the weight gradient as [K, tokens] x [tokens, N] for float32 on CPU."""
    return _cpu_dense(x, w) if _cpu_float32(x, w) else x @ w


def vocab_logits(hidden: jax.Array, weight: jax.Array, *, tied: bool) -> jax.Array:
    """float32 logits [..., V] of hidden [..., D] through `weight` ([D, V] lm_head, or the [V, D] embedding when
    `tied`), the operands already in the compute dtype; the CPU-friendly backward for float32 on the CPU backend."""
    if _cpu_float32(hidden, weight):
        return (_cpu_logits_tied if tied else _cpu_logits_untied)(hidden, weight)
    return _plain(hidden, weight, tied)


__all__ = ["dense", "vocab_logits"]
