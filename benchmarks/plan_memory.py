"""AOT memory planning and compile time of the train step for real model shapes, from abstract shapes (no weights).

Lowers and compiles one training step (forward, next-token cross-entropy, backward, AdamW update with float32
master weights; parameters and optimizer state sharded by their logical axes, the batch over (data, fsdp), buffers
donated) for a Qwen2.5 shape on a mesh of forced CPU devices, and reports XLA's per-device memory analysis
(`compiled.memory_analysis()`) and the compile time. Nothing is allocated: the model is `nnx.eval_shape`d and the
step is lowered from `jax.ShapeDtypeStruct`s.

    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --scan --remat full          # one configuration
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --depths 4,14,28 --scan      # compile time vs depth
    for m in 0.5b 1.5b 7b; do for r in full none; do                                     # docs/planning.md's runs
      .venv/bin/python benchmarks/plan_memory.py --model $m --scan --remat $r --lm-chunk 1024 --json plan.jsonl
    done; done; .venv/bin/python benchmarks/plan_memory.py --table plan.jsonl

XLA:CPU's numbers stand in for an accelerator's: the buffer assignment is the same algorithm, but fusion and
scheduling differ per backend, so treat them as estimates (docs/planning.md says how they compare with the
closed-form counts).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

# Qwen2.5 shapes (config.json of the hub checkpoints); Qwen2.5-Math-1.5B has the 1.5B shape.
MODELS = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, head_dim=128, tie_word_embeddings=False),
}
GIB = 2**30


def model_config(name: str, layers: int | None = None):
    from jax_cat.models import ModelConfig

    fields = dict(MODELS[name], model_type="qwen2", attention_bias=True, rms_norm_eps=1e-6, rope_theta=1e6,
                  max_position_embeddings=32768)
    if layers is not None:
        fields["num_hidden_layers"] = layers
    return ModelConfig(**fields)


def plan(name: str, *, layers: int | None, batch: int, seq: int, scan: bool, remat: str, dtype: str,
         mesh_shape: tuple[int, int, int], lm_chunk: int | None = None) -> dict:
    """Compiles the step for one configuration; returns the memory analysis (bytes per device) and timings."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jax_cat.models import CausalLM
    from jax_cat.sharding import batch_sharding, make_mesh, state_shardings

    config = model_config(name, layers)
    compute = {"bf16": jnp.bfloat16, "f32": jnp.float32}[dtype]
    mesh = make_mesh(*mesh_shape)
    abstract = nnx.eval_shape(lambda: CausalLM(
        config, rngs=nnx.Rngs(0), dtype=compute, param_dtype=jnp.float32, remat=remat, scan_layers=scan))
    graphdef, params = nnx.split(abstract, nnx.Param)
    tx = optax.adamw(1e-5, weight_decay=0.0)
    opt_state = jax.eval_shape(tx.init, params)
    p_shard = state_shardings(params, mesh)
    o_shard = _moment_shardings(opt_state, params, p_shard, mesh)
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=batch_sharding(mesh))

    def loss_fn(params, ids):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(ids)[:, :-1]
        targets = ids[:, 1:]
        if lm_chunk:
            logp = model.token_logprobs_from_hidden(hidden, targets, chunk_size=lm_chunk)
        else:
            logits = model.logits_from_hidden(hidden)
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        return -jnp.mean(logp)

    def step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, in_shardings=(p_shard, o_shard, batch_sharding(mesh)),
                     out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
    abstract_args = (_with_shardings(params, p_shard), _with_shardings(opt_state, o_shard), ids)
    start = time.perf_counter()
    with jax.set_mesh(mesh):  # lets the model constrain activations to batch sharding (decoder.shard_batch)
        lowered = jitted.lower(*abstract_args)
    lower_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    mem = compiled.memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return dict(
        model=name, layers=config.num_hidden_layers, params=n_params, batch=batch, seq=seq, scan=scan, remat=remat,
        dtype=dtype, mesh=dict(zip(("data", "fsdp", "tensor"), mesh_shape)), lm_chunk=lm_chunk,
        lower_s=round(lower_s, 2), compile_s=round(compile_s, 2), compile_cpu_s=round(compile_cpu_s, 2),
        argument_gib=mem.argument_size_in_bytes / GIB, output_gib=mem.output_size_in_bytes / GIB,
        alias_gib=mem.alias_size_in_bytes / GIB, temp_gib=mem.temp_size_in_bytes / GIB,
        peak_gib=(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                  + mem.temp_size_in_bytes) / GIB,
    )


