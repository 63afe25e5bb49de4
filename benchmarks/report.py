"""Every performance figure of issue 12 in one table, each with its goal beside it and the command that reproduces it.

Runs the benchmarks as subprocesses (each pins its own CPUs; they run one after another), reads their --json
output, and prints one markdown table: figure | measured | goal | verdict (met / not met / not measured: why) |
command. Progress goes to stderr, the table to stdout; --out writes the rows and every benchmark's raw figures as
JSON, and --from re-renders such a file without running anything.

  train step   benchmarks/train_step.py, variant `trainer` (the trainer's own jitted SFT/GRPO step, built from a
               Config by `steps.steps_for_config`) against the same torch + transformers loop, 39.3M Qwen2 shape,
               B=8, T=256, one pinned core and two; goal >= 1.2x tokens/s (wall: the goal's measure; CPU-s beside
               it, the load-robust one). The same step with scanned layers (`trainer_scan`) is shown beside it.
  decode       benchmarks/sampling.py (qwen2-40m, greedy, one pinned thread a side) at B=8 (64 + 128 new) and
               B=64 (64 + 64 new): goal >= 4x `generate` new tokens/s; peak RSS at prompt 768 + 512 new <= torch's.
  compile      benchmarks/plan_memory.py, Qwen2.5-1.5B shape, the 1.5B recipe's own programs (scan over layers),
               AOT from abstract shapes on its 8-device FSDP mesh: train step (remat full) and rollout sampler at
               4/14/28 layers: the 28-layer
               compile < 60 s wall, and flat with depth (28-layer / 4-layer compile CPU time <= 1.5).
  accelerator  benchmarks/accelerator.py: bf16 train-step MFU on the 0.5B shape >= 45 %, batch-1 decode >= 70 % of
               HBM bandwidth; "not measured: no accelerator (CPU only)" on the CPU backend.

    .venv/bin/python benchmarks/report.py --out report.json     # the figures for docs/benchmarks.md
    .venv/bin/python benchmarks/report.py --quick                # fewer rounds and repeats: a few minutes
    .venv/bin/python benchmarks/report.py --only train,compile   # a subset (the other rows: not run)
    .venv/bin/python benchmarks/report.py --from report.json     # the table of an earlier run
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"
GROUPS = ("train", "decode", "compile", "accelerator")
TRAIN_GOAL, DECODE_GOAL, COMPILE_LIMIT_S, FLAT_LIMIT = 1.2, 4.0, 60.0, 1.5
MFU_GOAL, HBM_GOAL = 0.45, 0.70
DEPTHS = (4, 14, 28)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the report."""

    figure: str
    measured: str
    goal: str
    verdict: str  # "met", "not met" or "not measured: <why>"
    command: str


@dataclasses.dataclass(frozen=True)
class Run:
    """One benchmark invocation: `args` after `.venv/bin/python`; its --json output goes to `json_flag` (or stdout
    is all there is, `json_flag` None)."""

    key: str
    group: str
    args: tuple[str, ...]
    json_flag: str | None = "--json"

    def command(self) -> str:
        return " ".join((PY, *self.args))


# ------------------------------------------------------------------------------------------------ the runs
def plan_runs(quick: bool, sampling_json: bool = True) -> list[Run]:
    """The benchmark invocations (quick: fewer rounds, repeats and depths)."""
    rounds, repeats, warmup = ("1", "2", "1") if quick else ("3", "4", "2")
    variants = "trainer" if quick else "trainer,trainer_scan"
    train = ("benchmarks/train_step.py", "--variants", variants, "--kinds", "sft,grpo", "--rounds", rounds,
             "--repeats", repeats, "--warmup", warmup)
    reps = ("1", "1", "1") if quick else ("5", "3", "3")
    sampling = ("benchmarks/sampling.py", "--shapes", "qwen2-40m", "--torch-threads", "1")
    depths = "4,28" if quick else ",".join(map(str, DEPTHS))
    plan = ("benchmarks/plan_memory.py", "--model", "1.5b", "--scan", "--depths", depths)
    sj = "--json" if sampling_json else None
    return [
        Run("train_1core", "train", (*train, "--threads", "1", "--cpus", "0")),
        Run("train_2cores", "train", (*train, "--threads", "2", "--cpus", "0,1")),
        Run("decode_b8", "decode", (*sampling, "--batch", "8", "--prompt-len", "64", "--new-tokens", "128",
                                    "--repeats", reps[0]), sj),
        Run("decode_b64", "decode", (*sampling, "--batch", "64", "--prompt-len", "64", "--new-tokens", "64",
                                     "--repeats", reps[1]), sj),
        Run("decode_long", "decode", (*sampling, "--batch", "8", "--prompt-len", "768", "--new-tokens", "512",
                                      "--repeats", reps[2]), sj),
        Run("compile_train", "compile", (*plan, "--remat", "full")),
        Run("compile_sampler", "compile", (*plan, "--sampler")),
        Run("accelerator", "accelerator", ("benchmarks/accelerator.py",)),
    ]


