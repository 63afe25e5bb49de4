"""The wall: the merging package (core and streaming CLIs) imports nothing from jax_cat but its standard-library-only
low layer (`jax_cat.extras`: which pip extra installs an optional import). The DoTS search modules (objectives,
search, dots) sample from jax_cat models, but only inside their functions: importing them is free."""
import subprocess
import sys
from pathlib import Path


LOW_LAYER = ("jax_cat", "jax_cat.extras")  # stdlib only: importing them pulls in no model, sampler or trainer


def test_merging_imports_nothing_from_jax_cat():
    code = ("import sys, merging, merging.stream, merging.merge, merging.analyze, merging.objectives, merging.search, "
            "merging.dots; "
            f"bad = sorted(m for m in sys.modules if (m == 'jax_cat' or m.startswith('jax_cat.')) and m not in {LOW_LAYER}); "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
