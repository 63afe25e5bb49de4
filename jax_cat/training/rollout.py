"""Rollouts for GRPO: sampler -> verifier rewards -> a typed `RolloutBatch` named as `jax_cat.losses` names things.

`collect_rollouts` samples `group_size` completions of each prompt of a batch with the current params (one prefill
per prompt, `jax_cat.sampling.sample_tokens(group_ids=...)`), decodes this process's rows, scores them with the
verifier (`jax_cat.rewards.compute_rewards`), turns extracted answers into integer `answer_ids` for the dynamic
majority threshold (same answer -> same id; no answer -> -1) and assembles global arrays on the mesh.
Row r of the global batch is sample r % G of prompt r // G, so `group_ids = r // G`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jax_cat.sampling import sample_tokens
from jax_cat.sharding import batch_sharding, replicated
from jax_cat.training.config import RolloutConfig
from jax_cat.training.steps import mesh_context


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """One rollout batch, B = prompts x group_size rows, P prompt slots (left-padded), N completion slots.

    input_ids [B, P+N] int32 (prompt then completion), attention_mask [B, P+N] int32 (1 = real token),
    completion_mask [B, N] int32 (the loss `mask`: sampled tokens up to and including EOS), rewards [B] float32,
    group_ids [B] int32 (row // group_size), answer_ids [B] int32 (-1 = no answer), old_logprobs [B, N] (rollout
    policy, None = on-policy), ref_logprobs [B, N] (reference model, None = no KL).
    """

    input_ids: jax.Array
    attention_mask: jax.Array
    completion_mask: jax.Array
    rewards: jax.Array
    group_ids: jax.Array
    answer_ids: jax.Array
    old_logprobs: jax.Array | None = None
    ref_logprobs: jax.Array | None = None

    @property
    def prompt_len(self) -> int:
        """The (left-padded) prompt width: input_ids' columns before the completion's, where the loss starts."""
        return self.input_ids.shape[1] - self.completion_mask.shape[1]

    def arrays(self) -> dict[str, jax.Array]:
        """The fields that are set, as the dict the GRPO step takes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array (all of it in a single process), in global order."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    shards = {}
    for s in x.addressable_shards:
        start = s.index[0].start or 0
        shards.setdefault(start, np.asarray(s.data))
    return np.concatenate([shards[k] for k in sorted(shards)], axis=0)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Process-local numpy rows -> global arrays split over (data, fsdp) (`jax.make_array_from_process_local_data`)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def answer_ids_for(answers: Sequence[str | None]) -> np.ndarray:
    """Integer ids for answer keys: equal keys share an id, None (no answer) is -1."""
    table: dict[str, int] = {}
    return np.asarray([-1 if a is None else table.setdefault(a, len(table)) for a in answers], np.int32)