def plan_sampler(name: str, *, layers: int | None, batch: int, prompt: int, new: int, scan: bool, dtype: str) -> dict:
    """Compile time and memory of a greedy decode loop (prefill, then `lax.while_loop` over forward_cached steps),
    the shape of the project's sampler, on one device from abstract shapes."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_cat.models import CausalLM

    config = model_config(name, layers)
    compute = {"bf16": jnp.bfloat16, "f32": jnp.float32}[dtype]
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0), dtype=compute, scan_layers=scan))
    graphdef, state = nnx.split(abstract)
    max_len = prompt + new

    def decode(state, prompt_ids):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(batch, max_len)
        slots = jnp.arange(max_len)
        positions = jnp.broadcast_to(jnp.arange(prompt), (batch, prompt))
        logits, cache = model.forward_cached(prompt_ids, positions, cache, 0, jnp.broadcast_to(slots < prompt, (batch, max_len)))
        tokens = jnp.zeros((batch, new), jnp.int32)

        def body(carry):
            step, cache, last, tokens = carry
            slot = prompt + step
            kv_mask = jnp.broadcast_to(slots <= slot, (batch, max_len))
            logits, cache = model.forward_cached(last[:, None], jnp.full((batch, 1), slot), cache, slot, kv_mask)
            tok = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
            return step + 1, cache, tok, tokens.at[:, step].set(tok)

        last = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return jax.lax.while_loop(lambda c: c[0] < new - 1, body, (jnp.int32(0), cache, last, tokens))[3]

    ids = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    start = time.perf_counter()
    lowered = jax.jit(decode).lower(state, ids)
    lower_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    mem = compiled.memory_analysis()
    return dict(model=name, what="sampler", layers=config.num_hidden_layers, batch=batch, prompt=prompt, new=new,
                scan=scan, lower_s=round(lower_s, 2), compile_s=round(compile_s, 2),
                compile_cpu_s=round(compile_cpu_s, 2), temp_gib=mem.temp_size_in_bytes / GIB,
                argument_gib=mem.argument_size_in_bytes / GIB)


def _moment_shardings(opt_state, params, p_shard, mesh):
    """Shardings for optax state: any subtree shaped like `params` gets the parameters' shardings."""
    import jax

    p_struct = jax.tree.structure(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def walk(node):
        try:
            if jax.tree.structure(node) == p_struct:
                return p_shard
        except Exception:
            pass
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(x) for x in node))
        if isinstance(node, tuple | list):
            return type(node)(walk(x) for x in node)
        return jax.tree.map(lambda _: replicated, node)

    return walk(opt_state)


