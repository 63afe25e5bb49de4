"""The jitted SFT and GRPO update steps over a device mesh.

State: `TrainState(params, opt_state, step)` with params a pure dict of float32 master weights (the NNX module's
`nnx.to_pure_dict` form) placed by their logical axes (`jax_cat.sharding`), the optimizer state placed like the
params, the batch split over (data, fsdp). Each step:

  - casts the params to the compute dtype inside the loss (gradients come back in the master dtype),
  - splits the batch into `micro_batches` strided micro-batches and accumulates gradients with `lax.scan`; every
    micro-batch loss is divided by the FULL batch's denominator (its target-token or sequence count) and, in GRPO,
    uses advantages computed once for the whole rollout batch, so k micro-batches give the same update as one,
  - clips by global norm, applies AdamW, and skips the update (params and optimizer state unchanged, `ok` = 0 in
    the metrics) when the loss or the gradient norm is not finite,
  - donates the old state's buffers.

`make_sft_step` / `make_grpo_step` return `Step`s: `step(state, batch) -> (state, metrics)` (metrics: float32
scalars on device; nothing is fetched to the host here). `Step.lower(...)` is the jitted function's, for AOT use.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jax_cat import losses
from jax_cat.sharding import batch_sharding, replicated, state_shardings
from jax_cat.training.config import LossConfig, OptimizerConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(NamedTuple):
    """params: pure dict of master weights; opt_state: the optax state; step: int32 updates applied so far."""

    params: Any
    opt_state: Any
    step: jax.Array


# ------------------------------------------------------------------------------------------------ optimizer
def learning_rate_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over opt.warmup_steps, then cosine to end_lr_ratio x peak at total_steps (or constant)."""
    peak, warm = opt.learning_rate, opt.warmup_steps
    if opt.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(total_steps - warm, 1), alpha=opt.end_lr_ratio)
    if warm <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def make_optimizer(opt: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW on the schedule above."""
    parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
    parts.append(optax.adamw(learning_rate_schedule(opt, total_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay))
    return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------ state + placement
def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, params as a pure dict): the static structure and the arrays the step trains."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def param_shardings(model: nnx.Module, mesh: Mesh) -> dict:
    """Pure dict of NamedShardings for the params (by each parameter's logical axes)."""
    return nnx.to_pure_dict(state_shardings(nnx.state(model), mesh))


def opt_state_shardings(tx: optax.GradientTransformation, params: Any, p_shardings: Any, mesh: Mesh) -> Any:
    """The optimizer state's shardings: moments placed like their params, counters replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_map_params(tx, lambda _, s: s, abstract, p_shardings,
                                 transform_non_params=lambda _: replicated(mesh))


def state_shardings_for(tx: optax.GradientTransformation, model: nnx.Module, mesh: Mesh) -> TrainState:
    """TrainState of NamedShardings for `model` trained with `tx` on `mesh`."""
    _, params = split_model(model)
    p_sh = param_shardings(model, mesh)
    return TrainState(p_sh, opt_state_shardings(tx, params, p_sh, mesh), replicated(mesh))


def init_state(model: nnx.Module, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh TrainState (params copied from `model`, zeroed optimizer state, step 0) placed by `shardings`."""
    _, params = split_model(model)
    params = jax.device_put(params, shardings.params, may_alias=False)  # the step donates: never alias the model
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), shardings.step))


