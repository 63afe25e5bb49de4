"""Long runs never lose work (issue 19, trainer side): the run folder has one owner, is never replaced by accident,
is resumed only by the same run, and a damaged or foreign checkpoint is met with one line, not a storage-library
dump.

One finished 2-step SFT run (checkpoints 1 and 2) is made once in a subprocess; every test works on it or on a copy.
Refusals run `python -m jax_cat.train`'s `main` in-process (they stop before anything compiles).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_cat import train as train_cli
from jax_cat.atomic import output_lock

REPO = Path(__file__).resolve().parents[2]
PROG = "python -m jax_cat.train"
QUIET = ["--set", "train.eval_at_end=false", "--set", "logging.progress=false", "--set", "logging.tensorboard=false"]


def _args(model: Path, *extra: str) -> list[str]:
    return ["--config", "sft_tiny", "--set", f"model.path={model}", "--set", "data.batch_size=8", "--set", "train.steps=2",
            "--set", "train.checkpoint_every=1", "--set", "checkpoint.keep=3", "--set", "checkpoint.async_save=false",
            "--set", "train.log_every=1", *QUIET, *extra]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(run folder, model folder, args): a finished run of the model in `model` (a folder the tests may replace)."""
    from jax_cat.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("run-folder")
    model = build_tiny_checkpoint(root / "model", seed=3)
    run = root / "run"
    proc = subprocess.run([sys.executable, "-m", "jax_cat.train", *_args(model), "--out", str(run)], env=_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints" / "sft").iterdir()) == ["1", "2"]
    return run, model


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (and beside it: a lock or temporary) with its size and mtime."""
    out = {}
    for base in (root, root.parent):
        for p in (base.rglob("*") if base == root else base.iterdir()):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# The trainer's own progress lines on a non-TTY stderr (start, per logged step, heartbeat, sizes): not library noise.
_PROGRESS = re.compile(r"^(checkpoints: |sft data: |eval: |(sft|grpo|warmup): )")


def _without_progress(stderr: str) -> list[str]:
    """stderr's lines less the trainer's own progress lines; what is left must be the one error line."""
    return [line for line in stderr.strip().splitlines() if not _PROGRESS.match(line)]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err  # the run's start lines (checkpoint size, rollout size) may come before it
    lines = err.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    assert errors[0].startswith(f"{PROG}: error: ")
    return errors[0]


def _copy(run: Path, model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run and of its model, with the copy's config.json pointing at the model copy."""
    new_model = shutil.copytree(model, tmp_path / "model")
    new_run = shutil.copytree(run, tmp_path / "run")
    cfg = json.loads((new_run / "config.json").read_text())
    cfg["model"]["path"] = str(new_model)
    (new_run / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return new_run, new_model


# ------------------------------------------------------------------------------------------------ item 1
def test_a_run_folder_is_not_replaced_without_resume_or_overwrite(finished, capsys):
    run, model = finished
    before = _tree(run)
    assert train_cli.main([*_args(model), "--out", str(run)]) == 2
    line = _one_line(capsys)
    assert f"--out {run} already holds a run" in line
    assert "--resume" in line and "another --out" in line and "--overwrite" in line
    assert _tree(run) == before  # final/, checkpoints, metrics and config.json untouched


def test_overwrite_with_bad_input_leaves_the_old_run_alone(finished, capsys):
    run, model = finished
    before = _tree(run)
    argv = [*_args(model), "--set", "data.dataset=/nonexistent/train.jsonl", "--out", str(run), "--overwrite"]
    assert train_cli.main(argv) == 2
    assert "no such file or folder: /nonexistent/train.jsonl" in _one_line(capsys)
    assert _tree(run) == before  # the old run is removed only once every input has been checked


def test_overwrite_removes_the_run_and_only_the_run(finished, tmp_path):
    from jax_cat.training.config import load_config
    from jax_cat.training.run_folder import RUN_ENTRIES, prepare_run_folder

    run, _ = _copy(*finished, tmp_path)
    (run / "notes.txt").write_text("mine\n")
    cfg = load_config(None, {"train.steps": 2})
    assert prepare_run_folder(cfg, run, resume=False, overwrite=True) is True
    assert sorted(os.listdir(run)) == ["notes.txt"] and not any((run / n).exists() for n in RUN_ENTRIES)


# ------------------------------------------------------------------------------------------------ item 3
def test_a_second_trainer_on_the_same_folder_is_refused(finished, capsys):
    run, model = finished
    before = _tree(run)
    with output_lock(run):  # this test process plays the trainer that owns the folder
        status = train_cli.main([*_args(model), "--out", str(run), "--resume"])
        line = _one_line(capsys)
    assert status == 2
    assert f"another trainer (pid {os.getpid()}) is running in this folder" in line and "another --out" in line
    after = _tree(run)
    after.pop(str(run.with_name(run.name + ".lock")), None)  # the holder's lock file (removed on its release)
    before.pop(str(run.with_name(run.name + ".lock")), None)
    assert after == before


# ------------------------------------------------------------------------------------------------ item 4
def test_resume_refuses_a_changed_config_naming_the_keys(finished, capsys):
    run, model = finished
    config = (run / "config.json").read_bytes()
    argv = [*_args(model), "--set", "optimizer.learning_rate=3e-4", "--set", "strategy=pass@4", "--out", str(run),
            "--resume"]
    assert train_cli.main(argv) == 2
    line = _one_line(capsys)
    assert "optimizer.learning_rate (0.001 -> 0.0003)" in line and "strategy ('pass@1' -> 'pass@4')" in line
    assert "train.steps" not in line and (run / "config.json").read_bytes() == config
    # `--out DIR --resume` alone resumes with the run's own config.json; --set applies on top of it
    assert train_cli.main(["--out", str(run), "--resume", "--set", "optimizer.learning_rate=3e-4"]) == 2
    assert _one_line(capsys).endswith("in optimizer.learning_rate (0.001 -> 0.0003); resume with the same settings "
                                      f"(see {run / 'config.json'}), or start a new run with another --out (keys "
                                      "--resume may change: docs/training.md)")
    # more steps on the (default) cosine schedule would change the learning rates of the steps already taken
    assert train_cli.main([*_args(model), "--set", "train.steps=4", "--out", str(run), "--resume"]) == 2
    assert "train.steps (2 -> 4: more steps need optimizer.schedule=constant" in _one_line(capsys)
    assert (run / "config.json").read_bytes() == config


def test_which_changes_resume_allows():
    from jax_cat.training.config import load_config
    from jax_cat.training.run_folder import config_changes

    base = load_config(None, {"optimizer.schedule": "constant", "train.steps": 10})
    saved = json.loads(json.dumps(base.to_dict()))
    safe = {"train.steps": 20, "train.stop_after": 15, "train.log_every": 5, "train.checkpoint_every": 5,
            "logging.progress": True, "checkpoint.keep": 4, "eval.n": 32, "train.micro_batches": 2}
    refused, allowed = config_changes(saved, base.replace(**safe))
    assert refused == [] and len(allowed) == len(safe)
    for key, value in {"train.steps": 5, "optimizer.learning_rate": 0.5, "data.batch_size": 32, "train.seed": 1,
                       "rollout.group_size": 4, "loss.beta": 0.1, "model.scan_layers": True}.items():
        refused, _ = config_changes(saved, base.replace(**{key: value}))
        assert [r.split(" ")[0] for r in refused] == [key]
    # a key an older config.json lacks counts as its default
    del saved["loss"]["beta"]
    assert config_changes(saved, base) == ([], [])


# ------------------------------------------------------------------------------------------------ items 10, 11
def _target(model_dir: Path):
    from jax_cat.training import steps
    from jax_cat.training.config import load_config
    from jax_cat.training.runtime import load_model
    from tests.training.conftest import one_device

    cfg = load_config(None, {"model.path": str(model_dir), "train.steps": 2, "data.batch_size": 8})
    mesh = one_device()
    model, _ = load_model(cfg, mesh)
    _, tx, shardings, _ = steps.build_training(model, mesh, cfg.optimizer, cfg.train.steps)
    return steps.abstract_state(tx, model, shardings)


def _truncate_largest(step_dir: Path) -> Path:
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2])
    return files[-1]


