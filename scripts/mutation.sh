#!/usr/bin/env bash
# Mutation testing of one module with mutmut (minutes; not part of CI).
#
#   scripts/mutation.sh MODULE [TEST_FILE ...]
#   e.g. scripts/mutation.sh jax_cat/rewards/extract.py
#   env: MUTATION_JOBS (parallel children, default 2), MUTATION_WORKDIR (reuse a scratch copy), MUTATION_NAMES
#   (rerun only these mutant names/globs in that scratch copy)
#
# Copies the package and tests to a scratch folder (mutmut rewrites files there, never in this checkout), runs
# mutmut on MODULE against TEST_FILEs (default: the module's own tests, below), and prints the counts and the
# surviving mutants (inspect one with `cd $WORK && mutmut show NAME`). Score = (killed + timeout) / all mutants;
# "no tests" mutants count as survivors. Record the score in docs/testing.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="${1:?usage: scripts/mutation.sh MODULE [TEST_FILE ...]}"
shift
if [ "$#" -gt 0 ]; then
  TESTS=("$@")
else
  case "$MODULE" in
    jax_cat/rewards/extract.py) TESTS=(tests/rewards/test_extract.py tests/rewards/test_extract_mutants.py) ;;
    jax_cat/sampling/logits_processing.py) TESTS=(tests/sampling/test_logits_processing.py) ;;
    jax_cat/losses/strategies.py) TESTS=(tests/losses/test_strategies.py tests/losses/test_strategies_mutants.py tests/properties/test_identities.py) ;;
    jax_cat/losses/cat.py) TESTS=(tests/losses/test_cat.py) ;;
    merging/task_vectors.py) TESTS=(tests/merging/test_task_vectors.py tests/properties/test_identities.py) ;;
    merging/sparsify.py) TESTS=(tests/merging/test_sparsify.py tests/properties/test_identities.py) ;;
    merging/methods.py) TESTS=(tests/merging/test_task_vectors.py tests/merging/test_sparsify.py) ;;
    jax_cat/evaluate.py) TESTS=(tests/evaluate/test_evaluate.py tests/wiring/test_evaluate_wiring.py) ;;
    *) echo "no default tests for $MODULE: pass test files after it" >&2; exit 2 ;;
  esac
fi
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python)"
WORK="${MUTATION_WORKDIR:-$(mktemp -d -t jax-cat-mutation-XXXX)}"
mkdir -p "$WORK"
# configs/: jax_cat/training/recipes is a symlink to ../../configs (recipes ship as package data).
cp -r "$ROOT/jax_cat" "$ROOT/merging" "$ROOT/tests" "$ROOT/configs" "$ROOT/pyproject.toml" "$WORK/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
# mutmut maps each test to the functions it reaches (trampoline hits) in ONE stats process: a JIT cache hit skips
# the trace, so a test that reuses a function compiled by an earlier test would not be mapped to it (and would not
# be run against its mutants). Clear JAX's caches before each test of the stats run (scratch copy only).
cat >> "$WORK/tests/conftest.py" <<'PY'


@pytest.fixture(autouse=True)
def _mutation_sh_fresh_jax_caches():
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        import jax

        jax.clear_caches()
    yield
PY
tests_toml=$(printf '"%s", ' "${TESTS[@]}")
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
paths_to_mutate = ["$MODULE"]
tests_dir = [${tests_toml%, }]
also_copy = ["jax_cat", "merging", "tests", "configs"]
# forkserver: mutmut's default forks each mutant from its main process, which has run the clean tests by then; with
# JAX that child inherits JAX's threads (a forked child can deadlock; mutmut scores the hang as a "timeout", i.e. a
# kill) and its JIT caches (a mutant inside a function the parent already compiled unmutated would not be traced: a false
# survivor). The fork server only collects the tests, so every mutant starts with no JAX state.
process_isolation = "forkserver"
TOML
cd "$WORK"
unset PYTHONPATH  # mutmut's copy under $WORK/mutants must be what the tests import
echo "mutating $MODULE against ${TESTS[*]} in $WORK" >&2
# MUTATION_NAMES="name-or-glob ...": (re)run only these mutants, e.g. last run's survivors after adding tests
# (with the same MUTATION_WORKDIR; mutmut keeps every other mutant's result).
read -r -a NAMES <<< "${MUTATION_NAMES:-}"
"$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" ${NAMES[@]+"${NAMES[@]}"} > "$WORK/mutmut-run.log" 2>&1 || true
"$PY" -m mutmut results --all true > "$WORK/results.txt" 2>/dev/null || true
total=$(grep -c ': ' "$WORK/results.txt" || true)
killed=$(grep -cE ': (killed|timeout)$' "$WORK/results.txt" || true)
echo "$MODULE: $killed of $total mutants killed ($(awk -v k="$killed" -v t="$total" 'BEGIN{if(t) printf "%.1f", 100*k/t; else print "n/a"}') %)"
awk -F': ' '{print $2}' "$WORK/results.txt" | sort | uniq -c
echo "survivors (cd $WORK && $PY -m mutmut show NAME):"
grep -vE ': (killed|timeout)$' "$WORK/results.txt" || true
