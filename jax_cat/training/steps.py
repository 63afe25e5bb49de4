"""The jitted SFT and GRPO update steps over a device mesh.

State: `TrainState(params, opt_state, step)` with params a pure dict of float32 master weights (the NNX module's
`nnx.to_pure_dict` form) placed by their logical axes (`jax_cat.sharding`), the optimizer state placed like the
params, the batch split over (data, fsdp). Each step:

  - runs the forward/backward in the model's compute dtype (`load_hf(dtype=compute, param_dtype=float32)`:
    gradients come back in the float32 master dtype),
  - splits the batch into `micro_batches` strided micro-batches and accumulates gradients with `lax.scan`; every
    micro-batch loss is divided by the FULL batch's denominator (its target-token or sequence count) and, in GRPO,
    uses advantages computed once for the whole rollout batch, so k micro-batches give the same update as one,
  - clips by global norm, applies AdamW, and skips the update (params and optimizer state unchanged, `ok` = 0 in
    the metrics) when the loss or the gradient norm is not finite,
  - donates the old state's buffers,
  - with LoRA (a model built with `lora=`): differentiates, clips and updates the adapters only
    (`trainable_params`); the optimizer state holds the adapters' moments only and the frozen base passes through
    the step unchanged (donated and aliased, not copied); adapter dropout draws its masks from (step, micro-batch),
  - takes token log-probs in chunks of `logprob_chunk` sequence positions (`chunked_token_logprobs`): the vocabulary
    projection never builds the [B, T, vocab] logits (None: in one piece, the reference the tests compare with),
  - runs under the mesh context (`jax.set_mesh`), so the model's activation constraints (`decoder.shard_batch`)
    split activations by batch over (data, fsdp); without it XLA may replicate them (docs/planning.md).

`make_sft_step` / `make_grpo_step` return `Step`s: `step(state, batch) -> (state, metrics)` (metrics: float32
scalars on device; nothing is fetched to the host here). `Step.lower(...)` lowers exactly what `step(...)` runs
(same function, same mesh context), for AOT compilation and memory analysis (`jax_cat.training.plan`).
"""
from __future__ import annotations

import contextlib
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
from jax_cat.models import lora as _lora
from jax_cat.models.decoder import shard_batch
from jax_cat.sharding import batch_sharding, replicated, state_shardings
from jax_cat.training.config import OptimizerConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Sequence positions per chunk of the vocabulary projection (`model.logprob_chunk`): each device holds at most
# rows-per-device x LOGPROB_CHUNK x vocab float32 logits at a time (and their softmax / gradient in the backward).
LOGPROB_CHUNK = 128


class TrainState(NamedTuple):
    """params: pure dict of master weights; opt_state: the optax state; step: int32 updates applied so far;
    cat_state: `jax_cat.losses.CATState` when the CAT advantages carry state across steps, else None."""

    params: Any
    opt_state: Any
    step: jax.Array
    cat_state: Any = None


# ------------------------------------------------------------------------------------------------ trainable part
def trainable_params(params: Any) -> Any:
    """What the step differentiates and the optimizer holds: the LoRA adapters' sub-tree when `params` (a pure dict,
    or a tree of the same structure: shardings, shapes) holds adapters, else all of `params`."""
    return _lora.adapter_params(params) if _is_lora(params) else params


def with_trainable(params: Any, trainable: Any) -> Any:
    """`params` with its trainable part replaced by `trainable` (the inverse of `trainable_params`)."""
    return _lora.with_adapter_params(params, trainable) if _is_lora(params) else trainable


def _is_lora(params: Any) -> bool:
    return isinstance(params, Mapping) and _lora.has_adapters(params)


def trainable_value_and_grad(loss_fn: Callable, params: Any) -> Callable:
    """`jax.value_and_grad` (has_aux) of `loss_fn(params, batch)` with respect to `trainable_params(params)` only:
    a function `(trainable, batch) -> ((loss, aux), grads)`; the rest of `params` (a frozen LoRA base) is a constant."""
    return jax.value_and_grad(lambda trainable, batch: loss_fn(with_trainable(params, trainable), batch),
                              has_aux=True)


