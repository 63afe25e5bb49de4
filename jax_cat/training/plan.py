"""A memory plan from a recipe before any weights exist: `python -m jax_cat.train --config RECIPE --plan [DEVICES]`.

From the checkpoint's config.json only (the model built with `nnx.eval_shape`, nothing allocated), this lowers and
compiles ahead of time the programs the run itself executes, for the configured mesh:

- the training step (`steps.steps_for_config`: the same `Step` object `run_sft` / `run_grpo` call, with the
  recipe's batch, micro-batches, dtypes, remat, scan and log-prob chunking, under the mesh context),
- GRPO: the rollout sampler (`rollout.lower_rollout_sampler`: data.batch_size prompts of data.max_prompt_len slots,
  rollout.group_size samples each, rollout.max_new_tokens new tokens; its KV cache is sized by those) and, when
  the run uses them, the old-policy / reference log-prob pass,

and reads XLA's per-device buffer assignment (`compiled.memory_analysis()`). Each phase's peak adds what stays
resident on the device while it runs: the train state (float32 masters + optimizer state) during rollouts, the
reference weights when loss.beta > 0. The numbers are XLA's for the backend the plan compiled on; on forced CPU
devices they stand in for an accelerator's (same buffer assignment, different fusion: estimates, docs/planning.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

GIB = 2**30
HBM_GIB = (16, 24, 40, 80, 96, 141)  # common accelerators: v5e / A10 / A100-40 / H100 / v6e... / H200
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One program's per-device memory in bytes: `params` and `optimizer` resident state, `temp` XLA's temporaries,
    `other` the program's other inputs and outputs (batch, metrics, rollout tokens), `peak` all of it at once (plus
    whatever else stays resident meanwhile, e.g. the train state during rollouts), `note` what was lowered."""

    name: str
    params: int
    optimizer: int
    temp: int
    other: int
    peak: int
    note: str = ""
    compile_cpu_s: float = 0.0
    compile_s: float = 0.0  # wall


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The plan of one run: model summary, mesh, the phases, and the largest peak (what must fit a device)."""

    model: str
    num_params: int
    method: str
    mesh: dict[str, int]
    platform: str
    phases: tuple[Phase, ...]
    kv_cache: int = 0  # per device, bytes (GRPO)

    @property
    def peak(self) -> int:
        """The largest peak over all phases, in bytes: what the device must hold."""
        return max(p.peak for p in self.phases)

    def fits(self) -> dict[int, bool]:
        """HBM size (GiB) -> whether the largest peak fits (no headroom left for the runtime: treat near-equal as no)."""
        return {cap: self.peak <= cap * GIB for cap in HBM_GIB}


# ------------------------------------------------------------------------------------------------ devices
def devices_needed(cfg: Any, requested: int | None = None) -> int | None:
    """Devices the plan lowers for: `requested` (> 0) or the product of the mesh sizes (None when one is -1: then
    the local devices decide, as for the run)."""
    if requested:
        return int(requested)
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    return None if -1 in sizes else math.prod(sizes)


def force_host_devices(n: int) -> None:
    """Before JAX starts: let the CPU backend expose `n` devices (XLA_FLAGS), so a mesh larger than this machine can
    be lowered. Raises when JAX already started with fewer."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        import jax

        if len(jax.devices("cpu")) < n:
            raise ValueError(f"--plan needs {n} devices and JAX already started with {len(jax.devices('cpu'))} CPU "
                             f"devices; run it in a fresh process with XLA_FLAGS={HOST_DEVICES_FLAG}={n}")
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(HOST_DEVICES_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{HOST_DEVICES_FLAG}={n}"])


def plan_devices(n: int | None) -> list:
    """`n` devices of the default backend when it has them (a real accelerator host), else `n` CPU devices."""
    import jax

    if n is None:
        return list(jax.devices())
    if len(jax.devices()) >= n:
        return list(jax.devices())[:n]
    cpu = jax.devices("cpu")
    if len(cpu) < n:
        raise ValueError(f"the mesh needs {n} devices, this process has {len(cpu)} CPU devices: start it with "
                         f"XLA_FLAGS={HOST_DEVICES_FLAG}={n} (--plan sets it when JAX has not started yet)")
    return list(cpu)[:n]


def recipe_name(config: str | None) -> str:
    """A recipe's display name: "qwen2.5-math-1.5b_math_maj16" for that name or its .toml path ("" for none)."""
    if not config:
        return ""
    name = Path(config).name
    return name.rsplit(".", 1)[0] if name.endswith((".toml", ".json")) else name


# ------------------------------------------------------------------------------------------------ shapes
def model_config_for(cfg: Any):
    """The ModelConfig of cfg.model.path from its config.json alone ("tiny": the embedded default's; a hub id: only
    its config.json is fetched). No weights are read."""
    from jax_cat.models.hf import read_config
    from jax_cat.training.config import ConfigError

    path = cfg.model.path
    if path == "tiny":
        from jax_cat.models.tiny import tiny_model_config

        return tiny_model_config()
    local = Path(path).expanduser()
    if not local.exists():
        try:
            from huggingface_hub import hf_hub_download

            local = Path(hf_hub_download(path, "config.json")).parent
        except Exception as err:  # offline, unknown repo, ...: say how to plan without the hub
            raise ConfigError(f"model.path={path!r}: cannot read its config.json ({type(err).__name__}); for --plan, "
                              "--set model.path=FOLDER holding the checkpoint's config.json (no weights needed)") from None
    if not (local / "config.json").is_file():
        raise ConfigError(f"model.path={path!r}: no config.json there (expected an HF-format checkpoint folder)")
    return read_config(local)


def abstract_model(cfg: Any, config: Any) -> Any:
    """The CausalLM of cfg.model (dtypes, remat, scan_layers, LoRA and a quantized base as `runtime.load_model`
    builds it), shapes only."""
    from flax import nnx

    from jax_cat.models import CausalLM
    from jax_cat.training.steps import DTYPES

    from jax_cat.models.quant import quantize_model

    m = cfg.model
    return nnx.eval_shape(lambda: quantize_model(CausalLM(config, rngs=nnx.Rngs(0), dtype=DTYPES[m.compute_dtype],
                                                          param_dtype=DTYPES[m.param_dtype], remat=m.remat,
                                                          scan_layers=m.scan_layers, lora=cfg.lora_config()),
                                                 cfg.lora.quantize))


def rollout_arrays(cfg: Any) -> tuple[bool, bool]:
    """(old_logprobs, ref_logprobs): which log-prob passes a GRPO run makes after each rollout (`run_grpo`'s rule)."""
    from jax_cat.training.rollout import logprob_passes

    return logprob_passes(cfg)


def abstract_batch(cfg: Any, mesh: Any) -> dict[str, Any]:
    """ShapeDtypeStructs of the batch the step gets (SFT: the data pipeline's; GRPO: `RolloutBatch.arrays()`)."""
    import jax
    import jax.numpy as jnp

    from jax_cat.sharding import batch_sharding

    sh = batch_sharding(mesh)
    d = cfg.data

    def arr(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

    if cfg.train.method == "sft":
        shape = (d.batch_size, d.max_prompt_len + d.max_target_len)
        return {"input_ids": arr(shape), "attention_mask": arr(shape), "loss_mask": arr(shape)}
    rows, n = d.batch_size * cfg.rollout.group_size, cfg.rollout.max_new_tokens
    t = d.max_prompt_len + n
    batch = {"input_ids": arr((rows, t)), "attention_mask": arr((rows, t)), "completion_mask": arr((rows, n)),
             "rewards": arr((rows,), jnp.float32), "group_ids": arr((rows,)), "answer_ids": arr((rows,))}
    old, ref = rollout_arrays(cfg)
    if old:
        batch["old_logprobs"] = arr((rows, n), jnp.float32)
    if ref:
        batch["ref_logprobs"] = arr((rows, n), jnp.float32)
    return batch


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs / arrays with shardings (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def kv_cache_bytes(config: Any, rows: int, slots: int, dtype: Any, shards: int) -> int:
    """The sampler's K and V cache of `rows` rows x `slots` slots, per device when split over `shards` by batch."""
    import numpy as np

    per_row = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * slots
    return per_row * -(-rows // shards) * np.dtype(dtype).itemsize


def rollout_note(cfg: Any, config: Any, dtype: Any, shards: int) -> str:
    """The start line's memory estimate of a GRPO run's rollouts: the sampler's KV cache per device for the
    recipe's batch (prompts x group_size rows of max_prompt_len + max_new_tokens slots, split by batch over
    `shards` devices), with the command that plans the rest (`--plan`: the lowered programs' own figures)."""
    d, r = cfg.data, cfg.rollout
    kv = kv_cache_bytes(config, d.batch_size * r.group_size, d.max_prompt_len + r.max_new_tokens, dtype, shards)
    return (f"rollout KV cache {kv / GIB:.2f} GiB a device ({shards} device{'s' if shards > 1 else ''} on "
            f"data x fsdp); `python -m jax_cat.train ... --plan` prints the whole per-device plan")


# ------------------------------------------------------------------------------------------------ the plan
def _analysis(lowered: Any) -> Any:
    """XLA's memory analysis of the compiled program, with the compile's CPU seconds as `compile_cpu_s`."""
    import time

    start, wall = time.process_time(), time.perf_counter()
    mem = lowered.compile().memory_analysis()
    return _Analysis(mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                     mem.temp_size_in_bytes, time.process_time() - start, time.perf_counter() - wall)


@dataclasses.dataclass(frozen=True)
class _Analysis:
    argument_size_in_bytes: int
    output_size_in_bytes: int
    alias_size_in_bytes: int
    temp_size_in_bytes: int
    compile_cpu_s: float
    compile_s: float


def memory_plan(cfg: Any, mesh: Any, *, model_config: Any = None) -> MemoryPlan:
    """Lowers and compiles (nothing runs, nothing is allocated) the run's programs for `mesh`; see the module doc."""
    from flax import nnx

    from jax_cat.training import steps
    from jax_cat.training.rollout import lower_rollout_sampler

    config = model_config if model_config is not None else model_config_for(cfg)
    model = abstract_model(cfg, config)
    built = steps.steps_for_config(cfg, model, mesh)
    state = steps.abstract_state(built.tx, model, built.shardings)
    params, optimizer = device_bytes(state.params), device_bytes(state.opt_state) + device_bytes(state.cat_state)
    batch = abstract_batch(cfg, mesh)
    mem = _analysis(built.step.lower(state, batch))
    old, ref = rollout_arrays(cfg) if cfg.train.method == "grpo" else (False, False)
    reference = params if ref else 0  # the reference weights stay on the device through the whole stage
    rows = batch["input_ids"].shape[0]
    t = batch["input_ids"].shape[1]
    micro = cfg.train.micro_batches
    train_peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                  + mem.temp_size_in_bytes + reference)
    phases = [Phase("training step", params, optimizer, mem.temp_size_in_bytes, train_peak - params - optimizer
                    - mem.temp_size_in_bytes, train_peak,
                    f"{rows} x {t} tokens" + (f" in {micro} micro-batches of {rows // micro}" if micro > 1 else ""),
                    mem.compile_cpu_s, mem.compile_s)]
    kv = 0
    if cfg.train.method == "grpo":
        d, r = cfg.data, cfg.rollout
        abstract_params = jax_tree_with_shardings(state.params)
        policy = nnx.merge(built.graphdef, abstract_params)  # what run_grpo samples with: the state's own params
        eos = config.eos_token_ids or ()
        pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
        sampler = _analysis(lower_rollout_sampler(policy, mesh, r, num_prompts=d.batch_size,
                                                  prompt_len=d.max_prompt_len, eos_token_ids=eos, pad_token_id=pad))
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        kv = kv_cache_bytes(config, rows, d.max_prompt_len + r.max_new_tokens, model.dtype, shards)
        other = sampler.argument_size_in_bytes - params + sampler.output_size_in_bytes
        peak = params + optimizer + reference + other + sampler.temp_size_in_bytes
        phases.append(Phase("rollouts (sampler)", params, optimizer, sampler.temp_size_in_bytes, other + reference,
                            peak, f"{d.batch_size} prompts x {r.group_size} samples, {d.max_prompt_len} prompt + "
                                  f"{r.max_new_tokens} new tokens", sampler.compile_cpu_s, sampler.compile_s))
        if old or ref:
            lp = _analysis(built.logprob_fn.lower(state.params, batch))
            other = lp.argument_size_in_bytes - params + lp.output_size_in_bytes
            peak = params + optimizer + reference + other + lp.temp_size_in_bytes
            what = " and ".join(w for w, on in (("old-policy", old), ("reference", ref)) if on)
            phases.append(Phase("log-prob pass", params, optimizer, lp.temp_size_in_bytes, other + reference, peak,
                                f"{what} log-probs of the {rows} x {t} rollout batch", lp.compile_cpu_s, lp.compile_s))
    from jax_cat.models.quant import param_count

    return MemoryPlan(model=config.model_type, num_params=param_count(model), method=cfg.train.method,
                      mesh=dict(mesh.shape), platform=mesh.devices.flat[0].platform, phases=tuple(phases),
                      kv_cache=kv)


def jax_tree_with_shardings(tree: Any) -> Any:
    """The ShapeDtypeStructs of `tree` (keeping their shardings), as a fresh tree."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def format_plan(plan: MemoryPlan, name: str = "") -> str:
    """The table `--plan` prints: per-device GiB of each phase, then the fit against HBM sizes."""
    unit, size = ("GiB", GIB) if plan.peak >= GIB / 4 else ("MiB", 2**20)
    g = lambda b: f"{b / size:8.2f}"  # noqa: E731
    mesh = " x ".join(f"{k}={v}" for k, v in plan.mesh.items())
    devices = math.prod(plan.mesh.values())
    lines = [f"memory plan{(' of ' + name) if name else ''}: {plan.model}, {plan.num_params / 1e9:.2f}B parameters, "
             f"{plan.method}, mesh {mesh} ({devices} {plan.platform} device{'s' if devices > 1 else ''}"
             + (": XLA:CPU estimates of an accelerator's buffers" if plan.platform == "cpu" else "") + ")",
             f"{'per device, ' + unit:<22s}{'params':>8s}{'optim.':>8s}{'temp':>8s}{'other':>8s}{'peak':>8s}   what"]
    for p in plan.phases:
        lines.append(f"{p.name:<22s}{g(p.params)}{g(p.optimizer)}{g(p.temp)}{g(p.other)}{g(p.peak)}   {p.note}")
    if plan.kv_cache:
        lines.append(f"(the rollout KV cache is {plan.kv_cache / size:.2f} {unit} of that per device)")
    fits = plan.fits()
    lines.append(f"largest peak {plan.peak / GIB:.2f} GiB a device; fits (no headroom): "
                 + ", ".join(f"{cap} GiB {'yes' if ok else 'no'}" for cap, ok in fits.items()))
    return "\n".join(lines)


def run_plan(cfg: Any, *, devices: int | None = None, name: str = "", out: Any = None) -> MemoryPlan:
    """`--plan`: mesh from cfg.mesh over `devices` (see `plan_devices`), the memory plan printed to `out`."""
    from jax_cat.training.runtime import build_mesh

    mesh = build_mesh(cfg, plan_devices(devices_needed(cfg, devices)))
    plan = memory_plan(cfg, mesh)
    print(format_plan(plan, name), file=out or sys.stdout, flush=True)
    return plan


__all__ = ["HBM_GIB", "MemoryPlan", "Phase", "abstract_batch", "abstract_model", "device_bytes", "devices_needed",
           "force_host_devices", "format_plan", "kv_cache_bytes", "memory_plan", "model_config_for", "plan_devices",
           "recipe_name", "rollout_arrays", "rollout_note", "run_plan"]
