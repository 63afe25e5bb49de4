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
    .venv/bin/python benchmarks/report.py --quick --results docs/results_data/benchmarks.jsonl   # + append the rows
    .venv/bin/python benchmarks/report.py --add train_1core=/tmp/train.json --results R.jsonl    # an earlier run's JSON
    .venv/bin/python benchmarks/report.py --docs R.jsonl --docs-into docs/benchmarks.md          # the ranges table

Every row records the machine it ran on (CPU model, vendor/family/model -> microarchitecture, ISA flags, torch's
ATen capability and MKL banner), its thread settings, the library versions and the commit (`machine_context`): a
CPU ratio holds for a (host CPU, versions) pair, not in general (docs/benchmarks.md, "Why the ratio moves").
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
    value: float | None = None  # the number the verdict is on (a ratio, seconds, a share); None when not measured
    value_cpu: float | None = None  # the same ratio by process CPU time, where the benchmark reports one
    context: dict = dataclasses.field(default_factory=dict)  # machine, threads, versions, commit (`row_context`)


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
        peaks = kinds[kind].get("matmul_gflops")  # each library's 1-thread 2048^3 matmul on these CPUs
        if peaks:
            measured += f"; matmul XLA {peaks['jax']:.0f} / torch {peaks['torch']:.0f} GFLOP/s per CPU-s"
        rows.append(Row(figure, measured, goal, at_least(t["ratio_wall"], TRAIN_GOAL), command,
                        value=t["ratio_wall"], value_cpu=t["ratio_cpu"]))
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
        return [Row(figure, measured, goal, at_most(ratio, 1.0), command, value=ratio)]
    batch, shape = ("8", "64 + 128 new") if key == "decode_b8" else ("64", "64 + 64 new")
    figure = f"Decode new tokens/s vs transformers generate, B={batch}, {shape}, 39.3M"
    goal = f">= {DECODE_GOAL:.0f}x (wall)"
    if why:
        return [Row(figure, "-", goal, why, command)]
    cpu = "" if parsed["ratio_cpu"] is None else f", {parsed['ratio_cpu']:.2f}x CPU-s"
    measured = (f"{parsed['ratio_wall']:.2f}x wall{cpu} ({parsed['jax_tok_s']:,.0f} vs "
                f"{parsed['torch_tok_s']:,.0f} tok/s)")
    return [Row(figure, measured, goal, at_least(parsed["ratio_wall"], DECODE_GOAL), command,
                value=parsed["ratio_wall"], value_cpu=parsed["ratio_cpu"])]


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
                        "met" if r["compile_s"] < COMPILE_LIMIT_S else "not met", command, value=r["compile_s"]))
    else:
        rows.append(Row(fig_time, "-", goal_time, why or "not measured: no 28-layer result", command))
    if 28 in by_depth and 4 in by_depth:
        ratio = by_depth[28]["compile_cpu_s"] / by_depth[4]["compile_cpu_s"]
        series = " / ".join(f"{by_depth[d]['compile_cpu_s']:.1f}" for d in sorted(by_depth))
        depths = "/".join(str(d) for d in sorted(by_depth))
        rows.append(Row(fig_flat, f"{series} CPU-s at {depths} layers (28/4: {ratio:.2f}x)", goal_flat,
                        at_most(ratio, FLAT_LIMIT), command, value=ratio))
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
                                 f"T={m['seq']})", goal_mfu, at_least(m["mfu"], MFU_GOAL), command,
                        value=m["mfu"]))
    else:
        rows.append(Row(fig_mfu, "-", goal_mfu, "not measured: not run", command))
    if "decode" in data:
        d = data["decode"]
        rows.append(Row(fig_hbm, f"{d['hbm_fraction']:.1%} ({d['achieved_bytes_s'] / 1e9:.0f} of "
                                 f"{data['peaks']['hbm_bytes_s'] / 1e9:.0f} GB/s, {dev}, "
                                 f"{d['step_s'] * 1e3:.2f} ms a step)", goal_hbm,
                        at_least(d["hbm_fraction"], HBM_GOAL), command, value=d["hbm_fraction"]))
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


