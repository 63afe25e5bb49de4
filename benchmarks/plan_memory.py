"""AOT memory plan and compile time of the trainer's own programs for real model shapes, from abstract shapes.

What `python -m jax_cat.train --config RECIPE --plan N` prints, for a named Qwen2.5 shape instead of a checkpoint:
the shape's config.json is written to a temporary folder (no weights), `model.path` points there, and
`jax_cat.training.plan.memory_plan` lowers and compiles the recipe's own training step (`steps.steps_for_config`,
the `Step` `run_sft` / `run_grpo` call), its rollout sampler and log-prob pass on a mesh of forced CPU devices, then
reads XLA's per-device buffer assignment (`compiled.memory_analysis()`). Nothing is allocated.

    .venv/bin/python benchmarks/plan_memory.py --model 1.5b                              # the 1.5B recipe, 8 devices
    for m in 0.5b 1.5b 7b; do .venv/bin/python benchmarks/plan_memory.py --model $m --json plan.jsonl; done
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --set model.remat=false --json plan.jsonl
    .venv/bin/python benchmarks/plan_memory.py --table plan.jsonl                       # docs/planning.md's table
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --depths 4,14,28            # compile time vs depth
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --layers 2 --before         # + the step as run before

--before also lowers the training step and the sampler the way the trainer ran them before issue 20 (the step's
jitted function outside the mesh context with full [B, T, vocab] logits; the sampler outside the mesh), for the
ratio. XLA:CPU's numbers stand in for an accelerator's: the buffer assignment is the same algorithm, but fusion
and scheduling differ per backend, so treat them as estimates (docs/planning.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RECIPE = "qwen2.5-math-1.5b_math_maj16"
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


def write_config(name: str, folder: Path, layers: int | None = None) -> Path:
    """`folder/config.json` of the named Qwen2.5 shape (HF keys; bf16 checkpoint), optionally cut to `layers`."""
    fields = dict(MODELS[name], architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                  rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=4096, use_sliding_window=False,
                  bos_token_id=151643, eos_token_id=151643, torch_dtype="bfloat16")
    if layers is not None:
        fields["num_hidden_layers"] = layers
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields, indent=1) + "\n")
    return folder


def _phase_dict(p) -> dict:
    return dict(name=p.name, params_gib=p.params / GIB, optimizer_gib=p.optimizer / GIB, temp_gib=p.temp / GIB,
                other_gib=p.other / GIB, peak_gib=p.peak / GIB, compile_cpu_s=round(p.compile_cpu_s, 2),
                compile_s=round(p.compile_s, 2), note=p.note)


def before(cfg, mesh, config) -> dict:
    """The training step and sampler as the trainer lowered them before issue 20: the step's jitted function
    called outside the mesh context with full-logit log-probs; the sampler outside the mesh."""
    from flax import nnx

    from jax_cat.training import plan, steps
    from jax_cat.training.rollout import lower_rollout_sampler

    cfg0 = cfg.replace(**{"model.logprob_chunk": None})
    model = plan.abstract_model(cfg0, config)
    built = steps.steps_for_config(cfg0, model, mesh)
    state = steps.abstract_state(built.tx, model, built.shardings)
    mem = built.step.fn.lower(state, plan.abstract_batch(cfg0, mesh)).compile().memory_analysis()
    out = dict(train_temp_gib=mem.temp_size_in_bytes / GIB,
               train_peak_gib=(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                               + mem.temp_size_in_bytes) / GIB)
    if cfg.train.method == "grpo":
        policy = nnx.merge(built.graphdef, plan.jax_tree_with_shardings(state.params))
        eos = config.eos_token_ids or (0,)
        sampler = lower_rollout_sampler(policy, mesh, cfg.rollout, num_prompts=cfg.data.batch_size,
                                        prompt_len=cfg.data.max_prompt_len, eos_token_ids=eos,
                                        pad_token_id=eos[0], with_mesh=False).compile().memory_analysis()
        out["sampler_temp_gib"] = sampler.temp_size_in_bytes / GIB
    return out


def measure(name: str, *, recipe: str, overrides: list[str], layers: int | None, devices: int,
            compare_before: bool, phase: str = "training step") -> dict:
    """The memory plan of `recipe` (+ overrides) with the named shape on `devices` devices, as a JSON-able dict;
    its top-level compile_s / compile_cpu_s are `phase`'s (benchmarks/report.py reads them)."""
    import jax

    from jax_cat.training import load_config, plan
    from jax_cat.training.runtime import build_mesh

    with tempfile.TemporaryDirectory(prefix="plan-memory-") as tmp:
        folder = write_config(name, Path(tmp) / name, layers)
        sets = dict(o.split("=", 1) for o in overrides)
        cfg = load_config(recipe, {**sets, "model.path": str(folder)})
        config = plan.model_config_for(cfg)
        mesh = build_mesh(cfg, plan.plan_devices(devices))
        start = time.perf_counter()
        result = plan.memory_plan(cfg, mesh, model_config=config)
        wall = time.perf_counter() - start
        out = dict(model=name, layers=config.num_hidden_layers, params=result.num_params, recipe=recipe,
                   overrides=sets, mesh=result.mesh, method=result.method, remat=str(cfg.model.remat),
                   scan=cfg.model.scan_layers, logprob_chunk=cfg.model.logprob_chunk,
                   phases=[_phase_dict(p) for p in result.phases], kv_cache_gib=result.kv_cache / GIB,
                   peak_gib=result.peak / GIB, fits={str(k): v for k, v in result.fits().items()},
                   wall_s=round(wall, 1), load_avg=os.getloadavg()[0], jax=jax.__version__,
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), text=plan.format_plan(result, recipe))
        chosen = next(p for p in out["phases"] if p["name"] == phase)
        out.update(what=phase, compile_s=chosen["compile_s"], compile_cpu_s=chosen["compile_cpu_s"])
        if compare_before:
            out["before"] = before(cfg, mesh, config)
    return out