_DROPOUT_ROW = "lora_dropout_row"


def _with_dropout_rows(graphdef: nnx.GraphDef, params: Any, batch: Mapping[str, jax.Array], step: jax.Array) -> dict:
    """batch plus a per-row counter step x B + row when the model's LoRA adapters use dropout (each micro-batch then
    draws its masks from its first row's counter: a function of (step, micro-batch), so a resumed run repeats them)."""
    config = getattr(nnx.merge(graphdef, params), "lora", None)  # trace-time only
    if config is None or config.dropout <= 0:
        return dict(batch)
    b = batch["input_ids"].shape[0]
    return {**batch, _DROPOUT_ROW: step.astype(jnp.int32) * b + jnp.arange(b, dtype=jnp.int32)}


def _dropout_scope(batch: Mapping[str, jax.Array]):
    rows = batch.get(_DROPOUT_ROW)
    if rows is None:
        return contextlib.nullcontext()
    return _lora.dropout_scope(jax.random.fold_in(jax.random.key(0x10CA), rows[0]))


# ------------------------------------------------------------------------------------------------ optimizer
def learning_rate_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up over opt.warmup_steps, then cosine to end_lr_ratio x peak at total_steps (or constant).

    The warm-up starts above 0 (update i < warmup_steps uses peak x (i + 1) / warmup_steps), so the first update
    is not a no-op."""
    peak, warm = opt.learning_rate, opt.warmup_steps
    if opt.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(total_steps - warm, 1), alpha=opt.end_lr_ratio)
    if warm <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(peak / warm, peak, max(warm - 1, 1)), after], [warm])


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
    """The optimizer state's shardings: moments placed like their (trainable) params, counters replicated."""
    abstract = jax.eval_shape(tx.init, trainable_params(params))
    return optax.tree_map_params(tx, lambda _, s: s, abstract, trainable_params(p_shardings),
                                 transform_non_params=lambda _: replicated(mesh))


def state_shardings_for(tx: optax.GradientTransformation, model: nnx.Module, mesh: Mesh) -> TrainState:
    """TrainState of NamedShardings for `model` trained with `tx` on `mesh`."""
    _, params = split_model(model)
    p_sh = param_shardings(model, mesh)
    return TrainState(p_sh, opt_state_shardings(tx, params, p_sh, mesh), replicated(mesh))


