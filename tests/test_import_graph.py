"""The import graph of jax_cat and merging, read statically (every import statement, in functions too): no cycles,
no upward imports into the low layer, and every dependency of merging on jax_cat declared at the top of a module.

Layers: `jax_cat.io` + `jax_cat.extras` (the low layer both packages share) < the rest of jax_cat < merging. jax_cat
never imports merging; the low layer imports nothing above it; the merging core imports only the low layer from
jax_cat; the DoTS search modules (`SEARCH`) may import any of jax_cat, at module level only.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOW_LAYER = ("jax_cat.io", "jax_cat.extras")
SEARCH = ("merging.objectives", "merging.queries", "merging.dots_config", "merging.dots_run", "merging.dots")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("jax_cat", "merging"):
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in ("jax_cat.models.load_hf" -> "jax_cat.models")."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool]]:
    """(project module imported, whether at module level) for every import statement of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at the top count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module:
                found.append((target, id(node) in top))
    return found


def _in(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in layer)


GRAPH = {m: _imports(m) for m in MODULES}


def test_no_cycles():
    edges = {m: {t for t, _ in GRAPH[m]} for m in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_jax_cat_never_imports_merging():
    bad = [(m, t) for m in MODULES if m.startswith("jax_cat") for t, _ in GRAPH[m] if t.startswith("merging")]
    assert not bad, bad


def test_the_low_layer_imports_nothing_above_it():
    bad = [(m, t) for m in MODULES if _in(m, LOW_LAYER) for t, _ in GRAPH[m] if not _in(t, LOW_LAYER)]
    assert not bad, bad


def test_merging_core_uses_only_the_low_layer_of_jax_cat():
    bad = [(m, t) for m in MODULES if m.startswith("merging") and not _in(m, SEARCH)
           for t, _ in GRAPH[m] if t.startswith("jax_cat") and not _in(t, LOW_LAYER)]
    assert not bad, bad
    core_to_search = [(m, t) for m in MODULES if m.startswith("merging") and not _in(m, SEARCH)
                      for t, _ in GRAPH[m] if _in(t, SEARCH)]
    assert not core_to_search, core_to_search


def test_merging_declares_its_jax_cat_imports_at_the_top():
    """No hidden function-local `from jax_cat...` in merging: a reader sees each dependency in the module's header."""
    hidden = [(m, t) for m in MODULES if m.startswith("merging")
              for t, top in GRAPH[m] if t.startswith("jax_cat") and not top]
    assert not hidden, hidden


def test_old_import_paths_still_work():
    """Thin re-exports where users import them: the same objects as the low layer's."""
    import jax_cat.atomic
    import jax_cat.cli
    import jax_cat.io.atomic
    import jax_cat.io.cli
    import jax_cat.io.safetensors
    import merging._cli
    import merging.checkpoint
    import merging.stream

    for name in ("OutputBusyError", "atomic_output_dir", "atomic_write", "atomic_write_text", "output_lock"):
        assert getattr(jax_cat.atomic, name) is getattr(jax_cat.io.atomic, name) is getattr(merging.checkpoint, name)
    for name in ("Checkpoint", "ShardedWriter", "TensorInfo", "DTYPES", "parse_size", "CheckpointMismatchError"):
        assert getattr(merging.checkpoint, name) is getattr(jax_cat.io.safetensors, name), name
    assert merging.stream.parse_size is jax_cat.io.safetensors.parse_size
    for name in ("run_cli", "CLIError", "ArgumentParser", "quiet_third_party", "split_debug", "one_line"):
        assert getattr(jax_cat.cli, name) is getattr(jax_cat.io.cli, name) is getattr(merging._cli, name), name
