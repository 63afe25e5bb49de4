"""Atomic outputs: whole folders (`atomic_output_dir`) and single files (`atomic_write`), with the output lock.

The one home of every write in jax_cat and merging that must never be seen half done (`save_hf`, merged
checkpoints, evaluation and DoTS results, training markers, plots: `save_figure`):

- a temporary `<out>.tmp-<pid>-<hex>` beside the target, renamed onto it only when complete, removed on any error
  (a full disk, Ctrl-C, a bug in the writer: `BaseException`);
- for folders, an exclusive non-blocking `flock` on `<out>.lock` held for the whole write, so a second writer of
  the same target gets `OutputBusyError` (one complete output or a clear error, never a mix); the kernel releases
  the lock when its holder dies, even by SIGKILL;
- under that lock, temporaries of the same target left by killed runs (their pid no longer exists) are removed
  first, and a previous output moved aside as `<out>.old-<pid>-<hex>` by a run killed between its two renames is
  put back when `out` is missing; `clean_stale_temporaries(folder)` does the same for the single-file temporaries
  inside a run folder.

Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (the temp-then-rename still protects readers)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OutputBusyError", "atomic_output_dir", "atomic_write", "atomic_write_text", "clean_stale",
    "clean_stale_temporaries", "output_lock", "pid_alive", "save_figure",
]


class OutputBusyError(FileExistsError):
    """Another process is writing the same output folder right now."""


def _sibling(out: Path, kind: str) -> Path:
    """`<out>.<kind>-<pid>-<hex>`: the pid lets a later run tell a dead writer's leftover from a live one's."""
    return out.with_name(f"{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (owned by anyone): a temporary named with a live pid belongs to a running writer."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_pid_alive = pid_alive  # the earlier private name


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    pattern = re.compile(re.escape(out.name) + rf"\.{kind}-(\d+)-[0-9a-f]+")
    if not out.parent.is_dir():
        return []
    return [(p, int(m.group(1))) for p in out.parent.iterdir() if (m := pattern.fullmatch(p.name))]


def clean_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Remove `<out>.tmp-<pid>-*` left by dead pids (a killed run's); put back a `<out>.old-<pid>-*` left by a run
    killed between its two renames when `out` itself is missing. Call under `output_lock(out)`."""
    out = Path(out)
    removed = []
    for p, pid in _leftovers(out, "tmp"):
        if pid != os.getpid() and not pid_alive(pid):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    for p, pid in _leftovers(out, "old"):
        if pid != os.getpid() and not pid_alive(pid):
            if out.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, out)  # the previous complete output, moved aside by a run that died before its swap
            removed.append(p)
    return removed


# `<name>.tmp-<pid>-<hex>` (atomic_write), and the older `.<name>.tmp-<pid>[.ext]` of earlier releases
_ANY_TMP = re.compile(r"(?:\.(?P<a>.+)\.tmp-(?P<pa>\d+)(?:\.\w+)?|(?P<b>.+)\.tmp-(?P<pb>\d+)-[0-9a-f]+)")


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the single-file temporaries of killed writers from `folder` (`<name>.tmp-<pid>-<hex>`, and the older
    `.<name>.tmp-<pid>`): only those whose process is gone. Call while owning the folder (its `output_lock`)."""
    folder = Path(folder)
    removed = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _ANY_TMP.fullmatch(p.name)
        if m and p.is_file():
            pid = int(m.group("pa") or m.group("pb"))
            if pid != os.getpid() and not pid_alive(pid):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive, non-blocking lock on `<out>.lock` (flock: released by the kernel even when the holder is killed).

    Raises `OutputBusyError` naming the holder's pid when another process holds it. The lock file is removed on
    release; a waiter that locked a file already unlinked retries on the new one.
    """
    out = Path(out)
    if fcntl is None:
        yield
        return
    lock = out.with_name(f"{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"another process (pid {holder}) is writing {out} right now; wait for it to finish or choose "
                f"another output folder"
            ) from None
        try:  # the file we locked must still be the one at `lock` (a finishing holder unlinks it)
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder `<out>.tmp-<pid>-<hex>` that becomes `out` when the block ends without error, else is
    removed.

    Holds `output_lock(out)` throughout (a concurrent writer of the same `out` gets `OutputBusyError`), removes
    stale temporaries of the same target first, and refuses an existing `out` unless `overwrite` (then the old
    folder is moved aside, the new one renamed in, and the old one deleted: a reader sees one or the other).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        clean_stale(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
        tmp = _sibling(out, "tmp")
        tmp.mkdir()
        try:
            yield tmp
            if out.exists():
                old = _sibling(out, "old")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on `<path>.tmp-<pid>-<hex>` beside `path` (its folder is created if needed), then rename
    it to `path`: readers see the old file or the new, never half of one; on failure the temporary is removed and
    the old file is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def with_extension(out: str | os.PathLike[str], ext: str) -> Path:
    """OUT with `ext` appended, for scripts that write OUT.json and OUT.md: a trailing .json or .md is dropped
    first, and a dot inside the name is kept (`runs/lr2.5e-4` -> `runs/lr2.5e-4.json`, where Path.with_suffix would
    give `runs/lr2.json`)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".json", ".md") else out
    return base.parent / (base.name + ext)


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """Write a matplotlib figure to `path` with `atomic_write` (PNG unless `format=` says otherwise; other keywords,
    e.g. `dpi=120`, go to `fig.savefig`), then close it, on success or failure: pyplot keeps every figure open
    until closed, so a run that plots many would pile them up. The one way every plot of jax_cat, merging and the
    scripts reaches the disk: a reader never sees half a PNG."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, **{"format": "png", **savefig}))
    finally:
        import matplotlib.pyplot as plt  # already imported by whoever drew `fig`; this package stays free of it

        plt.close(fig)