def sampling_has_json() -> bool:
    """Whether benchmarks/sampling.py takes --json (older versions print only their table)."""
    return "--json" in (ROOT / "benchmarks" / "sampling.py").read_text()


def execute(run: Run, workdir: Path) -> dict:
    """Runs one benchmark; returns {"command", "seconds", and "json" (its parsed --json output) or "stdout"}, or
    {"error": ...} when it failed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if run.group != "accelerator":
        env["JAX_PLATFORMS"] = "cpu"  # the CPU comparisons; accelerator.py uses whatever backend JAX finds
    args = list(run.args)
    out_path = workdir / f"{run.key}.json"
    if run.json_flag:
        args += [run.json_flag, str(out_path)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    result: dict = dict(command=run.command(), seconds=round(time.perf_counter() - start, 1))
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        return dict(result, error=f"exit code {proc.returncode}: {last[-300:]}")
    result["stdout"] = proc.stdout[-20000:]
    if run.json_flag:
        text = out_path.read_text() if out_path.exists() else ""
        if not text.strip():
            return dict(result, error="no --json output written")
        try:
            result["json"] = json.loads(text)
        except json.JSONDecodeError:  # plan_memory.py appends JSON lines
            result["json"] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return result


# ------------------------------------------------------------------------------------------------ parsing
def parse_sampling(result: dict) -> dict:
    """{ratio_wall, ratio_cpu (None if not reported), jax_tok_s, torch_tok_s, jax_rss_mib, torch_rss_mib} of the
    first shape of a sampling.py run, from its --json list or, failing that, its stdout table."""
    data = result.get("json")
    if data:
        row = data[0] if isinstance(data, list) else data
        return dict(ratio_wall=row["ratio_wall"], ratio_cpu=row.get("ratio_cpu"), jax_tok_s=row["jax"]["tok_s"],
                    torch_tok_s=row["torch"]["tok_s"], jax_rss_mib=row["jax"]["peak_rss_mib"],
                    torch_rss_mib=row["torch"]["peak_rss_mib"])
    num = lambda s: float(s.strip().rstrip("x").replace(",", ""))
    for line in result.get("stdout", "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or not cells[1].endswith("M") or "x" not in "".join(cells):
            continue
        try:
            if len(cells) >= 10:  # | shape | params | variant | jax | torch | ratio wall | ratio CPU | compile | rss | same |
                jax_t, torch_t, wall, cpu, rss = cells[3], cells[4], cells[5], cells[6], cells[8]
            else:  # | shape | params | jax | torch | ratio | compile | rss | same | threads |
                jax_t, torch_t, wall, cpu, rss = cells[2], cells[3], cells[4], None, cells[6]
            jr, tr = (num(x) for x in rss.split("/"))
            return dict(ratio_wall=num(wall), ratio_cpu=None if cpu is None else num(cpu), jax_tok_s=num(jax_t),
                        torch_tok_s=num(torch_t), jax_rss_mib=jr, torch_rss_mib=tr)
        except ValueError:
            continue
    raise ValueError("no result row in sampling.py's output")


# ------------------------------------------------------------------------------------------------ verdicts
def at_least(value: float | None, goal: float) -> str:
    return "not measured: no value" if value is None else ("met" if value >= goal else "not met")


def at_most(value: float | None, limit: float) -> str:
    return "not measured: no value" if value is None else ("met" if value <= limit else "not met")


def _missing(result: dict | None) -> str | None:
    """Why a run gave no figures (None when it did)."""
    if result is None:
        return "not measured: not run (--only)"
    if "error" in result:
        return f"not measured: benchmark failed ({result['error']})"
    return None


def train_rows(key: str, result: dict | None, command: str) -> list[Row]:
    cores = "1 core" if key.endswith("1core") else "2 cores"
    rows = []
    for kind in ("sft", "grpo"):
        figure = f"Train step {kind.upper()} (fwd+bwd+AdamW), library step vs PyTorch, 39.3M, B=8 T=256, {cores}"
        goal = f">= {TRAIN_GOAL}x tokens/s (wall)"
        why = _missing(result)
        kinds = (result or {}).get("json", {}).get("kinds", {})
        if why is None and "trainer" not in kinds.get(kind, {}).get("variants", {}):
            why = f"not measured: no {kind} trainer result"
        if why:
            rows.append(Row(figure, "-", goal, why, command))
            continue
        v = kinds[kind]["variants"]
        t = v["trainer"]
        measured = (f"{t['ratio_wall']:.2f}x wall, {t['ratio_cpu']:.2f}x CPU-s "
                    f"(rounds {'/'.join(f'{x:.2f}' for x in t['rounds_wall'])})")
        if "trainer_scan" in v:
            measured += f"; scanned layers {v['trainer_scan']['ratio_wall']:.2f}x / {v['trainer_scan']['ratio_cpu']:.2f}x"
        rows.append(Row(figure, measured, goal, at_least(t["ratio_wall"], TRAIN_GOAL), command))
    return rows


def decode_rows(key: str, result: dict | None, command: str) -> list[Row]:
    why = _missing(result)
    parsed = None
    if why is None:
        try:
            parsed = parse_sampling(result)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            why = f"not measured: unreadable output ({e})"
    if key == "decode_long":
        figure = "Sampler peak RSS vs torch generate, prompt 768 + 512 new, B=8"
        goal = "<= torch's"
        if why:
            return [Row(figure, "-", goal, why, command)]
        ratio = parsed["jax_rss_mib"] / parsed["torch_rss_mib"]
        measured = (f"{parsed['jax_rss_mib']:,.0f} / {parsed['torch_rss_mib']:,.0f} MiB ({ratio:.2f}x); decode "
                    f"{parsed['ratio_wall']:.2f}x")
        return [Row(figure, measured, goal, at_most(ratio, 1.0), command)]
    batch, shape = ("8", "64 + 128 new") if key == "decode_b8" else ("64", "64 + 64 new")
    figure = f"Decode new tokens/s vs transformers generate, B={batch}, {shape}, 39.3M"
    goal = f">= {DECODE_GOAL:.0f}x (wall)"
    if why:
        return [Row(figure, "-", goal, why, command)]
    cpu = "" if parsed["ratio_cpu"] is None else f", {parsed['ratio_cpu']:.2f}x CPU-s"
    measured = (f"{parsed['ratio_wall']:.2f}x wall{cpu} ({parsed['jax_tok_s']:,.0f} vs "
                f"{parsed['torch_tok_s']:,.0f} tok/s)")
    return [Row(figure, measured, goal, at_least(parsed["ratio_wall"], DECODE_GOAL), command)]


def compile_rows(key: str, result: dict | None, command: str) -> list[Row]:
    what = "train step (8-dev FSDP, remat full)" if key == "compile_train" else "rollout sampler (8-dev FSDP)"
    fig_time = f"Compile, Qwen2.5-1.5B {what}, 28 layers, scan, AOT"
    fig_flat = f"Compile time vs depth, 1.5B {what}"
    goal_time, goal_flat = f"< {COMPILE_LIMIT_S:.0f} s wall", f"flat: 28-layer / 4-layer <= {FLAT_LIMIT} (CPU-s)"
    why = _missing(result)
    by_depth = {r["layers"]: r for r in (result or {}).get("json", []) if isinstance(r, dict)} if not why else {}
    rows = []
    if 28 in by_depth:
        r = by_depth[28]
        rows.append(Row(fig_time, f"{r['compile_s']:.1f} s wall ({r['compile_cpu_s']:.1f} CPU-s)", goal_time,
                        "met" if r["compile_s"] < COMPILE_LIMIT_S else "not met", command))
    else:
        rows.append(Row(fig_time, "-", goal_time, why or "not measured: no 28-layer result", command))
    if 28 in by_depth and 4 in by_depth:
        ratio = by_depth[28]["compile_cpu_s"] / by_depth[4]["compile_cpu_s"]
        series = " / ".join(f"{by_depth[d]['compile_cpu_s']:.1f}" for d in sorted(by_depth))
        depths = "/".join(str(d) for d in sorted(by_depth))
        rows.append(Row(fig_flat, f"{series} CPU-s at {depths} layers (28/4: {ratio:.2f}x)", goal_flat,
                        at_most(ratio, FLAT_LIMIT), command))
    else:
        rows.append(Row(fig_flat, "-", goal_flat, why or "not measured: needs the 4- and 28-layer results", command))
    return rows


def accelerator_rows(result: dict | None, command: str) -> list[Row]:
    fig_mfu, fig_hbm = "bf16 train-step MFU, Qwen2.5-0.5B shape", "Batch-1 decode, share of HBM bandwidth, 0.5B"
    goal_mfu, goal_hbm = f">= {MFU_GOAL:.0%}", f">= {HBM_GOAL:.0%}"
    why = _missing(result)
    data = (result or {}).get("json", {}) if not why else {}
    if not why and data.get("not_measured"):
        why = f"not measured: {data['not_measured']}"
    if why:
        return [Row(fig_mfu, "-", goal_mfu, why, command), Row(fig_hbm, "-", goal_hbm, why, command)]
    dev = data["peaks"]["name"]
    rows = []
    if "mfu" in data:
        m = data["mfu"]
        rows.append(Row(fig_mfu, f"{m['mfu']:.1%} ({m['achieved_flops'] / 1e12:.0f} of "
                                 f"{data['peaks']['peak_flops'] / 1e12:.0f} TFLOP/s, {dev}, B={m['batch']} "
                                 f"T={m['seq']})", goal_mfu, at_least(m["mfu"], MFU_GOAL), command))
    else:
        rows.append(Row(fig_mfu, "-", goal_mfu, "not measured: not run", command))
    if "decode" in data:
        d = data["decode"]
        rows.append(Row(fig_hbm, f"{d['hbm_fraction']:.1%} ({d['achieved_bytes_s'] / 1e9:.0f} of "
                                 f"{data['peaks']['hbm_bytes_s'] / 1e9:.0f} GB/s, {dev}, "
                                 f"{d['step_s'] * 1e3:.2f} ms a step)", goal_hbm,
                        at_least(d["hbm_fraction"], HBM_GOAL), command))
    else:
        rows.append(Row(fig_hbm, "-", goal_hbm, "not measured: not run", command))
    return rows


def build_rows(results: dict[str, dict | None], commands: dict[str, str]) -> list[Row]:
    """The report's rows from the runs' results (key -> `execute`'s dict, None = not run), in a fixed order."""
    rows: list[Row] = []
    for key in ("train_1core", "train_2cores"):
        rows += train_rows(key, results.get(key), commands.get(key, ""))
    for key in ("decode_b8", "decode_b64", "decode_long"):
        rows += decode_rows(key, results.get(key), commands.get(key, ""))
    for key in ("compile_train", "compile_sampler"):
        rows += compile_rows(key, results.get(key), commands.get(key, ""))
    rows += accelerator_rows(results.get("accelerator"), commands.get("accelerator", ""))
    return rows


def render(rows: list[Row], header: str) -> str:
    """The markdown table, with a header line."""
    esc = lambda s: s.replace("|", "\\|")
    lines = [header, "", "| figure | measured | goal | verdict | command |", "|---|---|---|---|---|"]
    lines += [f"| {esc(r.figure)} | {esc(r.measured)} | {esc(r.goal)} | {esc(r.verdict)} | `{esc(r.command)}` |"
              for r in rows]
    met = sum(r.verdict == "met" for r in rows)
    missed = sum(r.verdict == "not met" for r in rows)
    lines += ["", f"{met} met, {missed} not met, {len(rows) - met - missed} not measured (of {len(rows)})"]
    return "\n".join(lines)


def _write_json(path: Path, obj: dict) -> None:
    from jax_cat.io.atomic import atomic_write_text  # temp then rename; the temporary never stays behind

    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds, repeats and depths (a few minutes)")
    p.add_argument("--out", type=Path, default=None, help="write the rows and the raw results here (JSON)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups from {','.join(GROUPS)}")
    p.add_argument("--from", dest="from_path", type=Path, default=None,
                   help="re-render the table of an earlier --out file; runs nothing")
    args = p.parse_args(argv)
    if args.from_path:
        saved = json.loads(args.from_path.read_text())
        rows = build_rows(saved["results"], saved["commands"])
        print(render(rows, saved["header"]))
        return 0
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        p.error(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    runs = plan_runs(args.quick, sampling_has_json())
    commands = {r.key: r.command() for r in runs}
    results: dict[str, dict | None] = {}
    start = time.perf_counter()
    todo = [r for r in runs if r.group in only]
    with tempfile.TemporaryDirectory(prefix="jax-cat-report-") as tmp:
        for i, run in enumerate(todo, 1):
            print(f"[report {i}/{len(todo)}, {time.perf_counter() - start:.0f}s] {run.command()}", file=sys.stderr,
                  flush=True)
            results[run.key] = execute(run, Path(tmp))
            status = results[run.key].get("error", "ok")
            print(f"[report {i}/{len(todo)}] {run.key}: {status} ({results[run.key]['seconds']:.0f}s)",
                  file=sys.stderr, flush=True)
    header = (f"jax-cat issue 12 figures, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{'--quick' if args.quick else 'default settings'}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at the end, {time.perf_counter() - start:.0f} s: "
              f"`{PY} benchmarks/report.py{' --quick' if args.quick else ''}`")
    rows = build_rows(results, commands)
    print(render(rows, header))
    if args.out:
        _write_json(args.out, dict(header=header, quick=args.quick, rows=[dataclasses.asdict(r) for r in rows],
                                   commands=commands, results=results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
