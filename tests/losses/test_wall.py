"""The wall: jax_cat.losses is pure JAX on arrays and imports nothing from models, sampling or training."""
import ast
from pathlib import Path

import jax_cat.losses

FORBIDDEN = ("jax_cat.models", "jax_cat.sampling", "jax_cat.training", "jax_cat.data", "jax_cat.rewards", "torch",
             "flax", "transformers")


def test_losses_import_nothing_from_other_areas():
    root = Path(jax_cat.losses.__file__).parent
    files = sorted(root.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "strategies.py", "cat.py", "alignment.py", "arrays.py",
                                       "success.py", "sft.py", "weights.py", "advantages.py", "rl.py"}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{f.name} imports {name}"
