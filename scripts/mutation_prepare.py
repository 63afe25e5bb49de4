"""Prepare the scratch copy for `scripts/mutation.sh` (never run on the checkout itself).

    python scripts/mutation_prepare.py SCRATCH_DIR MODULE        # before mutmut: the two changes below
    python scripts/mutation_prepare.py --select SAMPLE SEED [GLOB ...]  # in SCRATCH_DIR: mutant names to run
    python scripts/mutation_prepare.py --score RESULTS [SELECTED]       # the score (and its 95 % interval)

1. **Unwrap jit decorators of MODULE** (in the scratch copy only). mutmut 3 skips every decorated function, so
   `@jax.jit` / `@partial(jax.jit, ...)` functions -- most of the numerical cores -- would never be mutated and
   the score would silently leave them out. Each such top-level or class-level function
   ``@d1 @d2 def f`` becomes ``def f`` followed by ``f = d1(d2(f))``: mutmut then mutates ``f`` and the jit wraps
   its trampoline, so the mutant active in the forked child is what gets traced (the child starts with empty
   in-memory JAX caches: mutmut forks it from a server that has only imported modules, see 3.).
2. **A pytest hook appended to the scratch ``tests/conftest.py``**: tests run fastest first (the durations
   mutmut measured in its stats run), so a mutant is killed sooner. (scripts/mutation.sh itself appends the JAX
   cache clearing -- before every test of the stats run, and in each mutant's child -- and sets JAX's persistent
   compilation cache.)
3. **The fork-server preload list** SCRATCH/mutmut_preload.txt (see `write_preload`). mutmut's default
   ``process_isolation="fork"`` forks every mutant's child from the main process after it has run the whole suite
   (stats + clean run): the child then inherits JAX's compiled-function caches of the UNMUTATED code (a mutant of a
   jitted function, or of a helper only called while tracing, is silently never executed: "survived") and XLA's
   running threads (children can hang: counted "timeout", i.e. killed). scripts/mutation.sh therefore sets
   ``process_isolation="forkserver"`` with ``forkserver_warmup="import"`` of these modules.
"""
from __future__ import annotations

import sys
from pathlib import Path

import libcst as cst


def _is_jit(decorator: cst.Decorator) -> bool:
    code = cst.Module([]).code_for_node(decorator.decorator)
    return "jit" in code


class _Unwrap(cst.CSTTransformer):
    def __init__(self) -> None:
        self.unwrapped: list[str] = []
        self.depth = 0  # function nesting: only module- and class-level defs are unwrapped

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.depth += 1
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        self.depth -= 1
        if self.depth or not updated.decorators or not all(_is_jit(d) for d in updated.decorators):
            return updated
        name = updated.name.value
        expr = name
        for dec in reversed(updated.decorators):
            expr = f"({cst.Module([]).code_for_node(dec.decorator)})({expr})"
        self.unwrapped.append(name)
        assign = cst.parse_statement(f"{name} = {expr}\n")
        return cst.FlattenSentinel([updated.with_changes(decorators=[]), assign])


def unwrap_jit(path: Path) -> list[str]:
    tree = cst.parse_module(path.read_text())
    t = _Unwrap()
    path.write_text(tree.visit(t).code)
    return t.unwrapped


PLUGIN = '''

# ---------------------------------------------------------------- added by scripts/mutation_prepare.py (scratch only)
def pytest_collection_modifyitems(session, config, items):  # fastest tests first: a mutant dies sooner
    import json

    try:
        with open("mutmut-stats.json") as f:
            durations = json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda it: durations.get(it.nodeid, durations.get("mutants/" + it.nodeid, 1e9)))
'''


