"""`--plan` figures of full fine-tuning vs LoRA vs QLoRA (int8, nf4) at the Qwen2.5-1.5B and Mistral-7B shapes, per
device on 1 and 8 devices: the trainer's own programs lowered and compiled ahead of time from config.json alone.

Each row is `jax_cat.training.plan.memory_plan` (what `python -m jax_cat.train --config RECIPE --plan N` prints) of
the recipe `mistral-7b_math_lora_maj4` (GRPO, maj@4, 4 prompts x 4 rollouts, 256 + 512 tokens, bf16 compute, scan +
remat) with `model.path` pointing at a folder holding only the shape's config.json, and:

- full FT: lora.rank = 0, float32 masters (AdamW moments for every parameter);
- LoRA: the recipe's adapters (r = 16, alpha 32, q_proj + v_proj) on a bf16 base;
- QLoRA int8 / nf4: the same adapters on the base's projections stored int8 / nf4 (embeddings, norms and lm_head
  stay bf16).

1 device: mesh data=1 (fsdp=1), the recipe's 4 prompts; 8 devices: fsdp=8 (FSDP shards the base, the codes and the
adapters by their embed axis) with 8 prompts (the batch splits by prompt: one a device, 32 rollouts). Forced XLA:CPU devices: the buffer assignment stands in for an accelerator's (estimates, docs/planning.md).
Nothing is allocated. With scanned layers the compile time does not grow with depth, so the shapes are planned
whole (no layer cut). Rows go to a JSON-lines file; --table prints docs/lora.md's table from it.

    PYTHONPATH=. taskset -c 0 .venv/bin/python benchmarks/qlora_plan.py --out docs/results_data/qlora_plan.jsonl
    PYTHONPATH=. .venv/bin/python benchmarks/qlora_plan.py --table docs/results_data/qlora_plan.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RECIPE = "mistral-7b_math_lora_maj4"
SHAPES = {  # config.json of the hub checkpoints (the fields that fix the shapes)
    "qwen2.5-1.5b": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936, hidden_size=1536,
                         intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                         use_sliding_window=False, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643),
    "mistral-7b": dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=32768,
                       sliding_window=None, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
}
SETTINGS = {
    "full FT": {"lora.rank": 0, "lora.quantize": "none", "model.param_dtype": "float32"},
    "LoRA": {"lora.quantize": "none"},
    "QLoRA int8": {"lora.quantize": "int8"},
    "QLoRA nf4": {"lora.quantize": "nf4"},
}
GIB = 2**30


def write_config(shape: str, folder: Path, layers: int | None = None) -> Path:
    """`folder/config.json` of the named shape (bf16 checkpoint), optionally cut to `layers`."""
    fields = dict(SHAPES[shape], hidden_act="silu", torch_dtype="bfloat16")
    if layers is not None:
        fields["num_hidden_layers"] = layers
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields, indent=1) + "\n")
    return folder


def plan_row(shape: str, setting: str, devices: int, *, recipe: str = RECIPE, layers: int | None = None) -> dict:
    """One memory plan as a JSON-able row."""
    import jax

    from jax_cat.training import load_config, plan
    from jax_cat.training.runtime import build_mesh

    with tempfile.TemporaryDirectory(prefix="qlora-plan-") as tmp:
        folder = write_config(shape, Path(tmp) / shape, layers)
        # the batch splits by prompt over (data, fsdp): on 8 devices 8 prompts (1 a device), else the recipe's 4
        sets = {**SETTINGS[setting], "model.path": str(folder), "mesh.data": 1, "mesh.fsdp": devices,
                "data.batch_size": max(load_config(recipe).data.batch_size, devices)}
        cfg = load_config(recipe, sets)
        mesh = build_mesh(cfg, plan.plan_devices(devices))
        start = time.process_time()
        result = plan.memory_plan(cfg, mesh)
        phases = {p.name: dict(params_gib=p.params / GIB, optimizer_gib=p.optimizer / GIB, temp_gib=p.temp / GIB,
                               peak_gib=p.peak / GIB, compile_cpu_s=round(p.compile_cpu_s, 1)) for p in result.phases}
        return dict(shape=shape, layers=plan.model_config_for(cfg).num_hidden_layers, setting=setting,
                    devices=devices, params=result.num_params, recipe=recipe,
                    overrides={k: v for k, v in sets.items() if k != "model.path"}, phases=phases,
                    peak_gib=result.peak / GIB, fits={str(k): v for k, v in result.fits().items()},
                    plan_cpu_s=round(time.process_time() - start, 1), load_avg=round(os.getloadavg()[0], 1),
                    jax=jax.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    text=plan.format_plan(result, recipe))


def table(rows: list[dict]) -> str:
    """docs/lora.md's table: one row per (shape, setting, devices)."""
    out = ["| shape | setting | devices | params + optimizer / device | training step temp / peak | rollouts peak | "
           "largest peak | fits 24 / 40 / 80 GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["phases"]["training step"]
        s = r["phases"].get("rollouts (sampler)")
        fits = " / ".join("yes" if r["fits"][k] else "no" for k in ("24", "40", "80"))
        rollouts = f"{s['peak_gib']:.2f} GiB" if s else "-"
        out.append(f"| {r['shape']} | {r['setting']} | {r['devices']} | {t['params_gib']:.2f} + "
                   f"{t['optimizer_gib']:.2f} GiB | {t['temp_gib']:.2f} / {t['peak_gib']:.2f} GiB | {rollouts} | "
                   f"**{r['peak_gib']:.2f} GiB** | {fits} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="append each row as a JSON line here")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--devices", default="1,8")
    parser.add_argument("--table", type=Path, default=None, help="print the docs table from a --out file")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    for shape in args.shapes.split(","):
        for setting in args.settings.split(","):
            for devices in (int(d) for d in args.devices.split(",")):
                row = plan_row(shape, setting, devices)
                print(row["text"], f"\n(plan CPU s {row['plan_cpu_s']}, load average {row['load_avg']})\n", flush=True)
                if args.out is not None:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