# ------------------------------------------------------------------------------------------------ machine context
# What makes a ratio move between machines "of the same kind" (docs/benchmarks.md, "Why the ratio moves"): the host
# CPU behind the VM (a masked model name such as "AMD EPYC" can be Zen 3 with AVX2 only or Zen 4 with AVX-512), the
# ISA each library's kernels use there (XLA:CPU compiles for the host's features; MKL on AMD CPUs runs its AVX2
# path even where AVX-512 exists), thread settings, library versions and the code. Every row carries them.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")
UARCH = {  # (vendor, family, model) -> microarchitecture, for hosts whose model name the hypervisor masks
    ("AuthenticAMD", 23, 49): "Zen 2 (Rome)", ("AuthenticAMD", 25, 1): "Zen 3 (Milan)",
    ("AuthenticAMD", 25, 17): "Zen 4 (Genoa)", ("AuthenticAMD", 25, 160): "Zen 4c (Bergamo)",
    ("AuthenticAMD", 26, 2): "Zen 5 (Turin)", ("AuthenticAMD", 26, 17): "Zen 5 (Turin)",
    ("GenuineIntel", 6, 85): "Skylake/Cascade Lake-SP", ("GenuineIntel", 6, 106): "Ice Lake-SP",
    ("GenuineIntel", 6, 143): "Sapphire Rapids", ("GenuineIntel", 6, 207): "Emerald Rapids",
    ("GenuineIntel", 6, 173): "Granite Rapids",
}


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model, vendor/family/model/stepping, microarchitecture (UARCH), the ISA flags XLA:CPU and oneDNN/MKL
    dispatch on, the widest vector ISA, L3 size and whether a hypervisor is in between (from /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return dict(model="unknown (no /proc/cpuinfo)")
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, val = line.partition(":")
        first.setdefault(key.strip(), val.strip())
    flags = set(first.get("flags", "").split())
    num = lambda k: int(first[k]) if first.get(k, "").isdigit() else None
    vendor, family, model = first.get("vendor_id", ""), num("cpu family"), num("model")
    isa = next((name for flag, name in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"))
                if flag in flags), "sse")
    l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return dict(model=first.get("model name", "unknown"), vendor=vendor, family=family, model_id=model,
                stepping=num("stepping"), uarch=UARCH.get((vendor, family, model), "unknown"), isa=isa,
                flags=[f for f in ISA_FLAGS if f in flags], hypervisor="hypervisor" in flags,
                l3=l3.read_text().strip() if l3.exists() else None, cpus=os.cpu_count())


def library_versions() -> dict:
    """Installed versions of the libraries the figures depend on ("-" when absent)."""
    from importlib import metadata

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def torch_backend() -> dict:
    """torch's CPU kernel capability (ATen) and the code path MKL reports for its GEMMs (MKL_VERBOSE banner), from
    a short subprocess; {} when torch is not importable."""
    code = ("import json, torch; torch.set_num_threads(1); a = torch.ones(64, 64); a @ a; print(json.dumps(dict("
            "capability=torch.backends.cpu.get_cpu_capability(), mkl=torch.backends.mkl.is_available(), "
            "mkldnn=torch.backends.mkldnn.is_available())))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, MKL_VERBOSE="1"))
        lines = proc.stdout.strip().splitlines()
        out = json.loads(lines[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return {}
    banner = next((ln for ln in lines if ln.startswith("MKL_VERBOSE") and "SGEMM" not in ln), "")
    out["mkl_banner"] = banner.removeprefix("MKL_VERBOSE").strip()[:200]
    return out


def git_commit() -> dict:
    """HEAD of the checkout the benchmarks ran from, and whether tracked files differed from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            return ""
    return dict(commit=git("rev-parse", "HEAD")[:12] or "unknown", dirty=bool(git("status", "--porcelain", "-uno")))


def machine_context() -> dict:
    """Everything about this machine and checkout that a figure depends on (see the block comment above)."""
    return dict(cpu=cpu_info(), libraries=library_versions(), torch=torch_backend(), **git_commit(),
                env={k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ})


def run_threads(command: str) -> dict:
    """Thread settings of one benchmark command: the CPUs it pins to and the threads a side (see each script)."""
    args = command.split()
    val = lambda flag: args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None
    threads = val("--threads") or val("--torch-threads")
    out = dict(threads=int(threads) if threads and threads.isdigit() else None, cpus=val("--cpus"))
    if out["threads"] == 1:  # what train_step.py / sampling.py set for one thread a side
        out["xla"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        out["torch"] = "set_num_threads(1), OMP/MKL_NUM_THREADS=1"
    return out


def machine_label(ctx: dict) -> str:
    """A short name of the machine a row was measured on: microarchitecture (or model name), ISA, CPUs."""
    cpu = ctx.get("cpu", {})
    name = cpu.get("uarch") if cpu.get("uarch") not in (None, "unknown") else cpu.get("model", "unknown CPU")
    return f"{name}, {cpu.get('isa', '?')}, {cpu.get('cpus', '?')} CPUs"


def with_context(rows: list[Row], machine: dict, commands: dict[str, str], stamp: dict) -> list[Row]:
    """`rows` with `context` filled: the machine, the row's thread settings, library versions, commit, date, load."""
    by_command = {c: run_threads(c) for c in commands.values()}
    return [dataclasses.replace(r, context=dict(machine, machine=machine_label(machine), **stamp,
                                                threads=by_command.get(r.command, run_threads(r.command))))
            for r in rows]


# ------------------------------------------------------------------------------------------------ results file
def append_results(path: Path, rows: list[Row]) -> int:
    """Appends each measured row (value not None) to the JSON-lines results file; returns how many."""
    lines = [json.dumps(dataclasses.asdict(r), sort_keys=True) for r in rows if r.value is not None]
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text() if path.exists() else ""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(old + "".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    return len(lines)


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _span(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if abs(hi - lo) < 0.005 else f"{fmt.format(lo)}-{fmt.format(hi)}"


def render_ranges(records: list[dict]) -> str:
    """The docs table: per figure, its value (and CPU-time ratio) as a range over every run and machine in the
    results file, the range on each machine, and the runs' dates, commits and versions."""
    by_fig: dict[str, list[dict]] = {}
    for r in records:
        by_fig.setdefault(r["figure"], []).append(r)
    lines = ["| figure | goal | all runs: value (CPU-s ratio) | per machine | runs (date, commit, jax / torch) |",
             "|---|---|---|---|---|"]
    esc = lambda s: str(s).replace("|", "\\|")
    for fig, recs in by_fig.items():
        vals = [r["value"] for r in recs]
        cpus = [r["value_cpu"] for r in recs if r.get("value_cpu") is not None]
        overall = _span(vals) + (f" ({_span(cpus)})" if cpus else "")
        machines: dict[str, list[dict]] = {}
        for r in recs:
            machines.setdefault(r.get("context", {}).get("machine", "unknown machine"), []).append(r)
        def both(rs):
            cpu = [r["value_cpu"] for r in rs if r.get("value_cpu") is not None]
            return _span([r["value"] for r in rs]) + (f" ({_span(cpu)})" if cpu else "")

        per = "; ".join(f"{m}: {both(rs)}, {len(rs)} run{'s' * (len(rs) > 1)}" for m, rs in machines.items())
        runs = "; ".join(
            f"{r.get('context', {}).get('date', '?')}, {r.get('context', {}).get('commit', '?')}, "
            f"{r.get('context', {}).get('libraries', {}).get('jax', '?')} / "
            f"{r.get('context', {}).get('libraries', {}).get('torch', '?')}" for r in recs)
        lines.append(f"| {esc(fig)} | {esc(recs[-1]['goal'])} | {overall} | {esc(per)} | {esc(runs)} |")
    return "\n".join(lines)


DOCS_BEGIN, DOCS_END = "<!-- report.py --docs: begin -->", "<!-- report.py --docs: end -->"


def update_docs(doc: Path, table: str) -> None:
    """Replaces the text between the DOCS_BEGIN / DOCS_END markers of `doc` with `table` (atomically)."""
    text = doc.read_text()
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        raise ValueError(f"{doc}: no '{DOCS_BEGIN}' ... '{DOCS_END}' markers to write the table between")
    new = text[: start + len(DOCS_BEGIN)] + "\n" + table + "\n" + text[end:]
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, doc)


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


def add_results(args, parser) -> int:
    """--add: rows from benchmark --json files written earlier on this machine, with this machine's context."""
    runs = {r.key: r for r in plan_runs(args.quick)}
    results, commands = {}, {}
    for item in args.add:
        key, _, path = item.partition("=")
        if key not in runs or not path:
            parser.error(f"--add {item!r}: expected KEY=PATH with KEY one of {', '.join(runs)}")
        text = Path(path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        results[key] = dict(json=data, imported=path)
        settings = {k: data.get(k) for k in ("rounds", "repeats", "warmup", "threads", "cpus")} \
            if isinstance(data, dict) else {}
        commands[key] = runs[key].command() + (f"  # imported from {path}: {settings}" if settings else "")
    machine = machine_context()
    if args.commit:  # the checkout the imported benchmark ran from, when it was not this one
        machine.update(commit=args.commit, dirty=False)
    stamp = dict(date=args.date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), quick=args.quick,
                 load_avg=[round(os.getloadavg()[0], 1)], imported=True)
    rows = [r for r in with_context(build_rows(results, commands), machine, commands, stamp)
            if r.command in commands.values()]
    print(render(rows, f"imported {', '.join(args.add)} on {machine_label(machine)}, commit {machine['commit']}"))
    if args.out:
        _write_json(args.out, dict(header="imported", quick=args.quick, machine=machine, stamp=stamp,
                                   rows=[dataclasses.asdict(r) for r in rows], commands=commands, results=results))
    if args.results:
        print(f"{append_results(args.results, rows)} row(s) appended to {args.results}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds, repeats and depths (a few minutes)")
    p.add_argument("--out", type=Path, default=None, help="write the rows and the raw results here (JSON)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups from {','.join(GROUPS)}")
    p.add_argument("--from", dest="from_path", type=Path, default=None,
                   help="re-render the table of an earlier --out file; runs nothing")
    p.add_argument("--results", type=Path, default=None,
                   help="append every measured row, with its machine context, to this JSON-lines results file")
    p.add_argument("--docs", type=Path, default=None,
                   help="print the ranges table of a --results file (each figure over its runs and machines); "
                        "runs nothing")
    p.add_argument("--docs-into", type=Path, default=None,
                   help=f"with --docs: write the table into this markdown file between {DOCS_BEGIN} / {DOCS_END}")
    p.add_argument("--add", action="append", default=[], metavar="KEY=PATH",
                   help="take run KEY's result from a --json file its benchmark wrote earlier on this machine "
                        "(e.g. train_1core=/tmp/train.json) instead of running it; repeatable; runs nothing else")
    p.add_argument("--commit", default=None, help="with --add: the commit the imported run measured")
    p.add_argument("--date", default=None, help="with --add: when the imported run was measured")
    args = p.parse_args(argv)
    if args.docs:
        table = render_ranges(read_results(args.docs))
        if args.docs_into:
            update_docs(args.docs_into, table)
        print(table)
        return 0
    if args.from_path:
        saved = json.loads(args.from_path.read_text())
        rows = build_rows(saved["results"], saved["commands"])
        if saved.get("machine"):
            rows = with_context(rows, saved["machine"], saved["commands"], saved.get("stamp", {}))
        print(render(rows, saved["header"]))
        if args.results:
            print(f"{append_results(args.results, rows)} row(s) appended to {args.results}", file=sys.stderr)
        return 0
    if args.add:
        return add_results(args, p)
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        p.error(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    runs = plan_runs(args.quick, sampling_has_json())
    commands = {r.key: r.command() for r in runs}
    results: dict[str, dict | None] = {}
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    machine = machine_context()
    todo = [r for r in runs if r.group in only]
    with tempfile.TemporaryDirectory(prefix="jax-cat-report-") as tmp:
        for i, run in enumerate(todo, 1):
            print(f"[report {i}/{len(todo)}, {time.perf_counter() - start:.0f}s] {run.command()}", file=sys.stderr,
                  flush=True)
            results[run.key] = execute(run, Path(tmp))
            status = results[run.key].get("error", "ok")
            print(f"[report {i}/{len(todo)}] {run.key}: {status} ({results[run.key]['seconds']:.0f}s)",
                  file=sys.stderr, flush=True)
    stamp = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), quick=args.quick,
                 load_avg=[round(load_start, 1), round(os.getloadavg()[0], 1)])
    cpu = machine["cpu"]
    header = (f"jax-cat issue 12 figures, {stamp['date']}, "
              f"{'--quick' if args.quick else 'default settings'}, {machine_label(machine)} ({cpu.get('model')}, "
              f"family {cpu.get('family')} model {cpu.get('model_id')}, flags {' '.join(cpu.get('flags', []))}), "
              f"jax {machine['libraries']['jax']}, torch {machine['libraries']['torch']} "
              f"({machine['torch'].get('capability', '?')}), commit {machine['commit']}"
              f"{' (dirty)' if machine['dirty'] else ''}, load average {load_start:.1f} -> "
              f"{os.getloadavg()[0]:.1f}, {time.perf_counter() - start:.0f} s: "
              f"`{PY} benchmarks/report.py{' --quick' if args.quick else ''}`")
    rows = with_context(build_rows(results, commands), machine, commands, stamp)
    print(render(rows, header))
    if args.out:
        _write_json(args.out, dict(header=header, quick=args.quick, machine=machine, stamp=stamp,
                                   rows=[dataclasses.asdict(r) for r in rows], commands=commands, results=results))
    if args.results:
        print(f"{append_results(args.results, rows)} row(s) appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