def init_state(model: nnx.Module, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh TrainState (params copied from `model`, zeroed optimizer state, step 0) placed by `shardings`."""
    _, params = split_model(model)
    # The step donates the state: copy first, so no buffer of `model` is shared (device_put may alias one shard).
    params = jax.device_put(jax.tree.map(jnp.copy, params), shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable_params(params))
    cat_state = None if shardings.cat_state is None else jax.device_put(losses.init_cat_state(), shardings.cat_state)
    return TrainState(params, opt_state, jax.device_put(jnp.zeros((), jnp.int32), shardings.step), cat_state)


def with_cat_state(shardings: TrainState, mesh: Mesh) -> TrainState:
    """`shardings` with a (replicated) `jax_cat.losses.CATState` slot: for steps whose advantages carry state across
    steps (`needs_cat_state`); `init_state` then starts it with `losses.init_cat_state()` and checkpoints hold it."""
    return shardings._replace(cat_state=jax.tree.map(lambda _: replicated(mesh), losses.init_cat_state()))


def abstract_state(tx: optax.GradientTransformation, model: nnx.Module, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the TrainState: the restore target and the AOT-compile input."""
    _, params = split_model(model)
    cat_state = None if shardings.cat_state is None else jax.eval_shape(losses.init_cat_state)
    shapes = TrainState(params, jax.eval_shape(tx.init, trainable_params(params)), jax.ShapeDtypeStruct((), jnp.int32),
                        cat_state)
    shapes = jax.eval_shape(lambda s: s, shapes)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


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
    """One optimizer update; skipped (state kept, step still counted as not applied) when loss or grads are not finite.

    `grads` are those of `trainable_params(state.params)` (all params, or the LoRA adapters only)."""
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    trainable = trainable_params(state.params)

    def update(_):
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    # lax.cond runs one branch; a jnp.where between the updated and the old state read every parameter and moment
    # once more (measured: 4 % of the 39.3M train step on CPU, benchmarks/trainer_overhead.py)
    trainable, opt_state = jax.lax.cond(ok, update, lambda _: (trainable, state.opt_state), None)
    params = with_trainable(state.params, trainable)
    new_state = TrainState(params, opt_state, state.step + ok.astype(jnp.int32), state.cat_state)
    metrics = {"grad_norm": grad_norm, "ok": ok.astype(jnp.float32)}
    if schedule is not None:
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new_state, metrics


def _float_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def mesh_context(mesh: Mesh | None):
    """`jax.set_mesh(mesh)` (a no-op context for None): traces under it see the mesh, so `shard_batch` constrains."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class Step:
    """A jitted update `(state, batch) -> (state, metrics)` with the shardings and the mesh it was built for.

    Calling it and `lower` both enter the mesh context, so whoever calls them (the trainer, a benchmark, the
    `--plan` dry run) traces the same program: the model's activation constraints hold in all of them.
    """

    fn: Any
    state_shardings: TrainState
    batch_sharding: NamedSharding
    mesh: Mesh | None = None

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        with mesh_context(self.mesh):
            return self.fn(state, batch)

    def lower(self, state: Any, batch: Any):
        """The jitted step lowered for these inputs in the mesh context, for compile and memory analysis."""
        with mesh_context(self.mesh):
            return self.fn.lower(state, batch)


@dataclasses.dataclass(frozen=True)
class LogprobFn:
    """The jitted `(params, batch) -> completion log-probs [B, N]` (old-policy / reference log-probs), run and
    lowered under its mesh like `Step`."""

    fn: Any
    mesh: Mesh | None = None

    def __call__(self, params: Any, batch: Any) -> jax.Array:
        with mesh_context(self.mesh):
            return self.fn(params, batch)

    def lower(self, params: Any, batch: Any):
        """The jitted log-prob pass lowered for these inputs in the mesh context, for compile and memory analysis."""
        with mesh_context(self.mesh):
            return self.fn.lower(params, batch)


# ------------------------------------------------------------------------------------------------ log-probs
def chunked_token_logprobs(model: Any, hidden: jax.Array, targets: jax.Array, chunk: int | None) -> jax.Array:
    """log p(targets) [B, T] (float32) from final-norm hidden states [B, T, D], `chunk` positions of every row at a
    time (None: the whole [B, T, vocab] logits at once).

    Chunks run along the sequence axis, not over flattened B*T positions, so every chunk keeps the batch split of
    the mesh (`shard_batch`): a device computes only its own rows' logits, [rows, chunk, vocab], under
    `jax.checkpoint`, so the backward pass recomputes them instead of keeping every chunk's. Equal to
    `losses.token_logprobs(model.logits_from_hidden(hidden), targets)` up to float round-off.
    """
    targets = jnp.asarray(targets, jnp.int32)
    b, t, d = hidden.shape
    if chunk is None or chunk >= t:
        return losses.token_logprobs(model.logits_from_hidden(hidden), targets)
    n = -(-t // chunk)
    chunk = -(-t // n)  # n equal chunks of at most `chunk`: 192 positions at 128 run as 2 x 96, not 2 x 128 padded
    pad = n * chunk - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, chunk, D]
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(hy):
        hc, yc = shard_batch(hy[0]), shard_batch(hy[1])
        return shard_batch(losses.token_logprobs(model.logits_from_hidden(hc), yc))

    out = jax.lax.map(one, (h, y))  # [n, B, chunk]
    return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


# ------------------------------------------------------------------------------------------------ SFT
def sft_loss(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef, strategy: losses.Strategy,
             reduction: str, denominator: Any, logprob_chunk: int | None = LOGPROB_CHUNK) -> tuple[jax.Array, dict]:
    """CAT SFT loss of a (micro-)batch divided by the FULL batch's `denominator` (`losses.loss_denominator`), so
    micro-batch losses and gradients sum to the whole batch's.

    batch: input_ids [B, T], attention_mask [B, T] (1 = real token), loss_mask [B, T] (1 = a target token: the
    model is trained to predict it from the tokens before). The forward runs in the model's compute dtype.
    """
    model = nnx.merge(graphdef, params)
    # Drop the last position BEFORE the vocabulary projection: slicing [B, T, V] logits afterwards costs a copy of
    # them and a padded [B, T, V] gradient (measured: the step 1.2x slower at vocabulary 16k; benchmarks/train_step.py)
    with _dropout_scope(batch):
        hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])[:, :-1]
    targets, mask = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:]
    # `logprob_chunk` positions of every row through the vocabulary projection at a time: never the [B, T, V] logits
    logprobs = chunked_token_logprobs(model, hidden, targets, logprob_chunk)
    loss, metrics = losses.cat_sft_loss(None, targets, mask, strategy, reduction=reduction, logprobs=logprobs,
                                        loss_denominator=denominator)
    metrics = dict(metrics, tokens=jnp.sum(mask).astype(jnp.float32))
    metrics.pop("loss", None)
    return loss, _float_metrics(metrics)


def make_sft_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh, *,
                  strategy: losses.Strategy, reduction: str = "token_mean", micro_batches: int = 1,
                  schedule: optax.Schedule | None = None, logprob_chunk: int | None = LOGPROB_CHUNK) -> Step:
    """The jitted SFT step (see module doc); batch = {input_ids, attention_mask, loss_mask}, all [B, T]."""
    data = batch_sharding(mesh)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        denominator = losses.loss_denominator(batch["loss_mask"][:, 1:], reduction)
        loss_fn = functools.partial(sft_loss, graphdef=graphdef, strategy=strategy, reduction=reduction,
                                    denominator=denominator, logprob_chunk=logprob_chunk)
        batch = _with_dropout_rows(graphdef, state.params, batch, state.step)
        grads, metrics = accumulate(trainable_value_and_grad(loss_fn, state.params), trainable_params(state.params),
                                    batch, micro_batches)
        metrics["tokens"] = metrics["tokens"] * micro_batches  # summed over micro-batches, not averaged
        state, update_metrics = apply_update(tx, state, grads, metrics["loss"], schedule)
        return state, {**metrics, **update_metrics}

    fn = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated(mesh)),
                 donate_argnums=0)
    return Step(fn, shardings, data, mesh)


# ------------------------------------------------------------------------------------------------ GRPO
def completion_logprobs(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef,
                        prompt_len: int, logprob_chunk: int | None = LOGPROB_CHUNK) -> jax.Array:
    """log pi(token) of each completion token [B, N] under params (vocab projection only on completion positions,
    `logprob_chunk` of them at a time; None = all at once).

    batch: input_ids / attention_mask [B, P + N] (prompt left-padded to P, then the N sampled tokens).
    """
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"])
    return chunked_token_logprobs(model, hidden[:, prompt_len - 1:-1], batch["input_ids"][:, prompt_len:],
                                  logprob_chunk)


def make_logprob_fn(graphdef: nnx.GraphDef, shardings: TrainState, mesh: Mesh, *, prompt_len: int,
                    logprob_chunk: int | None = LOGPROB_CHUNK) -> LogprobFn:
    """Jitted (params, batch) -> completion log-probs [B, N] (old-policy and reference log-probs), run under `mesh`."""
    fn = functools.partial(completion_logprobs, graphdef=graphdef, prompt_len=prompt_len, logprob_chunk=logprob_chunk)
    return LogprobFn(jax.jit(fn, in_shardings=(shardings.params, batch_sharding(mesh)),
                             out_shardings=batch_sharding(mesh)), mesh)


def grpo_loss(params: Any, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef, prompt_len: int,
              strategy: losses.Strategy, loss_cfg: losses.CATLossConfig, denominator: Any,
              logprob_chunk: int | None = LOGPROB_CHUNK) -> tuple[jax.Array, dict]:
    """CAT-GRPO loss of a (micro-)batch of rollouts given its slice of the whole batch's `advantages` and the whole
    batch's `denominator`: micro-batch losses and gradients sum to the whole batch's."""
    with _dropout_scope(batch):
        logprobs = completion_logprobs(params, batch, graphdef=graphdef, prompt_len=prompt_len,
                                       logprob_chunk=logprob_chunk)
    loss, metrics = losses.cat_rl_loss(
        logprobs, batch.get("old_logprobs"), batch.get("ref_logprobs"), None, None, batch["completion_mask"],
        strategy, advantages=batch["advantages"], loss_denominator=denominator, config=loss_cfg,
    )
    metrics = dict(metrics, tokens=jnp.sum(batch["completion_mask"]).astype(jnp.float32))
    metrics.pop("loss", None)
    return loss, _float_metrics(metrics)


def needs_cat_state(strategy: losses.Strategy, loss_cfg: losses.CATLossConfig) -> bool:
    """Whether the advantages carry state across steps (running normalisation, BoN reward history)."""
    return loss_cfg.normalize == "running" or (isinstance(strategy, losses.BestOfN) and loss_cfg.bon_quantile == "history")


def make_grpo_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh, *,
                   strategy: losses.Strategy, loss_cfg: losses.CATLossConfig, prompt_len: int,
                   micro_batches: int = 1, schedule: optax.Schedule | None = None,
                   logprob_chunk: int | None = LOGPROB_CHUNK) -> Step:
    """The jitted GRPO step; batch = `RolloutBatch.arrays()` (input_ids, attention_mask, completion_mask, rewards,
    group_ids, answer_ids, optional old_logprobs / ref_logprobs).

    The CAT advantages of the whole rollout batch are computed once (`losses.cat_advantages`: group statistics,
    p, the dynamic majority k from answer_ids, clipping, normalisation), then the loss of each micro-batch uses
    its rows' advantages and the whole batch's denominator. State carried across steps (running normalisation,
    BoN history) lives in TrainState.cat_state.
    """
    data = batch_sharding(mesh)
    stateful = needs_cat_state(strategy, loss_cfg)

    def step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
        batch = dict(batch)
        mask = batch["completion_mask"]
        advantages, adv_metrics = losses.cat_advantages(
            strategy, rewards=batch["rewards"], group_ids=batch["group_ids"], config=loss_cfg,
            answer_ids=batch["answer_ids"] if isinstance(strategy, losses.MajorityAtN) else None,
            old_logprobs=batch.get("old_logprobs") if loss_cfg.p_source == "sequence" else None,
            mask=mask if loss_cfg.p_source == "sequence" else None,
            state=state.cat_state if stateful else None,
        )
        cat_state = adv_metrics.pop("state", state.cat_state)
        if loss_cfg.p_source == "sequence" and batch.get("old_logprobs") is None:
            raise ValueError("p_source='sequence' needs the rollout policy's log-probs (old_logprobs)")
        batch["advantages"] = advantages
        denominator = losses.loss_denominator(mask, loss_cfg.reduction)
        loss_fn = functools.partial(grpo_loss, graphdef=graphdef, prompt_len=prompt_len, strategy=strategy,
                                    loss_cfg=loss_cfg, denominator=denominator, logprob_chunk=logprob_chunk)
        batch = _with_dropout_rows(graphdef, state.params, batch, state.step)
        grads, metrics = accumulate(trainable_value_and_grad(loss_fn, state.params), trainable_params(state.params),
                                    batch, micro_batches)
        metrics["tokens"] = metrics["tokens"] * micro_batches
        metrics.update(_float_metrics(adv_metrics))
        state, update_metrics = apply_update(tx, state._replace(cat_state=cat_state), grads, metrics["loss"], schedule)
        return state, {**metrics, **update_metrics}

    fn = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated(mesh)),
                 donate_argnums=0)
    return Step(fn, shardings, data, mesh)


# ------------------------------------------------------------------------------------------------ cached builders
_BUILT: dict[Any, Any] = {}


def cached(kind: str, key: tuple, build: Callable[[], Any]) -> Any:
    """build() once per (kind, key) in this process: loops re-run with the same settings (resume, several variants
    from one warm start) reuse the jitted step and its compiled executables instead of recompiling."""
    full = (kind, *key)
    if full not in _BUILT:
        _BUILT[full] = build()
    return _BUILT[full]


def build_training(model: nnx.Module, mesh: Mesh, opt: OptimizerConfig, total_steps: int
                   ) -> tuple[nnx.GraphDef, optax.GradientTransformation, TrainState, optax.Schedule]:
    """(graphdef, optimizer, state shardings, schedule) for `model` on `mesh`, cached per settings."""
    graphdef, _ = split_model(model)

    def build():
        tx = make_optimizer(opt, total_steps)
        return graphdef, tx, state_shardings_for(tx, model, mesh), learning_rate_schedule(opt, total_steps)

    return cached("training", (graphdef, mesh, opt, total_steps), build)


@dataclasses.dataclass(frozen=True)
class RunSteps:
    """What a stage trains with: graphdef, optimizer `tx`, state `shardings`, lr `schedule`, the jitted `step` and
    (GRPO) the jitted `logprob_fn` for old-policy / reference log-probs (None for SFT)."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    shardings: TrainState
    schedule: optax.Schedule
    step: Step
    logprob_fn: LogprobFn | None = None


def steps_for_config(cfg: Any, model: nnx.Module, mesh: Mesh) -> RunSteps:
    """The step(s) of `cfg`'s stage (cfg.train.method) for `model` on `mesh`, built once per settings: what
    `run_sft` / `run_grpo` run and what `jax_cat.training.plan` lowers (`model` may be abstract, `nnx.eval_shape`)."""
    strategy = losses.strategy_from_spec(cfg.strategy)
    t, chunk = cfg.train, cfg.model.logprob_chunk
    graphdef, tx, shardings, schedule = build_training(model, mesh, cfg.optimizer, t.steps)
    if t.method == "sft":
        settings = dict(strategy=strategy, reduction=cfg.loss.reduction, micro_batches=t.micro_batches,
                        logprob_chunk=chunk)
        step = cached("sft_step", (graphdef, mesh, cfg.optimizer, t.steps, *settings.items()),
                      lambda: make_sft_step(graphdef, tx, shardings, mesh, schedule=schedule, **settings))
        return RunSteps(graphdef, tx, shardings, schedule, step)
    prompt_len = cfg.data.max_prompt_len
    settings = dict(strategy=strategy, loss_cfg=cfg.loss_config(), prompt_len=prompt_len,
                    micro_batches=t.micro_batches, logprob_chunk=chunk)
    if needs_cat_state(strategy, settings["loss_cfg"]):  # running normaliser / BoN history
        shardings = with_cat_state(shardings, mesh)
    step = cached("grpo_step", (graphdef, mesh, cfg.optimizer, t.steps, *settings.items()),
                  lambda: make_grpo_step(graphdef, tx, shardings, mesh, schedule=schedule, **settings))
    logprob_fn = cached("logprob", (graphdef, mesh, prompt_len, chunk), lambda: make_logprob_fn(
        graphdef, shardings, mesh, prompt_len=prompt_len, logprob_chunk=chunk))
    return RunSteps(graphdef, tx, shardings, schedule, step, logprob_fn)


__all__ = [
    "DTYPES", "LOGPROB_CHUNK", "LogprobFn", "Step", "TrainState", "abstract_state", "accumulate", "apply_update",
    "build_training", "cached", "chunked_token_logprobs", "completion_logprobs", "mesh_context", "grpo_loss", "init_state", "learning_rate_schedule", "make_grpo_step", "make_logprob_fn",
    "make_optimizer", "make_sft_step", "needs_cat_state", "opt_state_shardings", "param_shardings", "sft_loss",
    "split_micro_batches", "split_model", "state_shardings_for", "with_cat_state", "RunSteps", "steps_for_config",
    "trainable_params", "trainable_value_and_grad", "with_trainable",
]
