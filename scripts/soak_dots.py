"""Soak check: kill a DoTS study at random points, resume it each time, and compare with an uninterrupted run.

    PYTHONPATH=. python scripts/soak_dots.py --kills 10 --trials 8 --seed 0 --work /tmp/soak-dots

A tiny model family (base, sft, rl) and a query file are built under --work. The reference is one uninterrupted
`python -m merging.dots` run. Then the same command is started again and again in a child process that prints a
marker line at three kinds of points -- while Vizier computes a suggestion (inside the Pythia call, so the
suggestion operation is pending in vizier.db), while a trial is being scored, and while the picked model is being
written -- and the parent kills it there (SIGKILL or SIGINT, at random, after a random delay) --kills times, each
time resuming with `--resume`; a last resume runs to the end. Checked at the end: the study has exactly --trials
trials, numbered 1..N, each with the same parameters and metrics as the reference (none lost, none repeated), the
same picked trial, byte-identical model weights, no temporary left in the folder, no traceback and no absl warning
on stderr, and every resume made progress or finished (none hung: each child has a deadline).

The designer must be deterministic for the comparison: QUASI_RANDOM_SEARCH or RANDOM_SEARCH with --seed (see
merging/_vizier_seeded.py); with GAUSSIAN_PROCESS_BANDIT (the reported hang's designer) no reference is run and only
the structure and liveness are checked. Exit status 0 when every check holds; the report is printed as JSON (and --json FILE).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("suggest", "trial", "write")
QUERIES = ["What is 2+3?", "What is 4+4?", "Compute 7-2.", "What is 1+1?", "What is 9-3?", "Add 5 and 6.",
           "What is 3+3?", "Compute 8-5."]

CHILD = r"""
import signal, sys, time
# a child started from a background job inherits SIGINT ignored (POSIX); Ctrl-C must reach it as at a terminal
signal.signal(signal.SIGINT, signal.default_int_handler)
phase_delay = float(sys.argv[1])

def mark(phase):
    print(f"SOAK {phase}", flush=True)
    time.sleep(phase_delay)

from vizier._src.service import pythia_service
real_suggest = pythia_service.PythiaServicer.Suggest
def suggest(self, request, context=None):
    mark("suggest")  # inside the Pythia call: the suggestion operation is pending in vizier.db
    return real_suggest(self, request, context)
pythia_service.PythiaServicer.Suggest = suggest

import merging.search
real_run_search = merging.search.run_search
def run_search(objective, *a, **k):
    def scored(params):
        mark("trial")
        return objective(params)
    return real_run_search(scored, *a, **k)
merging.search.run_search = run_search

import merging.checkpoint
real_write = merging.checkpoint.ShardedWriter.write
def write(self, name, array):
    if not getattr(self, "_soak_marked", False):
        self._soak_marked = True
        mark("write")
    time.sleep(0.02)
    return real_write(self, name, array)
merging.checkpoint.ShardedWriter.write = write

from merging.dots import main
sys.exit(main(sys.argv[2:]))
"""


def build_family(root: Path) -> dict[str, Path]:
    """A tiny base checkpoint and two perturbed copies (as tests/merging/test_dots_cli.py), plus queries.txt."""
    import jax
    from flax import nnx

    from jax_cat.models import load_hf, save_hf
    from jax_cat.models.tiny import build_char_tokenizer, build_tiny_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    paths = {k: root / k for k in ("base", "sft", "rl")} | {"queries": root / "queries.txt"}
    if all(p.exists() for p in paths.values()):
        return paths
    base = build_tiny_checkpoint(root / "base", seed=0, max_position_embeddings=128)
    for i, (name, scale) in enumerate((("sft", 0.02), ("rl", 0.005))):
        graphdef, state = nnx.split(load_hf(base))
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(i + 1), len(leaves))
        leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        save_hf(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), root / name,
                tokenizer=build_char_tokenizer())
    paths["queries"].write_text("\n".join(QUERIES) + "\n")
    return paths


def dots_args(fam: dict[str, Path], out: Path, trials: int, seed: int, designer: str) -> list[str]:
    return ["--base", str(fam["base"]), "--sft", str(fam["sft"]), "--rl", str(fam["rl"]),
            "--queries", str(fam["queries"]), "--out", str(out), "--designer", designer, "--trials", str(trials),
            "--seed", str(seed), "--max-new-tokens", "4", "--votes", "3", "--selection-votes", "2",
            "--n-easy", "2", "--n-hard", "2", "--mesh", "1", "1", "1", "--no-progress"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_child(args: list[str], *, kill_at: tuple[str, int] | None, delay: float, sig: int, deadline: float,
              phase_delay: float = 0.2) -> dict:
    """Run merging.dots in a child; kill it `delay` s after the n-th marker of `kill_at` = (phase, n)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(phase_delay), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    seen = {p: 0 for p in PHASES}
    killed = None
    import threading

    timer = threading.Timer(deadline, proc.kill)  # a hung resume fails the soak instead of hanging it
    timer.start()
    try:
        for line in proc.stdout:
            if not line.startswith("SOAK "):
                continue
            phase = line.split()[1]
            seen[phase] += 1
            if kill_at and phase == kill_at[0] and seen[phase] == kill_at[1]:
                time.sleep(delay)
                proc.send_signal(sig)
                killed = {"phase": phase, "occurrence": seen[phase], "signal": signal.Signals(sig).name,
                          "delay_s": round(delay, 3)}
                break
        rest_out, stderr = proc.communicate()
    finally:
        timer.cancel()
    return {"status": proc.returncode, "killed": killed, "seen": seen, "stderr": stderr,
            "seconds": round(time.monotonic() - start, 1), "hung": time.monotonic() - start >= deadline}


