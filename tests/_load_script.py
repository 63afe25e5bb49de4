"""Load a module from scripts/ or benchmarks/ by its file path: those folders are not packages, so tests can't import them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None, *, register: bool = False) -> ModuleType:
    """The module at ROOT / relative_path, run once, named `name` (default: the file's stem). With register=True it
    stands in sys.modules under that name before it runs, as dataclasses, pickling and a later `import name` need."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
