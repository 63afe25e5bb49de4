"""AOT memory plan and compile time of the trainer's own programs for real model shapes, from abstract shapes.

What `python -m jax_cat.train --config RECIPE --plan N` prints, for a named Qwen2.5 shape instead of a checkpoint:
the shape's config.json is written to a temporary folder (no weights), `model.path` points there, and
`jax_cat.training.plan.memory_plan` lowers and compiles the recipe's own training step (`steps.steps_for_config`,
the `Step` `run_sft` / `run_grpo` call), its rollout sampler and log-prob pass on a mesh of forced CPU devices, then
reads XLA's per-device buffer assignment (`compiled.memory_analysis()`). Nothing is allocated.

    .venv/bin/python benchmarks/plan_memory.py --model 1.5b                              # the 1.5B recipe, 8 devices
    R=docs/results_data/plan_memory.jsonl                                               # docs/planning.md's rows:
    taskset -c 0 .venv/bin/python benchmarks/plan_memory.py --model 1.5b --cli --json $R  # + `--plan` compared
    for m in 0.5b 7b; do taskset -c 0 .venv/bin/python benchmarks/plan_memory.py --model $m --json $R; done
    taskset -c 0 .venv/bin/python benchmarks/plan_memory.py --model 1.5b --set model.remat=false --json $R
    taskset -c 0 .venv/bin/python benchmarks/plan_memory.py --model 1.5b --set train.method=sft --json $R
    .venv/bin/python benchmarks/plan_memory.py --table $R --docs-into docs/planning.md   # the table, from $R
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --depths 4,14,28            # compile time vs depth
    .venv/bin/python benchmarks/plan_memory.py --model 1.5b --layers 2 --before         # + the step as run before

--before also lowers the training step and the sampler the way the trainer ran them before issue 20 (the step's
jitted function outside the mesh context with full [B, T, vocab] logits; the sampler outside the mesh), for the
ratio. --cli also runs `python -m jax_cat.train --config RECIPE --set model.path=FOLDER --plan N` on the same
config.json in a subprocess and records whether it printed the same plan. Each JSON line records the commit
(and whether the tree was dirty), the CPU (benchmarks/report.py's `cpu_info`), library versions, the CPUs the
process may run on, its CPU seconds and the exact command. XLA:CPU's numbers stand in for an accelerator's: the buffer assignment is the same algorithm, but fusion
and scheduling differ per backend, so treat them as estimates (docs/planning.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def context() -> dict:
    """What a row's figures depend on besides its settings: commit, CPU, library versions, the CPUs this process may
    use (taskset), the command line."""
    from benchmarks.report import cpu_info, git_commit, library_versions

    return dict(**git_commit(), cpu=cpu_info(), libraries=library_versions(), command=" ".join(sys.argv),
                cpus_allowed=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                xla_flags=os.environ.get("XLA_FLAGS", ""))


_FIGURES = re.compile(r"^(training step|rollouts \(sampler\)|log-prob pass)" + r"\s+(-?[\d.]+)" * 5, re.M)


def plan_figures(text: str) -> dict[str, list[float]]:
    """phase -> [params, optim., temp, other, peak] as a `--plan` table prints them (the figures to compare)."""
    return {m.group(1): [float(v) for v in m.groups()[1:]] for m in _FIGURES.finditer(text)}


def cli_plan(recipe: str, folder: Path, overrides: dict, devices: int) -> str:
    """What `python -m jax_cat.train --config RECIPE --set model.path=FOLDER ... --plan N` prints (a subprocess)."""
    sets = [a for k, v in {**overrides, "model.path": str(folder)}.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # --plan forces the CPU devices itself
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "jax_cat.train", "--config", recipe, *sets, "--plan", str(devices)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"--plan failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def measure(name: str, *, recipe: str, overrides: list[str], layers: int | None, devices: int,
            compare_before: bool, phase: str = "training step", cli: bool = False) -> dict:
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
        start, cpu0 = time.perf_counter(), time.process_time()
        result = plan.memory_plan(cfg, mesh, model_config=config)
        wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
        out = dict(model=name, layers=config.num_hidden_layers, params=result.num_params, recipe=recipe,
                   overrides=sets, mesh=result.mesh, method=result.method, remat=str(cfg.model.remat),
                   scan=cfg.model.scan_layers, logprob_chunk=cfg.model.logprob_chunk,
                   phases=[_phase_dict(p) for p in result.phases], kv_cache_gib=result.kv_cache / GIB,
                   peak_gib=result.peak / GIB, fits={str(k): v for k, v in result.fits().items()},
                   devices=devices, wall_s=round(wall, 1), cpu_s=round(cpu_s, 1), load_avg=os.getloadavg()[0],
                   jax=jax.__version__, context=context(),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), text=plan.format_plan(result, recipe))
        chosen = next(p for p in out["phases"] if p["name"] == phase)
        out.update(what=phase, compile_s=chosen["compile_s"], compile_cpu_s=chosen["compile_cpu_s"])
        if compare_before:
            out["before"] = before(cfg, mesh, config)
        if cli:
            text = cli_plan(recipe, folder, sets, devices)
            out["cli"] = dict(text=text, same_figures=plan_figures(text) == plan_figures(out["text"]))
    return out


def table(rows: list[dict]) -> str:
    """docs/planning.md's table from --json results: one row per (model, method, remat) of the recipe on its mesh."""
    out = ["| model | params | method | mesh | remat | per device: params + AdamW | training step temp / peak | rollouts temp / "
           "peak (KV cache) | largest peak | fits 16 / 24 / 40 / 80 / 96 / 141 GiB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    # the recipe's rows first, then other methods, then without remat; each by model size
    key = lambda r: (r["remat"] == "False", r["method"] != "grpo", r["params"])  # noqa: E731
    for r in sorted(rows, key=key):
        ph = {p["name"]: p for p in r["phases"]}
        t = ph["training step"]
        s = ph.get("rollouts (sampler)")
        mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
        roll = f"{s['temp_gib']:.1f} / {s['peak_gib']:.1f} GiB ({r['kv_cache_gib']:.1f})" if s else "-"
        fits = " / ".join("yes" if r["fits"][k] else "no" for k in ("16", "24", "40", "80", "96", "141"))
        remat = {"True": "full", "False": "none"}.get(r["remat"], r["remat"])
        out.append(f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['method']} | {mesh} | {remat} | "
                   f"{(t['params_gib'] + t['optimizer_gib']):.2f} GiB | {t['temp_gib']:.1f} / {t['peak_gib']:.1f} GiB | "
                   f"{roll} | **{r['peak_gib']:.1f} GiB** | {fits} |")
    return "\n".join(out)


