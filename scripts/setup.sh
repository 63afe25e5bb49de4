#!/usr/bin/env bash
# Create .venv with the measured stack (constraints.txt) and install jax-cat into it, editable.
#   scripts/setup.sh          jax-cat[all]: the core and every runtime extra (dots, data, plots, tensorboard)
#   scripts/setup.sh --test   jax-cat[test]: all of that plus pytest and the CPU torch used as the reference in tests
# Idempotent: a stamp of pyproject.toml + constraints.txt skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="[all]"
[ "${1:-}" = "--test" ] && extra="[test]"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.jax-cat-stamp${extra}"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ "$extra" = "[test]" ]; then
    # torch first and by exact pin, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
    .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  fi
  # PYTHONWARNINGS: setuptools' editable-install notices are about its own internals, not the user's next step.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -c constraints.txt -e ".${extra}"
  echo "$want" > "$stamp"
fi
