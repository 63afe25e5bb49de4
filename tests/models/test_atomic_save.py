"""Issue 14 item 3: save_hf and jax_cat.atomic leave one complete output or none, even when killed or raced.

A child process runs save_hf with its shard writer held mid-write (a partial file in the temporary, then it waits
for a go file), so the parent can SIGKILL it or race it at a known point.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_cat.atomic import OutputBusyError, atomic_output_dir, atomic_write, atomic_write_text
from jax_cat.models import load_hf, save_hf
from jax_cat.models.tiny import build_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]

SLOW_SAVE = """
import pathlib, sys, time
import jax_cat.models.hf as hf
ckpt, out, flag, go = map(pathlib.Path, sys.argv[1:5])
real = hf._write_safetensors
def slow(model, tmp, *args):
    (tmp / "model.safetensors").write_bytes(b"half a shard")
    flag.write_text(str(tmp))
    while not go.exists():
        time.sleep(0.02)
    real(model, tmp, *args)
hf._write_safetensors = slow
hf.save_hf(hf.load_hf(ckpt), out)
"""


def _start_slow_save(root: Path, ckpt: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    flag, go = root / "writing.flag", root / "go.flag"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(ckpt), str(out), str(flag), str(go)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the child never reached its shard write"
        time.sleep(0.02)
    return proc, go


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sigkilled_save_hf_is_cleaned_by_the_next_save(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    dest = tmp_path / "dest"
    dest.mkdir()
    proc, _ = _start_slow_save(tmp_path, ckpt, dest / "out")
    stale = [n for n in _entries(dest) if n.startswith("out.tmp-")]
    assert stale == [n for n in stale if n.startswith(f"out.tmp-{proc.pid}-")] and len(stale) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(n.startswith("out.tmp-") for n in _entries(dest))  # what SIGKILL leaves behind

    out = save_hf(load_hf(ckpt), dest / "out")
    assert _entries(dest) == ["out"]  # the killed run's temporary (and its lock file) are gone
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()


def test_concurrent_save_hf_one_complete_output_or_a_clear_error(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    other = load_hf(build_tiny_checkpoint(tmp_path / "other", seed=2))
    dest = tmp_path / "dest"
    dest.mkdir()
    old = save_hf(other, dest / "out")
    old_bytes = (old / "model.safetensors").read_bytes()

    proc, go = _start_slow_save(tmp_path, ckpt, dest / "out")
    with pytest.raises(OutputBusyError, match=rf"another process \(pid {proc.pid}\) is writing .*out"):
        save_hf(other, dest / "out")
    assert (old / "model.safetensors").read_bytes() == old_bytes  # neither writer has touched the output yet
    go.write_text("go")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert _entries(dest) == ["out"]
    assert (dest / "out" / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    load_hf(dest / "out")  # complete and loadable: the child's checkpoint, not a mix


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = atomic_write_text(tmp_path / "results.json", "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new but cut")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert _entries(tmp_path) == ["results.json"]
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and _entries(tmp_path) == ["results.json"]


def test_output_of_a_run_killed_between_its_renames_is_put_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    moved = tmp_path / f"out.old-{dead.pid}-0badcafe"  # the previous output, moved aside by a run that then died
    moved.mkdir()
    (moved / "weights").write_text("previous")
    with pytest.raises(FileExistsError, match="exists"):
        with atomic_output_dir(tmp_path / "out"):  # the cleanup runs first and restores `out`
            pass
    assert _entries(tmp_path) == ["out"] and (tmp_path / "out" / "weights").read_text() == "previous"


def test_with_extension_appends_and_keeps_dots_in_the_name(tmp_path):
    """Scripts write OUT.json and OUT.md: a setting name such as lr2.5e-4 is a name, not a suffix to replace."""
    from jax_cat.io.atomic import with_extension

    assert with_extension(tmp_path / "lr2.5e-4", ".json") == tmp_path / "lr2.5e-4.json"
    assert with_extension(tmp_path / "table.md", ".json") == tmp_path / "table.json"
    assert with_extension(str(tmp_path / "t"), ".md") == tmp_path / "t.md"