TABLE_BEGIN = "<!-- plan_memory table: generated by benchmarks/plan_memory.py --table ... --docs-into; do not edit -->"
TABLE_END = "<!-- end of plan_memory table -->"


def table_source(rows: list[dict], path: Path) -> str:
    """The line under the table: which results file, commits, CPU, date and load the rows come from."""
    ctx = [r.get("context", {}) for r in rows]
    commits = sorted({c.get("commit", "?") + ("+dirty" if c.get("dirty") else "") for c in ctx})
    cpus = sorted({c.get("cpu", {}).get("model", "?") for c in ctx})
    pinned = sorted({str(c.get("cpus_allowed")) for c in ctx})
    dates = sorted(r["date"] for r in rows)
    return (f"Rows from `{path}` (generated, not typed): commit {', '.join(commits)}; {'; '.join(cpus)}; "
            f"CPUs allowed {', '.join(pinned)}; {dates[0]} to {dates[-1]}; jax {rows[0]['jax']}; load average "
            f"{min(r['load_avg'] for r in rows):.1f}-{max(r['load_avg'] for r in rows):.1f}; AOT CPU s a row "
            f"{min(r.get('cpu_s', 0) for r in rows):.0f}-{max(r.get('cpu_s', 0) for r in rows):.0f}."
            + "".join(_row_note(r) for r in rows if r["overrides"] or "before" in r))


def _row_note(r: dict) -> str:
    """The settings a row changes from the recipe, and its --before figures (the full-logit step outside the mesh)."""
    sets = ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items()) or "the recipe as is"
    remat = {"True": "full", "False": "none"}.get(r["remat"], r["remat"])
    out = f" The {r['model']} {r['method']} row (remat {remat}): {sets}."
    if "before" in r:
        b, t = r["before"], next(p for p in r["phases"] if p["name"] == "training step")
        out += (f" Its step as the trainer ran it before issue 20 (full [B, T, vocab] logits, no mesh context): temp "
                f"{b['train_temp_gib']:.2f} GiB, peak {b['train_peak_gib']:.2f} GiB (now {t['temp_gib']:.2f} / "
                f"{t['peak_gib']:.2f}: {b['train_peak_gib'] / t['peak_gib']:.1f}x less at peak).")
    return out


def docs_into(doc: Path, text: str) -> None:
    """Replace what stands between TABLE_BEGIN and TABLE_END in `doc` by `text` (atomically)."""
    old = doc.read_text()
    if TABLE_BEGIN not in old or TABLE_END not in old:
        raise SystemExit(f"{doc}: no {TABLE_BEGIN!r} ... {TABLE_END!r} markers to write the table between")
    head, rest = old.split(TABLE_BEGIN, 1)
    new = head + TABLE_BEGIN + "\n" + text + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, doc)


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
    parser.add_argument("--docs-into", type=Path, default=None,
                        help="with --table: write the table (and the --cli plan text) into this markdown file")
    parser.add_argument("--cli", action="store_true",
                        help="also run `python -m jax_cat.train --plan` on the same config.json and compare figures")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        text = table(rows) + "\n\n" + table_source(rows, args.table)
        cli = [r for r in rows if "cli" in r]
        if cli:
            r = cli[-1]
            text += (f"\n\n`--plan` on the {r['model']} row's config.json (`python -m jax_cat.train --config "
                     f"{r['recipe']} --set model.path=FOLDER --plan {r.get('devices', 8)}`), same figures as the row: "
                     f"{'yes' if r['cli']['same_figures'] else 'NO'}:\n\n```\n{r['cli']['text'].strip()}\n```")
        print(text)
        if args.docs_into:
            docs_into(args.docs_into, text)
        return
    depths = [int(d) for d in args.depths.split(",")] if args.depths else [args.layers]
    overrides = list(args.overrides)
    if args.scan:
        overrides.append("model.scan_layers=true")
    if args.remat is not None:
        overrides.append(f"model.remat={'false' if args.remat == 'none' else args.remat}")
    for depth in depths:
        result = measure(args.model, recipe=args.config, overrides=overrides, layers=depth, devices=args.devices,
                         compare_before=args.before, phase="rollouts (sampler)" if args.sampler else "training step",
                         cli=args.cli)
        print(result["text"])
        if "cli" in result:
            print(f"--plan printed the same figures: {result['cli']['same_figures']}")
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