def select(sample: int, seed: int, globs: list[str]) -> list[str]:
    """Generate the mutants (in the cwd = scratch folder) and pick a uniform random sample plus every name
    matching one of ``globs``. Prints nothing; returns the names."""
    import contextlib
    import fnmatch
    import json
    import os
    import random

    import mutmut.__main__ as mm
    from mutmut.mutation.trampoline import set_mutant_under_test

    set_mutant_under_test("mutant_generation")
    os.makedirs("mutants", exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # mutmut prints progress; stdout carries the names
        mm.copy_src_dir()
        mm.copy_also_copy_files()
        mm.setup_source_paths()
        mm.store_lines_covered_by_tests()
        mm.create_mutants(1)
    names = sorted(k for meta in Path("mutants").rglob("*.meta")
                   for k in json.loads(meta.read_text())["exit_code_by_key"])
    picked = set(random.Random(seed).sample(names, min(sample, len(names)))) if sample else set()
    picked |= {n for n in names if any(fnmatch.fnmatch(n, g) for g in globs)}
    print(f"mutation_prepare: {len(picked)} of {len(names)} mutants selected (uniform sample of {sample}, "
          f"seed {seed}, plus globs {globs})", file=sys.stderr)
    return sorted(picked)


def score(results: Path, selected: Path | None) -> int:
    """Counts and score of `mutmut results --all true` output, restricted to the selected names if given; a
    sample also gets its exact (Clopper-Pearson) binomial 95 % interval."""
    import collections

    status = {}
    for line in results.read_text().splitlines():
        if ": " in line:
            name, st = line.strip().rsplit(": ", 1)
            status[name] = st
    names = selected.read_text().split() if selected else sorted(status)
    counts = collections.Counter(status.get(n, "not checked") for n in names)
    checked = [n for n in names if status.get(n, "not checked") != "not checked"]
    k = sum(status[n] in ("killed", "timeout") for n in checked)
    t = len(checked)
    line = f"{k} of {t} checked mutants killed ({100 * k / max(t, 1):.1f} %)"
    if selected and t:
        from scipy.stats import binomtest

        ci = binomtest(k, t).proportion_ci(0.95, method="exact")
        line += f", 95 % interval [{100 * ci.low:.1f}, {100 * ci.high:.1f}] %"
    print(line)
    for st, c in sorted(counts.items()):
        print(f"{c:7d} {st}")
    return 0


PRELOAD = ["numpy", "scipy", "scipy.stats", "pytest", "jax", "jax.numpy"]


def write_preload(scratch: Path, module: str) -> None:
    """Modules the fork server imports before forking a child per mutant: only ones whose import leaves JAX's
    backend uninitialised (a forked child of a process with XLA's threads running can hang, and mutmut would
    count the hang as a kill). The test modules themselves are imported in each child."""
    import subprocess

    mods = PRELOAD + [module.removesuffix(".py").replace("/", ".")]
    check = ("import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
             "import jax._src.xla_bridge as xb\nassert not xb._backends, 'backend initialised on import'")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    if subprocess.run([sys.executable, "-c", check, *mods], cwd=scratch, env=env, capture_output=True).returncode:
        mods = PRELOAD
        print(f"mutation_prepare: importing {module} starts JAX's backend; the fork server preloads only {mods}",
              file=sys.stderr)
    (scratch / "mutmut_preload.txt").write_text("\n".join(mods) + "\n")


def main(argv: list[str]) -> int:
    if argv[1] == "--select":  # --select SAMPLE SEED [GLOB ...]
        print("\n".join(select(int(argv[2]), int(argv[3]), argv[4:])))
        return 0
    if argv[1] == "--score":  # --score RESULTS [SELECTED]
        return score(Path(argv[2]), Path(argv[3]) if len(argv) > 3 else None)
    scratch, module = Path(argv[1]), argv[2].rstrip("/")
    files = sorted((scratch / module).rglob("*.py")) if (scratch / module).is_dir() else [scratch / module]
    names = [n for f in files for n in unwrap_jit(f)]
    print(f"mutation_prepare: unwrapped jit decorators of {len(names)} functions in {module}: {', '.join(names)}",
          file=sys.stderr)
    write_preload(scratch, module)
    conftest = scratch / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + PLUGIN)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
