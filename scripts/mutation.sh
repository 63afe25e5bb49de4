#!/usr/bin/env bash
# Mutation testing of one module with mutmut (minutes; not part of CI).
#
#   scripts/mutation.sh MODULE [TEST_FILE ...]
#   e.g. scripts/mutation.sh jax_cat/rewards/extract.py
#   MUTATION_NAMES='jax_cat.evaluate.estimates.x_bootstrap_ci* jax_cat.evaluate.estimates.x_scaling_metrics*' \
#     scripts/mutation.sh jax_cat/evaluate/estimates.py   # only the mutants of some functions (mutmut name globs)
#   scripts/mutation.sh merging/methods            # a folder: every module in it
#
# Copies the package and tests to a scratch folder (mutmut rewrites files there, never in this checkout), runs
# mutmut on MODULE against TEST_FILEs (default: the module's own tests, below), and prints the counts and the
# surviving mutants (inspect one with `cd $WORK && mutmut show NAME`). Score = (killed + timeout) / all mutants;
# "no tests" mutants count as survivors. Record the score in docs/testing.md.
# MUTATION_WORKDIR=DIR reuses a scratch folder (mutmut keeps its results there; with MUTATION_NAMES the named
# mutants are re-run, e.g. the survivors after adding tests). MUTATION_JOBS = parallel children (default 2).
# MUTATION_SAMPLE=N MUTATION_SEED=S: a uniform random sample of N mutants (plus any MUTATION_NAMES matches); the
# score then comes with its exact binomial 95 % interval. scripts/mutation_prepare.py makes jitted functions
# mutable (mutmut skips decorated functions) and keeps the fork server free of a started JAX backend: see there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="${1:?usage: scripts/mutation.sh MODULE [TEST_FILE ...]}"
shift
if [ "$#" -gt 0 ]; then
  TESTS=("$@")
else
  case "$MODULE" in
    jax_cat/rewards/extract.py) TESTS=(tests/rewards/test_extract.py tests/rewards/test_extract_mutants.py) ;;
    jax_cat/sampling/logits_processing.py) TESTS=(tests/sampling/test_logits_processing.py tests/sampling/test_logits_processing_mutants.py) ;;
    jax_cat/losses/strategies.py) TESTS=(tests/losses/test_strategies.py tests/losses/test_strategies_mutants.py
                                        tests/properties/test_identities.py) ;;
    # cat.py was split into these (it now only re-exports them): the same tests cover them all
    jax_cat/losses/arrays.py|jax_cat/losses/success.py|jax_cat/losses/sft.py|jax_cat/losses/weights.py|\
    jax_cat/losses/advantages.py|jax_cat/losses/rl.py)
      TESTS=(tests/losses/test_cat_mutants.py tests/losses/test_cat.py tests/losses/test_rl_reference.py) ;;
    jax_cat/losses/alignment.py) TESTS=(tests/losses/test_alignment_mutants.py tests/losses/test_alignment.py) ;;
    jax_cat/losses/reduce.py) TESTS=(tests/losses/test_losses_small_mutants.py tests/losses/test_cat_mutants.py) ;;
    jax_cat/losses/state.py) TESTS=(tests/losses/test_losses_small_mutants.py tests/losses/test_rl_reference.py) ;;
    jax_cat/losses/config.py) TESTS=(tests/losses/test_losses_small_mutants.py) ;;
    merging/task_vectors.py) TESTS=(tests/merging/test_task_vectors.py tests/merging/test_task_vectors_mutants.py tests/merging/test_examples.py) ;;
    merging/sparsify.py) TESTS=(tests/merging/test_sparsify.py tests/merging/test_sparsify_mutants.py) ;;
    merging/methods|merging/methods/) TESTS=(tests/merging/test_methods.py tests/merging/test_methods_mutants.py) ;;
    # the estimators only (run with the MUTATION_NAMES above); the end-to-end tests would cost ~30 s a mutant
    jax_cat/evaluate/estimates.py) TESTS=(tests/evaluate/test_evaluate.py::test_scaling_metrics_on_a_hand_made_pool
                                tests/evaluate/test_evaluate.py::test_bootstrap_ci tests/wiring/test_evaluate_wiring.py
                                tests/evaluate/test_evaluate_mutants.py) ;;
    *) echo "no default tests for $MODULE: pass test files after it" >&2; exit 2 ;;
  esac