def _assemble_rows(prompt_ids, prompt_mask, tokens, lengths, rewards, answer_ids, *, group_size: int):
    rows = tokens.shape[0]
    completion_mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    ids = jnp.repeat(prompt_ids.astype(jnp.int32), group_size, axis=0)
    mask = jnp.repeat(prompt_mask.astype(jnp.int32), group_size, axis=0)
    return RolloutBatch(
        input_ids=jnp.concatenate([ids, tokens.astype(jnp.int32)], axis=1),
        attention_mask=jnp.concatenate([mask, completion_mask], axis=1),
        completion_mask=completion_mask,
        rewards=rewards.astype(jnp.float32),
        group_ids=(jnp.arange(rows, dtype=jnp.int32) // group_size),
        answer_ids=answer_ids.astype(jnp.int32),
    )


@functools.lru_cache(maxsize=None)
def _row_inputs(num_prompts: int, group_size: int, impl: Any, sharding: Any) -> Any:
    """Jitted key data -> (row_prompt [B], row_keys [B]) made directly with the batch sharding: row r samples prompt
    r // G with key fold_in(key, r). Built inside jit from a host value every process holds (the key's data), so it
    also works where the mesh spans processes (a device_put onto devices of other processes is refused)."""
    def rows(key_data):
        key = jax.random.wrap_key_data(key_data, impl=impl)
        row_ids = jnp.arange(num_prompts * group_size, dtype=jnp.uint32)
        return (jnp.repeat(jnp.arange(num_prompts, dtype=jnp.int32), group_size),
                jax.vmap(lambda r: jax.random.fold_in(key, r))(row_ids))

    return jax.jit(rows, out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _assembler(group_size: int, sharding: Any) -> Any:
    """The jitted assembly with every output placed by the batch sharding: left to XLA, rows built from `arange`
    (group_ids) come out replicated, and the step (in_shardings = batch split) refuses them on a multi-device
    mesh. Inside jit the constraint holds for global arrays, so it is also right when each process holds its rows."""
    return jax.jit(functools.partial(_assemble_rows, group_size=group_size), out_shardings=sharding)


def collect_rollouts(model: nnx.Module, tokenizer: Any, prompts: Mapping[str, Any], *, key: jax.Array,
                     cfg: RolloutConfig, mesh: Mesh, eos_token_ids: Sequence[int], pad_token_id: int,
                     reward_fn: Any = None) -> tuple[RolloutBatch, dict[str, float]]:
    """Sample, score and assemble one rollout batch from a process-local prompt batch (a `prompt_pipeline` batch:
    input_ids / attention_mask [b, P] left-padded, answer [b]). Returns (global RolloutBatch, host stats)."""
    from jax_cat.evaluate import answer_key

    g = cfg.group_size
    local_prompts = np.asarray(prompts["input_ids"], np.int32)
    b = local_prompts.shape[0]
    prompt_ids, attention_mask = global_batch((local_prompts, np.asarray(prompts["attention_mask"], np.int32)), mesh)
    num_prompts = prompt_ids.shape[0]
    sharding = batch_sharding(mesh)
    group_ids, row_keys = _row_inputs(num_prompts, g, jax.random.key_impl(key), sharding)(
        np.asarray(jax.random.key_data(key)))
    with mesh_context(mesh):  # the model's batch constraints (activations, KV cache) hold in the sampler too
        out = sample_tokens(model, prompt_ids, attention_mask, max_new_tokens=cfg.max_new_tokens, row_keys=row_keys,
                            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            eos_token_ids=tuple(eos_token_ids), pad_token_id=pad_token_id, group_ids=group_ids)
    tokens, lengths, ended = local_rows(out.tokens), local_rows(out.lengths), local_rows(out.ended_with_eos)
    texts = [tokenizer.decode(t[: n - int(e)], skip_special_tokens=True) for t, n, e in zip(tokens, lengths, ended)]
    golds = [str(a) for a in prompts["answer"] for _ in range(g)]
    if reward_fn is None:
        from jax_cat.rewards import compute_rewards

        rewards = np.asarray(compute_rewards(texts, golds), np.float32)
    else:
        rewards = np.asarray(reward_fn(texts, golds), np.float32)
    answer_ids = answer_ids_for([answer_key(t) for t in texts])
    rewards_g, answer_ids_g = global_batch((rewards, answer_ids), mesh)
    batch = _assembler(g, sharding)(prompt_ids, attention_mask, out.tokens, out.lengths, rewards_g, answer_ids_g)
    groups = rewards.reshape(b, g)
    stats = {  # reward and pass@1 over the global batch; the rest over this process's rows
        "reward": float(jnp.mean(batch.rewards)),
        "pass@1": float(jnp.mean(batch.rewards > 0)),
        "pass@group": float((groups > 0).any(axis=1).mean()),
        "answered": float(np.mean(answer_ids >= 0)),
        "completion_len": float(lengths.mean()),
        "sampled_tokens": float(lengths.sum()),
    }
    return batch, stats


def lower_rollout_sampler(model: nnx.Module, mesh: Mesh, cfg: RolloutConfig, *, num_prompts: int, prompt_len: int,
                          eos_token_ids: Sequence[int], pad_token_id: int, with_mesh: bool = True) -> Any:
    """The sampler program `collect_rollouts` runs for `num_prompts` prompts of `prompt_len` slots, lowered (not run)
    from `model`'s shapes: `model` may be abstract (its params `jax.ShapeDtypeStruct`s with their shardings). The same
    jitted function, static settings and input shardings as `sample_tokens(..., group_ids=...)` there, under the
    same mesh context (`with_mesh=False`: outside it, as before issue 20, for comparison); for
    `jax_cat.training.plan`."""
    from jax_cat.sampling.engine import SamplingParams, _sample_core

    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    rows = num_prompts * cfg.group_size
    data, rep = batch_sharding(mesh), replicated(mesh)
    sds = jax.ShapeDtypeStruct
    graphdef, state = nnx.split(model)
    key_dtype = jax.random.key(0).dtype
    with mesh_context(mesh if with_mesh else None):
        return _sample_core.lower(
            graphdef, state, sds((num_prompts, prompt_len), jnp.int32, sharding=data),
            sds((num_prompts, prompt_len), jnp.bool_, sharding=data), sds((rows,), key_dtype, sharding=data),
            sds((rows,), jnp.bool_, sharding=rep), sds((), jnp.float32), sds((), jnp.float32),
            sds((rows,), jnp.int32, sharding=data),
            max_new_tokens=int(cfg.max_new_tokens), greedy=params.greedy, top_k=params.top_k,
            use_top_p=params.top_p < 1.0, eos_token_ids=tuple(int(e) for e in eos_token_ids),
            pad_token_id=int(pad_token_id), cache_dtype=None,
        )


def logprob_passes(cfg: Any) -> tuple[bool, bool]:
    """(old_logprobs, ref_logprobs): the log-prob passes after each rollout, from the run's loss config (the preset
    with the recipe's changes, `Config.loss_config`): old-policy log-probs for several updates per batch or a
    sequence-level p, reference log-probs for a KL term (beta > 0). `run_grpo` makes them; `--plan` sizes them."""
    loss = cfg.loss_config()
    return cfg.train.updates_per_batch > 1 or loss.p_source == "sequence", loss.beta > 0
