"""What an evaluation writes: results.json (with where and with what it was measured), the scaling plot, and
samples.jsonl."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jax_cat.atomic import atomic_write, save_figure
from jax_cat.extras import pyplot


def provenance() -> dict[str, Any]:
    """Where and with what a result was measured: git commit (+dirty), CPU model, cores, device platform and kind,
    device count, JAX/jaxlib/Python versions, UTC time, the vector ISA XLA:CPU compiles for and any XLA_FLAGS.

    XLA:CPU compiles differently per CPU, so the same seed gives different draws on different machines: a number in
    the docs is only rerunnable with these next to it."""
    import platform
    import subprocess

    import jax

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        first_cpu = []
    for line in first_cpu:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            cpu = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    status = git("status", "--porcelain", "--untracked-files=no")
    device = jax.devices()[0]
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    return {"commit": git("rev-parse", "--short=12", "HEAD"), "dirty": bool(status), "cpu": cpu,
            "cores": os.cpu_count(), "platform": device.platform, "device_kind": device.device_kind,
            "devices": jax.device_count(), "jax": jax.__version__, "jaxlib": jaxlib_version,
            "python": platform.python_version(), "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "cpu_isa": cpu_isa(flags, os.environ.get("XLA_FLAGS")), "xla_flags": os.environ.get("XLA_FLAGS") or None}


ISA_ORDER = ("sse", "sse4_2", "avx", "avx2", "avx512", "amx")  # narrow -> wide vector code XLA:CPU may emit


def cpu_isa(flags: set[str], xla_flags: str | None = None) -> str | None:
    """The widest vector ISA XLA:CPU compiles for: the host's (from its /proc/cpuinfo flags) unless XLA_FLAGS caps it
    with --xla_cpu_max_isa. Two machines that differ here draw different samples from the same seed.

    None when the host's flags are unknown (no /proc/cpuinfo: not Linux)."""
    host = None
    if flags:
        host = next((name for flag, name in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"),
                                             ("avx", "avx"), ("sse4_2", "sse4_2")) if flag in flags), "sse")
    for token in (xla_flags or "").split():
        if token.startswith("--xla_cpu_max_isa="):
            cap = token.split("=", 1)[1].lower()
            if host is None or cap not in ISA_ORDER:
                return f"{host or 'unknown'}, capped at {cap}"
            return cap if ISA_ORDER.index(cap) < ISA_ORDER.index(host) else host
    return host


def plot_scaling(result: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path | None:
    """Accuracy vs k (log2 x axis), one line per strategy with its bootstrap CI band; written atomically as PNG.

    Returns None (after one note) when matplotlib, the 'plots' extra, is not installed."""
    plt = pyplot(feature="the scaling plot")
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for (name, rows), color in zip(result["metrics"].items(), ("C0", "C1", "C2", "C3")):
        label = name if name != "bon@k" else f"bon@k ({result['config']['bon_scorer']})"
        ax.plot(rows["k"], rows["mean"], marker="o", color=color, label=label)
        ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2, linewidth=0)
    ks = result["config"]["ks"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples at test time)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ci = int(round(result["config"]["confidence"] * 100))
    subtitle = f"{result['num_problems']} problems, n={result['config']['n']} samples each, {ci}% bootstrap CI"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def to_json(value: Any, indent: int = 0) -> str:
    """JSON with dicts indented and lists of scalars kept on one line (readable per-k / per-problem arrays)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {to_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
        items = [f"{inner}{to_json(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def write_results(result: Mapping[str, Any], out_dir: str | Path, *, plot_title: str | None = None) -> dict[str, Path]:
    """Write results.json (per-problem values kept, with `provenance()` when the result has none), scaling.png and,
    when present, samples.jsonl into out_dir."""
    out = Path(out_dir)
    samples = result.get("samples")
    summary = {k: v for k, v in result.items() if k not in ("samples", "prompts", "golds")}
    summary.setdefault("provenance", provenance())
    paths = {"results": out / "results.json", "plot": out / "scaling.png"}
    atomic_write(paths["results"], lambda tmp: tmp.write_text(to_json(summary) + "\n"))
    if plot_scaling(result, paths["plot"], title=plot_title) is None:
        del paths["plot"]
    if samples is not None:
        paths["samples"] = out / "samples.jsonl"

        def write_samples(tmp: Path) -> None:
            with tmp.open("w") as f:
                for i, row in enumerate(samples):
                    f.write(json.dumps({"problem": i, "prompt": result["prompts"][i], "gold": result["golds"][i],
                                        "samples": row}) + "\n")

        atomic_write(paths["samples"], write_samples)
    return paths