def _model_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def _study(out: Path) -> dict:
    rows = json.loads((out / "trials.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"trials": [(r["trial"], r["sft"], r["rl"], r["consistency"], r["perplexity"]) for r in rows],
            "picked": summary["picked"]["trial"], "model": _model_digest(out / "model")}


def _vizier_counts(db: Path) -> dict[str, int]:
    """Trials per state straight from the datastore (sqlite), independent of merging.search."""
    import sqlite3

    from vizier._src.service import study_pb2

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts: dict[str, int] = {}
        for (blob,) in con.execute("select serialized_trial from trials"):
            t = study_pb2.Trial.FromString(blob)
            state = study_pb2.Trial.State.Name(t.state)
            counts[state] = counts.get(state, 0) + 1
        return counts
    finally:
        con.close()


def soak(work: Path, *, kills: int, trials: int, seed: int, designer: str = "QUASI_RANDOM_SEARCH",
         rng_seed: int = 0, deadline: float = 300.0, reference_in_process: bool = False,
         schedule: list[str] | None = None) -> dict:
    """Run the soak (see the module doc); return the report ("ok" and the failed checks in "problems")."""
    rng = random.Random(rng_seed)
    fam = build_family(work / "family")
    ref_out, out = work / "reference", work / "soaked"
    for d in (ref_out, out):
        if d.exists():
            import shutil

            shutil.rmtree(d)
    t0 = time.monotonic()
    deterministic = designer in ("QUASI_RANDOM_SEARCH", "RANDOM_SEARCH")  # seeded: merging/_vizier_seeded.py
    if not deterministic:
        reference = None
    elif reference_in_process:
        from merging.dots import main

        assert main(dots_args(fam, ref_out, trials, seed, designer)) == 0
    else:
        ref = run_child(dots_args(fam, ref_out, trials, seed, designer), kill_at=None, delay=0, sig=0,
                        deadline=deadline, phase_delay=0.0)
        assert ref["status"] == 0, ref["stderr"][-2000:]
    if deterministic:
        reference = _study(ref_out)
    ref_seconds = time.monotonic() - t0

    if schedule is None:  # random suggest/trial kills, the last fifth during the final write
        n_write = max(1, kills // 5)
        schedule = [rng.choice(("suggest", "trial")) for _ in range(kills - n_write)] + ["write"] * n_write
    runs, problems = [], []
    attempts = 0
    base_args = dots_args(fam, out, trials, seed, designer)
    while len([r for r in runs if r["killed"]]) < kills and attempts < 3 * kills:
        attempts += 1
        phase = schedule[len([r for r in runs if r["killed"]])]
        done = len(json.loads((out / "trials.json").read_text())) if (out / "trials.json").exists() else 0
        if done >= trials:
            phase = "write"  # nothing left to suggest or score: only the final write remains to kill
        n = 1 if phase == "write" else rng.randint(1, 2)  # the model is written once per run
        sig = rng.choice((signal.SIGKILL, signal.SIGINT))
        delay = rng.uniform(0.0, 0.15 if phase == "suggest" else 0.3)
        args = base_args + (["--resume"] if out.exists() else [])
        r = run_child(args, kill_at=(phase, n), delay=delay, sig=sig, deadline=deadline)
        done = len(json.loads((out / "trials.json").read_text())) if (out / "trials.json").exists() else 0
        r.update(completed_trials_after=done)
        runs.append(r)
        if r["hung"]:
            problems.append(f"run {len(runs)} hung (no progress within {deadline} s): {r['seen']}")
            break
        if r["killed"] is None and r["status"] != 0:
            problems.append(f"run {len(runs)} failed with status {r['status']}: {r['stderr'][-500:]}")
            break
        if r["killed"] and r["killed"]["signal"] == "SIGINT" and r["status"] != 130:
            problems.append(f"run {len(runs)}: Ctrl-C gave status {r['status']}, not 130")
    final = run_child(base_args + ["--resume"], kill_at=None, delay=0, sig=0, deadline=deadline, phase_delay=0.0)
    if final["status"] != 0:
        problems.append(f"final resume failed ({final['status']}): {final['stderr'][-500:]}")
    runs.append(final | {"final": True})

    soaked = _study(out) if not problems else None
    if soaked is not None:
        ids = [t[0] for t in soaked["trials"]]
        if ids != list(range(1, trials + 1)):
            problems.append(f"trial ids {ids}, expected 1..{trials}")
        if reference is None:  # an unseeded designer (GP-bandit): only structure and liveness are checked
            pass
        elif soaked["trials"] != reference["trials"]:
            diff = [(a, b) for a, b in zip(soaked["trials"], reference["trials"]) if a != b][:3]
            problems.append(f"trials differ from the uninterrupted run: {diff}")
        if reference is not None and soaked["picked"] != reference["picked"]:
            problems.append(f"picked trial {soaked['picked']}, uninterrupted run picked {reference['picked']}")
        if reference is not None and soaked["model"] != reference["model"]:
            problems.append("the picked model's weights differ from the uninterrupted run's")
        counts = _vizier_counts(out / "vizier.db")
        if counts != {"SUCCEEDED": trials}:  # the proto name of COMPLETED: no ACTIVE, REQUESTED or extra trial
            problems.append(f"vizier.db trial states {counts}, expected {{'SUCCEEDED': {trials}}}")
        leftovers = sorted(p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name)
        leftovers += sorted(p.name for p in work.iterdir() if p.name.startswith("soaked.") and p.name != "soaked.lock")
        if leftovers:
            problems.append(f"temporaries left: {leftovers}")
    for i, r in enumerate(runs, 1):
        noisy = [ln for ln in r["stderr"].splitlines() if "Traceback" in ln or "WARNING:absl" in ln]
        if noisy:
            problems.append(f"run {i} stderr: {noisy[:2]}")
    kills_done = [r["killed"] for r in runs if r.get("killed")]
    return {
        "ok": not problems, "problems": problems, "designer": designer, "trials": trials, "seed": seed,
        "kills": len(kills_done), "kills_by_phase": {p: sum(k["phase"] == p for k in kills_done) for p in PHASES},
        "kills_by_signal": {s: sum(k["signal"] == s for k in kills_done) for s in ("SIGKILL", "SIGINT")},
        "runs": [{k: r[k] for k in ("status", "killed", "seconds") if k in r} | {
            "completed_trials_after": r.get("completed_trials_after")} for r in runs],
        "reference_seconds": round(ref_seconds, 1) if deterministic else None,
        "picked": (soaked or reference or {}).get("picked"),
        "identical_to_uninterrupted": soaked == reference if deterministic and soaked is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="the study's seed (merging.dots --seed)")
    p.add_argument("--rng-seed", type=int, default=0, help="seed of the kill points")
    p.add_argument("--designer", default="QUASI_RANDOM_SEARCH",
                   choices=("QUASI_RANDOM_SEARCH", "RANDOM_SEARCH", "GAUSSIAN_PROCESS_BANDIT"),
                   help="GAUSSIAN_PROCESS_BANDIT is not seeded: no comparison with a reference, only the structure "
                        "(trials 1..N, none lost or repeated, no leftovers) and that every resume progressed")
    p.add_argument("--work", type=Path, default=Path("/tmp/soak-dots"))
    p.add_argument("--deadline", type=float, default=300.0, help="seconds one child may run")
    p.add_argument("--phases", help="the kill points in order, e.g. suggest,trial,write (default: random "
                   "suggest/trial, the last fifth during the final write)")
    p.add_argument("--json", type=Path, help="also write the report here")
    a = p.parse_args(argv)
    schedule = a.phases.split(",") if a.phases else None
    if schedule and (len(schedule) != a.kills or not set(schedule) <= set(PHASES)):
        p.error(f"--phases needs {a.kills} of {PHASES}")
    report = soak(a.work, kills=a.kills, trials=a.trials, seed=a.seed, designer=a.designer, rng_seed=a.rng_seed,
                  deadline=a.deadline, schedule=schedule)
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