@pytest.mark.parametrize("damage", ["truncated data file", "missing item"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(finished, tmp_path, damage):
    from jax_cat.training.checkpoint import Checkpointer
    from jax_cat.training.runtime import restore_latest_intact

    run, model = _copy(*finished, tmp_path)
    ckpts = run / "checkpoints" / "sft"
    if damage == "truncated data file":
        _truncate_largest(ckpts / "2")
    else:
        shutil.rmtree(ckpts / "2" / "extra")
    target = _target(model)
    warnings: list[str] = []
    state, step, extra = restore_latest_intact(Checkpointer(ckpts, keep=3, async_save=False), target, warnings.append)
    assert step == 1 and "data_iterator" in extra
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"checkpoint {ckpts / '2'} is damaged" in warnings[0] and f"resuming from {ckpts / '1'}" in warnings[0]
    assert sorted(os.listdir(ckpts)) == ["1", "damaged-2"]  # kept for inspection, no longer a step to save over
    pristine, _ = Checkpointer(finished[0] / "checkpoints" / "sft", keep=3, async_save=False).restore(1, target)
    for a, b in zip(jax_leaves(state.params), jax_leaves(pristine.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_no_intact_checkpoint_names_the_damaged_folders(finished, tmp_path):
    from jax_cat.training.checkpoint import Checkpointer
    from jax_cat.training.runtime import CheckpointError, restore_latest_intact

    run, model = _copy(*finished, tmp_path)
    ckpts = run / "checkpoints" / "sft"
    _truncate_largest(ckpts / "2")
    shutil.rmtree(ckpts / "1" / "state")
    with pytest.raises(CheckpointError) as info:
        restore_latest_intact(Checkpointer(ckpts, keep=3, async_save=False), _target(model), lambda _: None)
    message = str(info.value)
    assert "\n" not in message and len(message) < 700
    assert f"{ckpts / '2'} (" in message and f"{ckpts / '1'} (" in message and "remove the damaged folder" in message
    assert sorted(os.listdir(ckpts)) == ["1", "2"]  # nothing moved when nothing could be resumed


def test_resuming_with_a_model_of_another_shape_is_one_short_line(finished, tmp_path, capsys):
    from jax_cat.models.tiny import build_tiny_checkpoint

    run, model = _copy(*finished, tmp_path)
    shutil.rmtree(model)
    build_tiny_checkpoint(model, seed=2, intermediate_size=96)  # same path, another model
    assert train_cli.main([*_args(model), "--out", str(run), "--resume"]) == 2
    line = _one_line(capsys)
    assert len(line) < 400 and "belongs to another model" in line
    assert "mlp" in line and "96" in line and "--overwrite" in line, line


# ------------------------------------------------------------------------------------------------ item 14
def _mount(point: Path, *options: str) -> str | None:
    if shutil.which("mount") is None:
        return "no `mount` command"
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(point)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"cannot mount a small tmpfs here ({proc.stderr.strip()})"


def _foreground_sigint():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def tmpfs(tmp_path, request):
    point = tmp_path / "disk"
    why = _mount(point, *getattr(request, "param", ()))
    if why is not None:
        pytest.skip(why)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_a_full_disk_is_one_line_without_checkpoint_library_logging(finished, tmpfs):
    _, model = finished
    proc = subprocess.run([sys.executable, "-m", "jax_cat.train", *_args(model), "--out", str(tmpfs / "run")],
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = _without_progress(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"{PROG}: error: no space left on the device holding {tmpfs / 'run'}")
    assert "--resume" in lines[0]


@pytest.mark.parametrize("tmpfs", [("ro",)], indirect=True)
def test_an_out_on_a_read_only_file_system_is_refused(finished, tmpfs, capsys):
    _, model = finished
    assert train_cli.main([*_args(model), "--out", str(tmpfs / "run")]) == 2
    line = _one_line(capsys)
    assert f"--out {tmpfs / 'run'}" in line and "read-only file system" in line and "another --out" in line


def test_ctrl_c_is_one_line_and_exit_130(finished, tmp_path):
    _, model = finished
    out = tmp_path / "run"
    argv = [*_args(model), "--set", "train.steps=100000", "--set", "optimizer.schedule=constant", "--out", str(out)]
    # The child starts with SIGINT at its default and unblocked, as a terminal's foreground job does (the test
    # process's signal state after ~1,300 tests must not decide the outcome); PYTHONFAULTHANDLER lets a hang dump
    # every thread's stack on SIGABRT, so a timeout says where the run was.
    proc = subprocess.Popen([sys.executable, "-m", "jax_cat.train", *argv], env=_env(PYTHONFAULTHANDLER="1"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_foreground_sigint)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "sft" / "2").is_dir():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status")
        sig = [ln for ln in status.read_text().splitlines() if ln.startswith("Sig")] if status.exists() else []
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"no exit 120 s after SIGINT; child {sig}; stderr tail:\n{err[-6000:]}")
    assert proc.returncode == 130, err[-2000:]
    assert _without_progress(err) == [f"{PROG}: interrupted (resume with --resume)"], err[-2000:]