def _with_shardings(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


ROLLOUT_TOKENS = 64 * (512 + 1024)  # a GRPO rollout batch: 64 samples of a 512-token prompt + 1024 new tokens
DEVICE_GIB = (16, 80, 141)


def kv_cache_gib(name: str, tokens: int, bytes_per: int = 2) -> float:
    """K and V of every layer for `tokens` cached tokens (bf16 by default)."""
    c = MODELS[name]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * bytes_per * tokens / GIB


def table(rows: list[dict]) -> str:
    """docs/planning.md's table from --json results (remat full and none for each model, 8-device FSDP mesh)."""
    by = {(r["model"], r["remat"]): r for r in rows}
    out = ["| model | params | train state 16N (f32 master + grads + AdamW) | per device, 8-dev FSDP, remat full / none "
           "(AOT) | KV cache, 64 x 1536 rollout tokens (bf16) | 1 device of 16 / 80 / 141 GiB "
           "(remat full) | 8 devices of 16 / 80 / 141 GiB (remat full / none) |",
           "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        full, none = by.get((name, "full")), by.get((name, "none"))
        if not full or not none:
            continue
        n = full["params"]
        state = 16 * n / GIB
        kv = kv_cache_gib(name, ROLLOUT_TOKENS)
        single = state + full["temp_gib"] + kv  # whole state on one device + one sequence's activations + rollouts
        fits1 = " / ".join("yes" if single <= cap else "no" for cap in DEVICE_GIB)
        fits8 = " / ".join(
            ("yes" if full["peak_gib"] + kv / 8 <= cap else "no") + "/" + ("yes" if none["peak_gib"] + kv / 8 <= cap
                                                                          else "no") for cap in DEVICE_GIB)
        out.append(f"| {name} | {n / 1e9:.2f}B | {state:.1f} GiB | {full['peak_gib']:.1f} / {none['peak_gib']:.1f} GiB "
                   f"| {kv:.1f} GiB | {fits1} (needs ~{single:.0f} GiB) | {fits8} |")
    return "\n".join(out)


def _append_json(path: Path | None, result: dict) -> None:
    """Append one result as a JSON line to --json's file (nothing when --json is not given)."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="1.5b")
    parser.add_argument("--layers", type=int, default=None, help="override the depth")
    parser.add_argument("--depths", type=str, default=None, help="comma-separated depths: compile time vs depth")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--scan", action="store_true", help="scan over stacked layers")
    parser.add_argument("--remat", default="none", help="none | full | dots | dots_no_batch")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16", help="compute dtype (params are f32)")
    parser.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--lm-chunk", type=int, default=None, help="vocab projection + loss in chunks of T")
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    parser.add_argument("--sampler", action="store_true", help="compile the greedy decode loop instead (1 device)")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=512)
    parser.add_argument("--table", type=Path, default=None, help="print docs/planning.md's table from a --json file")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    depths = [int(d) for d in args.depths.split(",")] if args.depths else [args.layers]
    for depth in depths:
        if args.sampler:
            result = plan_sampler(args.model, layers=depth, batch=args.batch, prompt=args.prompt, new=args.new,
                                  scan=args.scan, dtype=args.dtype)
            print(f"sampler {args.model} L={result['layers']} B={args.batch} prompt {args.prompt} + {args.new} new "
                  f"{'scan' if args.scan else 'loop'}: compile {result['compile_s']:.1f}s wall, "
                  f"{result['compile_cpu_s']:.1f}s CPU (lower {result['lower_s']:.1f}s); temp "
                  f"{result['temp_gib']:.2f} GiB", flush=True)
            _append_json(args.json, result)
            continue
        result = plan(args.model, layers=depth, batch=args.batch, seq=args.seq, scan=args.scan, remat=args.remat,
                      dtype=args.dtype, mesh_shape=mesh_shape, lm_chunk=args.lm_chunk)
        print(f"{result['model']} L={result['layers']} ({result['params'] / 1e9:.2f}B) B={args.batch} T={args.seq} "
              f"{'scan' if args.scan else 'loop'} remat={args.remat} {args.dtype} mesh={args.mesh} "
              f"lm_chunk={args.lm_chunk}: compile {result['compile_s']:.1f}s wall, {result['compile_cpu_s']:.1f}s CPU "
              f"(lower {result['lower_s']:.1f}s); "
              f"per device: args {result['argument_gib']:.2f} GiB, temp {result['temp_gib']:.2f} GiB, "
              f"peak ~{result['peak_gib']:.2f} GiB", flush=True)
        _append_json(args.json, result)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    n = next((sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--devices"), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