def table(rows: list[dict]) -> str:
    """docs/planning.md's table from --json results: one row per (model, remat) of the recipe on its mesh."""
    out = ["| model | params | mesh | remat | per device: params + AdamW | training step temp / peak | rollouts temp / "
           "peak (KV cache) | largest peak | fits 16 / 24 / 40 / 80 / 96 / 141 GiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ph = {p["name"]: p for p in r["phases"]}
        t = ph["training step"]
        s = ph.get("rollouts (sampler)")
        mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
        roll = f"{s['temp_gib']:.1f} / {s['peak_gib']:.1f} GiB ({r['kv_cache_gib']:.1f})" if s else "-"
        fits = " / ".join("yes" if r["fits"][k] else "no" for k in ("16", "24", "40", "80", "96", "141"))
        remat = {"True": "full", "False": "none"}.get(r["remat"], r["remat"])
        out.append(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {mesh} | {remat} | "
                   f"{(t['params_gib'] + t['optimizer_gib']):.2f} GiB | {t['temp_gib']:.1f} / {t['peak_gib']:.1f} GiB | "
                   f"{roll} | **{r['peak_gib']:.1f} GiB** | {fits} |")
    return "\n".join(out)


def _append_json(path: Path | None, result: dict) -> None:
    """Append one result as a JSON line to --json's file (nothing when --json is not given)."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="1.5b")
    parser.add_argument("--config", default=RECIPE, help=f"recipe (default {RECIPE})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--layers", type=int, default=None, help="cut the shape to this many layers")
    parser.add_argument("--depths", type=str, default=None, help="comma-separated depths: compile time vs depth")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--before", action="store_true", help="also the step/sampler as lowered before issue 20")
    parser.add_argument("--scan", action="store_true", help="shorthand for --set model.scan_layers=true")
    parser.add_argument("--remat", default=None, help="shorthand for --set model.remat=... (none = false)")
    parser.add_argument("--sampler", action="store_true",
                        help="report the sampler's compile time at the top level of --json (default: the step's)")
    parser.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    parser.add_argument("--table", type=Path, default=None, help="print docs/planning.md's table from a --json file")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    depths = [int(d) for d in args.depths.split(",")] if args.depths else [args.layers]
    overrides = list(args.overrides)
    if args.scan:
        overrides.append("model.scan_layers=true")
    if args.remat is not None:
        overrides.append(f"model.remat={'false' if args.remat == 'none' else args.remat}")
    for depth in depths:
        result = measure(args.model, recipe=args.config, overrides=overrides, layers=depth, devices=args.devices,
                         compare_before=args.before, phase="rollouts (sampler)" if args.sampler else "training step")
        print(result["text"])
        print("compile CPU s: " + ", ".join(f"{p['name']} {p['compile_cpu_s']:.1f}" for p in result["phases"])
              + f" (plan wall {result['wall_s']:.0f} s, load average {result['load_avg']:.1f})")
        if "before" in result:
            b, t = result["before"], result["phases"][0]
            line = (f"before issue 20: training step temp {b['train_temp_gib']:.2f} GiB (now {t['temp_gib']:.2f}, "
                    f"{b['train_temp_gib'] / t['temp_gib']:.2f}x), peak {b['train_peak_gib']:.2f} GiB (now "
                    f"{t['peak_gib']:.2f})")
            if "sampler_temp_gib" in b:
                s = result["phases"][1]
                line += f"; sampler temp {b['sampler_temp_gib']:.2f} GiB (now {s['temp_gib']:.2f})"
            print(line)
        print(flush=True)
        _append_json(args.json, result)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    n = next((sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "--devices"), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
