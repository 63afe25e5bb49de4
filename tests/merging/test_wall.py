"""The wall: the merging core (task vectors, sparsifiers, methods, streaming, the merge/analyze CLIs, the search
tools) imports nothing from jax_cat but its low layer -- `jax_cat.io` (atomic outputs, safetensors, the CLI policy)
and `jax_cat.extras` (which pip extra installs an optional import) -- and that layer pulls in no JAX model code,
transformers, torch, Vizier or sampler. The DoTS search modules (objectives, queries, dots_config, dots_run) sample
from jax_cat's models: they say so in module-level imports (tests/test_import_graph.py checks the static graph)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOW_LAYER = ("jax_cat", "jax_cat.extras", "jax_cat.io", "jax_cat.io.atomic", "jax_cat.io.cli",
             "jax_cat.io.safetensors", "jax_cat.io.peft")  # importing them pulls in no model, sampler or trainer
CORE = ("merging", "merging.stream", "merging.merge", "merging.analyze", "merging.search", "merging.checkpoint",
        "merging._cli", "merging.methods")
HEAVY = ("transformers", "torch", "vizier", "matplotlib", "datasets")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_merging_core_imports_nothing_from_jax_cat_but_its_low_layer():
    code = (f"import sys; import {', '.join(CORE)}; "
            f"bad = sorted(m for m in sys.modules if (m == 'jax_cat' or m.startswith('jax_cat.')) and m not in {LOW_LAYER}); "
            "assert not bad, bad; "
            f"heavy = sorted(m for m in {HEAVY} if m in sys.modules); assert not heavy, heavy")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_low_layer_is_light():
    """`jax_cat.io` (and `import jax_cat`) pull in the standard library, numpy, ml_dtypes and safetensors at most."""
    code = ("import sys; import jax_cat, jax_cat.extras, jax_cat.io, jax_cat.io.atomic, jax_cat.io.cli, "
            "jax_cat.io.safetensors, jax_cat.io.peft, jax_cat.atomic, jax_cat.cli; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + ('jax', 'flax', 'merging')} "
            f"or (m.startswith('jax_cat.') and m not in {LOW_LAYER + ('jax_cat.atomic', 'jax_cat.cli')})); "
            "assert not bad, bad")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_dots_search_declares_its_jax_cat_dependency():
    """Importing the search modules imports jax_cat's sampler and models (at the top, not hidden in functions),
    and still no transformers, torch or Vizier until a run needs them."""
    code = ("import sys, merging.objectives, merging.dots_run, merging.dots; "
            "need = ['jax_cat.sampling', 'jax_cat.models', 'jax_cat.rewards', 'jax_cat.data']; "
            "assert all(m in sys.modules for m in need), [m for m in need if m not in sys.modules]; "
            "heavy = sorted(m for m in ('transformers', 'torch', 'vizier') if m in sys.modules); assert not heavy, heavy")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
