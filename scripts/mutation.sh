#!/usr/bin/env bash
# Mutation testing of one module with mutmut (minutes; not part of CI).
#
#   scripts/mutation.sh MODULE [TEST_FILE ...]
#   e.g. scripts/mutation.sh jax_cat/rewards/extract.py
#
# Copies the package and tests to a scratch folder (mutmut rewrites files there, never in this checkout), runs
# mutmut on MODULE against TEST_FILEs (default: the module's own tests, below), and prints the counts and the
# surviving mutants (inspect one with `cd $WORK && mutmut show NAME`). Score = (killed + timeout) / all mutants;
# "no tests" mutants count as survivors. Record the score in docs/testing.md.
# Environment: MUTATION_JOBS (parallel children, default 2), MUTATION_WORKDIR (reuse a scratch folder: finished
# mutants keep their result), MUTATION_SAMPLE=N + MUTATION_SEED=S (a uniform random sample of N mutants; the score
# then comes with its binomial 95 % interval), MUTATION_ONLY="GLOB ..." (mutant names, e.g.
# "jax_cat.losses.cat.x_cat_rl_loss__mutmut_*"; added to the sample). scripts/mutation_prepare.py also makes
# jitted functions mutable and speeds the runs up (persistent compilation cache): see its docstring.
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
    jax_cat/losses/strategies.py) TESTS=(tests/losses/test_strategies.py tests/properties/test_identities.py) ;;
    jax_cat/losses/cat.py) TESTS=(tests/losses/test_cat_mutants.py tests/losses/test_cat.py tests/losses/test_rl_reference.py) ;;
    jax_cat/losses/alignment.py) TESTS=(tests/losses/test_alignment_mutants.py tests/losses/test_alignment.py) ;;
    jax_cat/losses/reduce.py) TESTS=(tests/losses/test_losses_small_mutants.py tests/losses/test_cat_mutants.py) ;;
    jax_cat/losses/state.py) TESTS=(tests/losses/test_losses_small_mutants.py tests/losses/test_rl_reference.py) ;;
    jax_cat/losses/config.py) TESTS=(tests/losses/test_losses_small_mutants.py) ;;
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
cp -r "$ROOT/jax_cat" "$ROOT/merging" "$ROOT/tests" "$ROOT/configs" "$ROOT/pyproject.toml" "$WORK/"  # configs: target of the jax_cat/training/recipes link
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
"$PY" "$ROOT/scripts/mutation_prepare.py" "$WORK" "$MODULE"  # mutate jitted functions too; see that file
tests_toml=$(printf '"%s", ' "${TESTS[@]}")
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
paths_to_mutate = ["$MODULE"]
tests_dir = [${tests_toml%, }]
also_copy = ["jax_cat", "merging", "tests"]
# fork each mutant's child from a server that has imported jax but never run it (see scripts/mutation_prepare.py)
process_isolation = "forkserver"
forkserver_warmup = "import"
preload_modules_file = "$WORK/mutmut_preload.txt"
timeout_multiplier = 5.0
timeout_constant = 30.0  # a child's start (pytest, test modules, JAX backend) under load; a timeout counts as a kill
TOML
cd "$WORK"
unset PYTHONPATH  # mutmut's copy under $WORK/mutants must be what the tests import
# tests/conftest.py sets these too, but the fork server has imported jax before any conftest runs
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
case "${XLA_FLAGS:-}" in *xla_force_host_platform_device_count*) ;;
  *) export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8" ;; esac
echo "mutating $MODULE against ${TESTS[*]} in $WORK" >&2
NAMES=()
if [ -n "${MUTATION_SAMPLE:-}${MUTATION_ONLY:-}" ]; then  # a sample and/or some functions, not every mutant
  # shellcheck disable=SC2086
  "$PY" "$ROOT/scripts/mutation_prepare.py" --select "${MUTATION_SAMPLE:-0}" "${MUTATION_SEED:-0}" ${MUTATION_ONLY:-} \
    > "$WORK/selected.txt" 2>> "$WORK/mutmut-run.log"
  mapfile -t NAMES < "$WORK/selected.txt"
  echo "selected ${#NAMES[@]} mutants (MUTATION_SAMPLE=${MUTATION_SAMPLE:-0} MUTATION_SEED=${MUTATION_SEED:-0} MUTATION_ONLY=${MUTATION_ONLY:-})" >&2
fi
"$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" "${NAMES[@]}" >> "$WORK/mutmut-run.log" 2>&1 || true
"$PY" -m mutmut results --all true > "$WORK/results.txt" 2>/dev/null || true
echo -n "$MODULE: "
if [ "${#NAMES[@]}" -gt 0 ]; then
  "$PY" "$ROOT/scripts/mutation_prepare.py" --score "$WORK/results.txt" "$WORK/selected.txt"
  echo "(a SAMPLE / subset: ${#NAMES[@]} of $(grep -c ': ' "$WORK/results.txt") mutants)"
else
  "$PY" "$ROOT/scripts/mutation_prepare.py" --score "$WORK/results.txt"
fi
echo "survivors (cd $WORK && $PY -m mutmut show NAME):"
if [ "${#NAMES[@]}" -gt 0 ]; then
  grep -vE ': (killed|timeout|not checked)$' "$WORK/results.txt" | grep -F -f "$WORK/selected.txt" || true
else
  grep -vE ': (killed|timeout)$' "$WORK/results.txt" || true
fi