fi
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python)"
WORK="${MUTATION_WORKDIR:-$(mktemp -d -t jax-cat-mutation-XXXX)}"
mkdir -p "$WORK"
cp -r "$ROOT/jax_cat" "$ROOT/merging" "$ROOT/tests" "$ROOT/pyproject.toml" "$WORK/"
# jax_cat/training/recipes is a symlink to configs/: copy its target too, or mutmut's copy of jax_cat fails
[ -d "$ROOT/configs" ] && cp -r "$ROOT/configs" "$WORK/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
"$PY" "$ROOT/scripts/mutation_prepare.py" "$WORK" "$MODULE"  # jitted functions become mutable; preload list
tests_toml=$(printf '"%s", ' "${TESTS[@]}")
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
paths_to_mutate = ["$MODULE"]
tests_dir = [${tests_toml%, }]
also_copy = ["jax_cat", "merging", "tests", "configs"]
# Fork each mutant's test run from a server that has only imported (collected) the tests, never run them. The
# default ("fork") forks from the process that ran the stats and clean runs: the child inherits JAX's compile caches
# (a jitted function traced there keeps the unmutated code) and XLA's thread pools, and with JAX tests it hangs
# until mutmut's timeout, which is then counted as a kill.
process_isolation = "forkserver"
# ... and the server imports only modules that leave JAX's backend unstarted (collecting the tests would start it:
# test modules build arrays at import), so no child inherits XLA's threads (scripts/mutation_prepare.py)
forkserver_warmup = "import"
preload_modules_file = "$WORK/mutmut_preload.txt"
timeout_multiplier = 5.0
timeout_constant = 30.0  # a child's start (pytest, test modules, JAX backend) under load; a timeout counts as a kill
TOML
# Guard for the same reason: clear JAX's caches in each mutant's child before its tests run, in case the fork
# server has traced something (a traced function keeps the unmutated code; the trampoline resolves at trace time).
cat >> "$WORK/tests/conftest.py" <<'PY'


def pytest_sessionstart(session):  # added by scripts/mutation.sh (scratch copy only)
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        import jax

        jax.clear_caches()


@pytest.fixture(autouse=True)
def _mutation_sh_fresh_jax_caches():
    """Stats run only: mutmut maps each test to the functions it reaches (trampoline hits) in ONE process, and a
    JIT cache hit skips the trace, so a test reusing a function an earlier test compiled would not be mapped to it
    (nor run against its mutants). Clear the in-memory caches before each test there."""
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        import jax

        jax.clear_caches()
    yield
PY
# JAX's persistent compilation cache, keyed by the compiled HLO: a mutant that changes a traced computation gets a
# fresh compile, every other child reuses the executables (about half the test time of a JAX-heavy module).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
cd "$WORK"
unset PYTHONPATH  # mutmut's copy under $WORK/mutants must be what the tests import
# tests/conftest.py sets these too, but the fork server has imported jax before any conftest runs
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
case "${XLA_FLAGS:-}" in *xla_force_host_platform_device_count*) ;;
  *) export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8" ;; esac
echo "mutating $MODULE against ${TESTS[*]} in $WORK" >&2
read -r -a NAMES <<< "${MUTATION_NAMES:-}"
if [ -n "${MUTATION_SAMPLE:-}" ]; then  # a uniform sample (plus the MUTATION_NAMES globs), named one by one
  "$PY" "$ROOT/scripts/mutation_prepare.py" --select "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" "${NAMES[@]}" \
    > "$WORK/selected.txt" 2> "$WORK/select.log"
  mapfile -t NAMES < "$WORK/selected.txt"
  echo "selected ${#NAMES[@]} mutants (MUTATION_SAMPLE=$MUTATION_SAMPLE MUTATION_SEED=${MUTATION_SEED:-0})" >&2
fi
"$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" "${NAMES[@]}" > "$WORK/mutmut-run.log" 2>&1 || true
"$PY" -m mutmut results --all true 2>/dev/null | "$PY" -c '
import fnmatch, sys
globs = sys.argv[1:]
for line in sys.stdin:
    name = line.strip().split(": ")[0]
    if not globs or any(fnmatch.fnmatchcase(name, g) for g in globs):
        sys.stdout.write(line)' "${NAMES[@]}" > "$WORK/results.txt" || true
if [ -n "${MUTATION_SAMPLE:-}" ]; then
  echo -n "$MODULE (a SAMPLE of ${#NAMES[@]} mutants): "
  "$PY" "$ROOT/scripts/mutation_prepare.py" --score "$WORK/results.txt" "$WORK/selected.txt"
else
  echo -n "$MODULE: "
  "$PY" "$ROOT/scripts/mutation_prepare.py" --score "$WORK/results.txt"
fi
echo "survivors (cd $WORK && $PY -m mutmut show NAME):"
grep -vE ': (killed|timeout|not checked)$' "$WORK/results.txt" || true
