"""Packaging: the core install is enough for models, losses and pytree merging; a missing extra is one line naming it;
every CLI is a console script.

The core-only environment is built from this venv's own installed distributions: the closure of pyproject's core
`dependencies` (their own requirements followed through importlib.metadata, extras not taken) is linked into a
folder, and a fresh interpreter with no site-packages (`-S`) runs with only that folder and the project on its path.
A core dependency missing from pyproject, or a core module that imports an extra at import time, fails here.
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from jax_cat.extras import EXTRA_OF, MissingExtraError, optional, require

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names needed by `requirements` (no extras), following installed metadata."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(md.distribution(name).requires or [])
    return seen


def _top_levels(dist_name: str) -> set[str]:
    """The site-packages entries a distribution installed (packages, modules, .libs folders)."""
    dist = md.distribution(dist_name)
    tops = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        tops.add(first)
    return tops


@pytest.fixture(scope="module")
def core_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("core-site")
    source = Path(md.distribution("numpy").locate_file(""))
    for dist in _closure(PROJECT["dependencies"]):
        for top in _top_levels(dist):
            target = site / top
            if not target.exists() and (source / top).exists():
                target.symlink_to(source / top)
        info = Path(md.distribution(dist)._path)  # its .dist-info: importlib.metadata.version() reads it at import
        if not (site / info.name).exists():
            (site / info.name).symlink_to(info)
    for pkg in ("jax_cat", "merging"):
        (site / pkg).symlink_to(REPO / pkg)
    return site


def _run_core(site: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                          cwd=site, timeout=300)


def _installed(extra: str) -> bool:
    try:
        return all(_name(r) == "jax-cat" or md.distribution(_name(r)) for r in PROJECT["optional-dependencies"][extra])
    except md.PackageNotFoundError:
        return False


# The test venv installs jax-cat[test] (every extra in `all`); `wandb`, outside `all`, may be absent.
_INSTALLED_EXTRAS = {e for e in PROJECT["optional-dependencies"] if _installed(e)}


def test_wandb_is_an_extra_outside_all():
    """W&B is asked for by name (a hosted service's client and its own dependency tree), never pulled by `all`."""
    extras = PROJECT["optional-dependencies"]
    assert [_name(r) for r in extras["wandb"]] == ["wandb"]
    assert "wandb" not in extras["all"][0]


def test_core_closure_holds_no_extra():
    closure = _closure(PROJECT["dependencies"])
    for heavy in ("torch", "google-vizier", "matplotlib", "datasets", "tensorboardx", "wandb", "equinox", "pytest"):
        assert heavy not in closure, f"{heavy} is pulled in by the core dependencies"


def test_core_alone_merges_and_names_missing_extras(core_site, tmp_path):
    """In the core-only environment: `import merging` and a streamed merge work; plots are skipped with a note;
    the DoTS search and dataset files say which extra to install."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    for name, scale in (("base", 0.0), ("sft", 0.1), ("rl", 0.01)):
        folder = tmp_path / name
        folder.mkdir()
        base = np.arange(12, dtype=np.float32).reshape(3, 4)
        save_file({"w": base + scale * rng.standard_normal((3, 4)).astype(np.float32)}, str(folder / "model.safetensors"))
    code = f"""
import sys
import numpy as np
import merging
from merging import TaskArithmeticMerge, merge_checkpoints
from safetensors.numpy import load_file
out = merge_checkpoints({str(tmp_path / 'base')!r}, [{str(tmp_path / 'sft')!r}, {str(tmp_path / 'rl')!r}],
                        TaskArithmeticMerge(coefficients=(0.5, 1.0)), {str(tmp_path / 'merged')!r}, progress=False)
b, s, r = (load_file({str(tmp_path)!r} + f"/{{n}}/model.safetensors")["w"] for n in ("base", "sft", "rl"))
m = load_file(str(out) + "/model.safetensors")["w"]
np.testing.assert_allclose(m, b + 0.5 * (s - b) + 1.0 * (r - b), rtol=0, atol=1e-6)
import jax_cat.losses, jax_cat.models, jax_cat.training.steps, jax_cat.sampling
import jax_cat.training.metrics, jax_cat.training.writers
heavy = sorted(m for m in ("torch", "vizier", "matplotlib", "datasets", "tensorboardX", "wandb") if m in sys.modules)
assert not heavy, heavy
for m in ("torch", "vizier", "matplotlib", "datasets"):
    try:
        __import__(m)
    except ImportError:
        pass
    else:
        raise AssertionError(m + " is importable: the environment is not core-only")
from merging.analyze import main as analyze
print("analyze-status", analyze(["--base", {str(tmp_path / 'base')!r}, "--sft", {str(tmp_path / 'sft')!r},
                                 "--rl", {str(tmp_path / 'rl')!r}, "--out", {str(tmp_path / 'analysis')!r}]))
from merging.dots import main as dots
print("dots-status", dots(["--base", "b", "--sft", "s", "--rl", "r", "--queries", "q.jsonl", "--out", "o"]))
from jax_cat.data.hf import format_prompt, load_prompt_dataset
from jax_cat.models.tiny import build_char_tokenizer
print("chat-prompt", repr(format_prompt("1+1?", build_char_tokenizer())))  # transformers renders it with jinja2
open("rows.jsonl", "w").write('{{"question": "1+1?", "answer": "#### 2"}}\\n')
print("local-rows", len(load_prompt_dataset("rows.jsonl")))  # local files need no extra
try:
    load_prompt_dataset("owner/some-dataset")
except ImportError as e:
    print("data-error", e)
"""
    done = _run_core(core_site, code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "analyze-status 0" in done.stdout
    assert (tmp_path / "analysis" / "analysis.json").exists()
    assert not list((tmp_path / "analysis").glob("*.png"))
    assert "pip install 'jax-cat[plots]'" in done.stderr
    assert "dots-status 2" in done.stdout
    assert "pip install 'jax-cat[dots]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "local-rows 1" in done.stdout
    assert "chat-prompt " in done.stdout and "1+1?" in done.stdout
    assert "pip install 'jax-cat[data]'" in done.stdout


def test_every_third_party_import_is_core_or_an_extra():
    """Each module jax_cat/ or merging/ imports is the standard library, the project, a core dependency, or mapped to
    an extra in jax_cat.extras (whose distribution that extra lists)."""
    core_tops = set()
    for dist in _closure(PROJECT["dependencies"]):
        core_tops |= {t.removesuffix(".py") for t in _top_levels(dist)}
    core_tops |= {"jax_cat", "merging"}
    unknown = {}
    for path in [*REPO.glob("jax_cat/**/*.py"), *REPO.glob("merging/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in core_tops or top in EXTRA_OF:
                    continue
                unknown.setdefault(top, []).append(str(path.relative_to(REPO)))
    assert not unknown, f"imports that are neither core dependencies nor mapped to an extra: {unknown}"
    extras = {k: _closure([r for r in v if not r.startswith("jax-cat")]) if k in _INSTALLED_EXTRAS
              else {_name(r) for r in v if not r.startswith("jax-cat")}
              for k, v in PROJECT["optional-dependencies"].items()}
    for module, extra in EXTRA_OF.items():
        installed = {re.sub(r"[-_.]+", "-", d).lower() for d in md.packages_distributions().get(module, [])}
        if extra not in _INSTALLED_EXTRAS:  # an extra this venv lacks (wandb): its distribution bears the name
            installed = {re.sub(r"[-_.]+", "-", module).lower()}
        assert installed & extras[extra], f"{module} maps to the '{extra}' extra, which does not install {installed}"
    assert set(extras) >= {"dots", "data", "plots", "tensorboard", "wandb", "all", "test"}
    assert set(EXTRA_OF.values()) <= {e for e in extras if e not in ("all", "test")}


def test_missing_extra_is_one_line_naming_it():
    with pytest.raises(MissingExtraError, match=r"the DoTS search needs .*'dots' extra .*pip install 'jax-cat\[dots\]'"):
        _require_missing("vizier")
    with pytest.raises(ModuleNotFoundError) as err:  # not one of ours: the real error, untouched
        require("no_such_package_xyz", feature="x")
    assert not isinstance(err.value, MissingExtraError)


def _require_missing(top: str):
    """require() with `top` made unimportable for the duration of the call."""
    saved = {k: v for k, v in sys.modules.items() if k == top or k.startswith(top + ".")}
    for k in saved:
        del sys.modules[k]
    sys.modules[top] = None  # import of `top` now raises ModuleNotFoundError(name=top)
    try:
        return require(f"{top}.service.clients", feature="the DoTS search")
    finally:
        del sys.modules[top]
        sys.modules.update(saved)


def test_optional_returns_none_with_a_note(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert optional("matplotlib", feature="the pass@k plot") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the pass@k plot skipped" in err and "pip install 'jax-cat[plots]'" in err


@pytest.mark.parametrize("script", sorted(PROJECT["scripts"]))
def test_console_scripts_resolve_and_print_help(script, capsys):
    module, _, attr = PROJECT["scripts"][script].partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_cli_has_a_console_script():
    scripts = set(PROJECT["scripts"].values())
    for module in ("jax_cat.train", "jax_cat.evaluate", "merging.merge", "merging.analyze", "merging.dots"):
        assert f"{module}:main" in scripts
