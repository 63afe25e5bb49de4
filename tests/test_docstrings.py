"""Every public function and class of jax_cat and merging says what it is for in a docstring (the style rule: a short
docstring on each public function, what and why).

Public: a module-level `def` or `class` whose name has no leading underscore, in any module of the two packages
(private modules too: their public names are what other modules import), and the public methods and properties
of those classes. A method that overrides one documented in a base class of the packages inherits that docstring
(as `inspect.getdoc` does). Read from the source, so no module is imported and no optional extra is needed.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jax_cat", "merging")
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), filename=str(p))
            for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _base_names(cls: ast.ClassDef) -> list[str]:
    """The bare names of a class's bases (`Base`, `module.Base` -> "Base"; `Generic[T]` -> "Generic")."""
    names = []
    for base in cls.bases:
        node = base.value if isinstance(base, ast.Subscript) else base
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
    return names


def _documented_methods(classes: dict[str, list[ast.ClassDef]], name: str, seen: set[str]) -> set[str]:
    """The methods with a docstring that classes named `name` in the packages define or inherit from their bases."""
    if name in seen:
        return set()
    seen.add(name)
    found = set()
    for cls in classes.get(name, ()):
        found |= {n.name for n in cls.body if isinstance(n, DEFS) and ast.get_docstring(n)}
        for base in _base_names(cls):
            found |= _documented_methods(classes, base, seen)
    return found


def undocumented() -> list[str]:
    """`path:line name` of every public function, class, method or property without a docstring."""
    sources = _sources()
    classes: dict[str, list[ast.ClassDef]] = defaultdict(list)
    for tree in sources.values():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name].append(node)
    missing = []
    for path, tree in sources.items():
        for node in tree.body:
            if not isinstance(node, (*DEFS, ast.ClassDef)) or not _public(node.name):
                continue
            if not ast.get_docstring(node):
                missing.append(f"{path}:{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                inherited = set()
                for base in _base_names(node):
                    inherited |= _documented_methods(classes, base, set())
                missing += [f"{path}:{m.lineno} {node.name}.{m.name}" for m in node.body
                            if isinstance(m, DEFS) and _public(m.name) and not ast.get_docstring(m)
                            and m.name not in inherited]
    return missing


def test_every_public_function_and_class_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public names without a docstring (say what and why):\n" + "\n".join(missing)


def test_the_check_sees_a_missing_docstring(tmp_path, monkeypatch):
    """The walk itself: an undocumented public function, class and method are named; private ones, documented ones
    and an override of a documented base method are not."""
    pkg = tmp_path / "jax_cat"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        'def bare(): pass\n'
        'def _private(): pass\n'
        'def told():\n    """Why."""\n'
        'class Base:\n    """Why."""\n    def run(self):\n        """Why."""\n    def stop(self): pass\n'
        'class Child(Base):\n    """Why."""\n    def run(self): pass\n    def _hidden(self): pass\n'
        '    def __len__(self): return 0\n'
    )
    (tmp_path / "merging").mkdir()
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert undocumented() == ["jax_cat/mod.py:1 bare", "jax_cat/mod.py:9 Base.stop"]