def abstract_state(tx: optax.GradientTransformation, model: nnx.Module, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the TrainState: the restore target and the AOT-compile input."""
    _, params = split_model(model)
    shapes = TrainState(params, jax.eval_shape(tx.init, params), jax.ShapeDtypeStruct((), jnp.int32))
    shapes = jax.eval_shape(lambda s: s, shapes)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of `tree` cast to dtype (the compute copy of the master weights)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# ------------------------------------------------------------------------------------------------ micro-batching
def split_micro_batches(batch: Any, k: int) -> Any:
    """[B, ...] leaves -> [k, B/k, ...]: micro-batch i holds rows i, i+k, i+2k, ... (each device keeps its rows)."""
    def one(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"a batch of {b} rows does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(one, batch)


def accumulate(grad_fn: Callable, params: Any, batch: Any, k: int) -> tuple[Any, dict]:
    """Sum of grad_fn(params, micro_batch) -> (loss, metrics), grads over k micro-batches; metrics: sum of losses,
    mean of the other metrics."""
    if k == 1:
        (loss, metrics), grads = grad_fn(params, batch)
        return grads, {**metrics, "loss": loss}
    micro = split_micro_batches(batch, k)

    def body(carry, mb):
        grads_acc, loss_acc, metrics_acc = carry
        (loss, metrics), grads = grad_fn(params, mb)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        metrics_acc = jax.tree.map(lambda a, m: a + m / k, metrics_acc, metrics)
        return (grads_acc, loss_acc + loss, metrics_acc), None

    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda: grad_fn(params, first)[0][1])
    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
    (grads, loss, metrics), _ = jax.lax.scan(body, zeros, micro)
    return grads, {**metrics, "loss": loss}


def apply_update(tx: optax.GradientTransformation, state: TrainState, grads: Any, loss: jax.Array,
                 schedule: optax.Schedule | None = None) -> tuple[TrainState, dict]:
    """One optimizer update; skipped (state kept, step still counted as not applied) when loss or grads are not finite."""
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(keep(params, state.params), keep(opt_state, state.opt_state),
                           state.step + ok.astype(jnp.int32))
    metrics = {"grad_norm": grad_norm, "ok": ok.astype(jnp.float32)}
    if schedule is not None:
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics


def _float_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class Step:
    """A jitted update `(state, batch) -> (state, metrics)` with the shardings it was built for."""

    fn: Any
    state_shardings: TrainState
    batch_sharding: NamedSharding

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        return self.fn(state, batch)

    def lower(self, state: Any, batch: Any):
        return self.fn.lower(state, batch)


def _accepts(fn: Callable, name: str) -> bool:
    target = getattr(fn, "__wrapped__", fn)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


# ------------------------------------------------------------------------------------------------ SFT
def sft_loss(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef, strategy: losses.Strategy,
             reduction: str, compute_dtype: Any, denominator: jax.Array, remat: bool = False) -> tuple[jax.Array, dict]:
    """CAT SFT loss of a (micro-)batch, scaled so that micro-batch losses sum to the full batch's loss.

    batch: input_ids [B, T], attention_mask [B, T] (1 = real token), loss_mask [B, T] (1 = a target token: the
    model is trained to predict it from the tokens before). denominator: the full batch's target-token count
    ("token_mean") or sequence count ("sequence_sum").
    """
    model = nnx.merge(graphdef, cast_floats(params, compute_dtype))
    model.remat = remat
    logits = model(batch["input_ids"], batch["attention_mask"])[:, :-1]
    targets, mask = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
    if _accepts(losses.cat_sft_loss, "loss_denominator"):
        loss, metrics = losses.cat_sft_loss(logits, targets, mask, strategy, reduction=reduction,
                                            loss_denominator=denominator)
    else:  # today's cat_sft_loss divides by this micro-batch's count: rescale to the full batch's
        loss, metrics = losses.cat_sft_loss(logits, targets, mask, strategy, reduction=reduction)
        local = jnp.maximum(jnp.sum(mask), 1) if reduction == "token_mean" else jnp.asarray(mask.shape[0])
        loss = loss * local.astype(loss.dtype) / denominator
    metrics = dict(metrics, tokens=jnp.sum(mask).astype(jnp.float32))
    metrics.pop("loss", None)
    return loss, _float_metrics(metrics)


def make_sft_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh, *,
                  strategy: losses.Strategy, reduction: str = "token_mean", micro_batches: int = 1,
                  compute_dtype: Any = jnp.float32, remat: bool = False,
                  schedule: optax.Schedule | None = None) -> Step:
    """The jitted SFT step (see module doc); batch = {input_ids, attention_mask, loss_mask}, all [B, T]."""
    data = batch_sharding(mesh)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        mask = batch["loss_mask"][:, 1:]
        denominator = (jnp.maximum(jnp.sum(mask), 1) if reduction == "token_mean" else jnp.asarray(mask.shape[0]))
        loss_fn = functools.partial(sft_loss, graphdef=graphdef, strategy=strategy, reduction=reduction,
                                    compute_dtype=compute_dtype, denominator=denominator.astype(jnp.float32),
                                    remat=remat)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        grads, metrics = accumulate(grad_fn, state.params, batch, micro_batches)
        metrics["tokens"] = metrics["tokens"] * micro_batches  # summed over micro-batches, not averaged
        state, update_metrics = apply_update(tx, state, grads, metrics["loss"], schedule)
        return state, {**metrics, **update_metrics}

    fn = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated(mesh)),
                 donate_argnums=0)
    return Step(fn, shardings, data)


# ------------------------------------------------------------------------------------------------ GRPO
def completion_logprobs(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef, prompt_len: int,
                        compute_dtype: Any = jnp.float32, remat: bool = False) -> jax.Array:
    """log pi(token) of each completion token [B, N] under params (vocab projection only on completion positions).

    batch: input_ids / attention_mask [B, P + N] (prompt left-padded to P, then the N sampled tokens).
    """
    model = nnx.merge(graphdef, cast_floats(params, compute_dtype))
    model.remat = remat
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
    logits = model.logits_from_hidden(hidden[:, prompt_len - 1:-1])
    return losses.token_logprobs(logits, batch["input_ids"][:, prompt_len:])


def make_logprob_fn(graphdef: nnx.GraphDef, shardings: TrainState, mesh: Mesh, *, prompt_len: int,
                    compute_dtype: Any = jnp.float32) -> Callable:
    """Jitted (params, batch) -> completion log-probs [B, N] (old-policy and reference log-probs)."""
    fn = functools.partial(completion_logprobs, graphdef=graphdef, prompt_len=prompt_len, compute_dtype=compute_dtype)
    return jax.jit(fn, in_shardings=(shardings.params, batch_sharding(mesh)), out_shardings=batch_sharding(mesh))


def rl_loss_kwargs(loss: LossConfig) -> dict[str, Any]:
    """The keyword settings of `cat_rl_loss` from a LossConfig."""
    return dict(form=loss.form, p_source=loss.p_source, smoothing=loss.smoothing, weight_clip=loss.weight_clip,
                normalize=loss.normalize, clip_eps_low=loss.clip_eps_low, clip_eps_high=loss.clip_eps_high,
                beta=loss.beta, reduction=loss.reduction, min_k=loss.min_k)


def has_cat_advantages() -> bool:
    """Whether `jax_cat.losses` computes whole-batch advantages (exact GRPO micro-batching)."""
    return hasattr(losses, "cat_advantages") and _accepts(losses.cat_rl_loss, "advantages")


def grpo_loss(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef, prompt_len: int,
              strategy: losses.Strategy, loss_cfg: LossConfig, compute_dtype: Any, remat: bool,
              denominator: jax.Array | None) -> tuple[jax.Array, dict]:
    """CAT-GRPO loss of a (micro-)batch of rollouts (a `RolloutBatch.arrays()` dict)."""
    logprobs = completion_logprobs(params, batch, graphdef=graphdef, prompt_len=prompt_len,
                                   compute_dtype=compute_dtype, remat=remat)
    kwargs = rl_loss_kwargs(loss_cfg)
    extra: dict[str, Any] = {}
    if "answer_ids" in batch and isinstance(strategy, losses.MajorityAtN):
        extra["answer_ids"] = batch["answer_ids"]
    if "advantages" in batch:
        extra["advantages"] = batch["advantages"]
    if denominator is not None:
        extra["loss_denominator"] = denominator
    loss, metrics = losses.cat_rl_loss(
        logprobs, batch.get("old_logprobs"), batch.get("ref_logprobs"), batch["rewards"], batch["group_ids"],
        batch["completion_mask"], strategy, kwargs.pop("form"), **kwargs, **extra,
    )
    metrics = dict(metrics, tokens=jnp.sum(batch["completion_mask"]).astype(jnp.float32))
    metrics.pop("loss", None)
    return loss, _float_metrics(metrics)


def make_grpo_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh, *,
                   strategy: losses.Strategy, loss_cfg: LossConfig, prompt_len: int, micro_batches: int = 1,
                   compute_dtype: Any = jnp.float32, remat: bool = False,
                   schedule: optax.Schedule | None = None) -> Step:
    """The jitted GRPO step; batch = `RolloutBatch.arrays()` (input_ids, attention_mask, completion_mask, rewards,
    group_ids, answer_ids, optional old_logprobs / ref_logprobs).

    With micro_batches > 1 the CAT advantages of the whole rollout batch are computed once
    (`jax_cat.losses.cat_advantages`) and every micro-batch divides by the whole batch's denominator.
    """
    data = batch_sharding(mesh)
    exact = has_cat_advantages()
    if micro_batches > 1 and not exact:
        raise ValueError("GRPO micro-batching needs jax_cat.losses.cat_advantages (whole-batch advantages); "
                         "set train.micro_batches=1")

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        batch = dict(batch)
        denominator = None
        adv_metrics: dict[str, jax.Array] = {}
        if exact:
            mask = batch["completion_mask"]
            advantages, adv_metrics = losses.cat_advantages(
                strategy, rewards=batch["rewards"], group_ids=batch["group_ids"],
                **_advantage_kwargs(loss_cfg, strategy, batch),
            )
            batch["advantages"] = advantages
            denominator = _rl_denominator(loss_cfg.reduction, mask)
        loss_fn = functools.partial(grpo_loss, graphdef=graphdef, prompt_len=prompt_len, strategy=strategy,
                                    loss_cfg=loss_cfg, compute_dtype=compute_dtype, remat=remat,
                                    denominator=denominator)
        grads, metrics = accumulate(jax.value_and_grad(loss_fn, has_aux=True), state.params, batch, micro_batches)
        metrics["tokens"] = metrics["tokens"] * micro_batches
        metrics.update(_float_metrics(adv_metrics))
        state, update_metrics = apply_update(tx, state, grads, metrics["loss"], schedule)
        return state, {**metrics, **update_metrics}

    fn = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated(mesh)),
                 donate_argnums=0)
    return Step(fn, shardings, data)


def _rl_denominator(reduction: str, mask: jax.Array) -> jax.Array:
    if reduction == "token_mean":
        return jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    if reduction == "sequence_mean":
        return jnp.maximum(jnp.sum(jnp.sum(mask, axis=-1) > 0), 1).astype(jnp.float32)
    return jnp.asarray(mask.shape[0], jnp.float32)


def _advantage_kwargs(loss_cfg: LossConfig, strategy: losses.Strategy, batch: Mapping[str, jax.Array]) -> dict:
    """Keyword arguments of `cat_advantages` this config sets (only those its signature accepts)."""
    wanted = dict(form=loss_cfg.form, p_source=loss_cfg.p_source, smoothing=loss_cfg.smoothing,
                  weight_clip=loss_cfg.weight_clip, normalize=loss_cfg.normalize, min_k=loss_cfg.min_k,
                  old_logprobs=batch.get("old_logprobs"), mask=batch["completion_mask"])
    if isinstance(strategy, losses.MajorityAtN):
        wanted["answer_ids"] = batch.get("answer_ids")
    return {k: v for k, v in wanted.items() if _accepts(losses.cat_advantages, k)}


__all__ = [
    "DTYPES", "Step", "TrainState", "abstract_state", "accumulate", "apply_update", "cast_floats",
    "completion_logprobs", "grpo_loss", "has_cat_advantages", "init_state", "learning_rate_schedule",
    "make_grpo_step", "make_logprob_fn", "make_optimizer", "make_sft_step", "opt_state_shardings",
    "param_shardings", "rl_loss_kwargs", "sft_loss", "split_micro_batches", "split_model", "state_shardings_for",
]
