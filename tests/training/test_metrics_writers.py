"""Logging backends by name (`logging.report_to`, TRL's `report_to`): W&B through a fake `wandb` module that records
every call (no network, no account), TensorBoard, a user's own writer; what each backend gets equals metrics.jsonl."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from jax_cat.extras import MissingExtraError
from jax_cat.training import writers
from jax_cat.training.config import ConfigError, load_config
from jax_cat.training.metrics import MetricsLogger


class FakeRun:
    def __init__(self, calls, kwargs):
        self.calls, self.kwargs = calls, kwargs
        self.logged: list[dict] = []
        self.defined: list[tuple] = []
        self.finished = False

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, data, step=None, commit=None):
        assert step is None  # each stage plots against its own "<stage>/step", never W&B's global step
        self.logged.append(dict(data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    """A `wandb` module that records init kwargs and runs; the environment has no key and no WANDB_MODE."""
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        run = FakeRun(module.runs, kwargs)
        module.runs.append(run)
        return run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no API key
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / "no-netrc"))
    return module


def _log_steps(logger, steps, seed=0):
    """Hand the logger metrics for `steps` (numpy scalars, as device_get returns them), flushing every log_every."""
    rng = np.random.default_rng(seed)
    for step in steps:
        logger.add(step, {"loss": np.float32(rng.uniform(1, 3)), "reward": np.float32(rng.uniform()),
                          "tokens": np.float32(100.0)}, {"learning_rate": float(rng.uniform(1e-4, 1e-3))})
        if step % logger.log_every == 0:
            logger.flush()


def _jsonl(path: Path, stage: str):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["stage"] == stage]


def test_wandb_gets_the_values_and_steps_metrics_jsonl_has(fake_wandb, tmp_path, capsys):
    out = tmp_path / "run"
    logger = MetricsLogger(out, stage="grpo", total_steps=6, progress=False, log_every=2, report_to=["jsonl", "wandb"],
                           run_config={"train": {"steps": 6}}, project="proj", run_name="r1")
    _log_steps(logger, range(1, 7))
    logger.close()
    (run,) = fake_wandb.runs
    rows = _jsonl(out / "metrics.jsonl", "grpo")
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert [entry["grpo/step"] for entry in run.logged] == [2, 4, 6]
    for entry, row in zip(run.logged, rows):
        for key in ("loss", "reward", "learning_rate", "tokens", "tokens_per_s"):
            assert entry[f"grpo/{key}"] == pytest.approx(row[key], rel=1e-12), key
        assert "grpo/time" not in entry and "grpo/stage" not in entry
    assert ("grpo/*", "grpo/step") in run.defined and run.finished
    kw = run.kwargs
    assert kw["project"] == "proj" and kw["name"] == "r1" and kw["dir"] == str(out)
    assert kw["config"] == {"train": {"steps": 6}} and kw["mode"] == "offline"  # no API key here
    assert kw["id"] == (out / "wandb" / "jax_cat_run_id").read_text().strip() and kw["resume"] == "allow"
    err = capsys.readouterr().err
    assert "note: W&B logs offline (no W&B API key" in err and "wandb sync" in err


def test_two_stages_and_a_resume_are_one_wandb_run_with_an_axis_per_stage(fake_wandb, tmp_path):
    out = tmp_path / "run"
    for stage, steps, start in (("warmup", range(1, 3), 0), ("grpo", range(1, 4), 0), ("grpo", range(3, 5), 2)):
        logger = MetricsLogger(out, stage=stage, total_steps=4, start_step=start, progress=False, report_to=["wandb"])
        _log_steps(logger, steps)
        logger.close()
    ids = {run.kwargs["id"] for run in fake_wandb.runs}
    assert len(fake_wandb.runs) == 3 and len(ids) == 1 and all(r.finished for r in fake_wandb.runs)
    assert [e["warmup/step"] for e in fake_wandb.runs[0].logged] == [1, 2]
    assert [e["grpo/step"] for e in fake_wandb.runs[2].logged] == [3, 4]  # the resumed steps, as metrics.jsonl has
    assert [r["step"] for r in _jsonl(out / "metrics.jsonl", "grpo")] == [1, 2, 3, 4]
    assert not any(k.startswith("grpo/") for e in fake_wandb.runs[0].logged for k in e)


def test_wandb_mode_follows_wandb_mode_then_key_then_network(fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert writers.wandb_mode()[0] is None  # wandb reads WANDB_MODE itself
    monkeypatch.delenv("WANDB_MODE")
    assert writers.wandb_mode()[0] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setattr(writers, "_reachable", lambda host, port, timeout=3.0: host == "api.wandb.ai" and port == 443)
    assert writers.wandb_mode() == ("online", "online")
    monkeypatch.setattr(writers, "_reachable", lambda *a, **k: False)
    assert writers.wandb_mode() == ("offline", "api.wandb.ai cannot be reached")


def test_missing_wandb_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ModuleNotFoundError(name="wandb")
    with pytest.raises(MissingExtraError) as err:
        MetricsLogger(tmp_path, stage="sft", total_steps=1, progress=False, report_to=["wandb"])
    message = str(err.value)
    assert "pip install 'jax-cat[wandb]'" in message and "logging.report_to 'wandb'" in message
    assert "\n" not in message


def test_only_the_first_process_makes_writers(monkeypatch, tmp_path):
    made = []
    writers.register_writer("counting", lambda ctx: made.append(ctx) or _ListWriter())
    try:
        MetricsLogger(tmp_path, stage="sft", total_steps=1, progress=False, report_to=["counting"], enabled=False)
        assert made == [] and not (tmp_path / "metrics.jsonl").exists()
        MetricsLogger(tmp_path, stage="sft", total_steps=1, progress=False, report_to=["counting"])
        assert len(made) == 1 and made[0].stage == "sft" and made[0].out_dir == tmp_path
    finally:
        writers._REGISTRY.pop("counting")


class _ListWriter:
    def __init__(self, ctx=None):
        self.rows, self.closed = [], False

    def write(self, stage, step, metrics):
        self.rows.append((stage, step, dict(metrics)))

    def close(self):
        self.closed = True


_MADE: list[_ListWriter] = []


def list_writer_factory(ctx):
    """A factory named in report_to as 'tests.training.test_metrics_writers:list_writer_factory'."""
    writer = _ListWriter(ctx)
    _MADE.append(writer)
    return writer


def test_a_users_writer_by_module_path_gets_each_row(tmp_path):
    _MADE.clear()
    cfg = load_config(None, ["logging.report_to=jsonl,tests.training.test_metrics_writers:list_writer_factory"])
    logger = MetricsLogger(tmp_path, stage="sft", total_steps=3, progress=False, report_to=cfg.logging.backends())
    _log_steps(logger, range(1, 4))
    logger.close()
    (writer,) = _MADE
    rows = _jsonl(tmp_path / "metrics.jsonl", "sft")
    assert [(s, st) for s, st, _ in writer.rows] == [("sft", r["step"]) for r in rows] and writer.closed
    for (_, _, metrics), row in zip(writer.rows, rows):
        assert metrics["loss"] == row["loss"] and metrics["learning_rate"] == row["learning_rate"]


def test_an_object_without_write_is_refused_by_name(tmp_path):
    writers.register_writer("broken", lambda ctx: object())
    try:
        with pytest.raises(ValueError, match="'broken' made a object, which lacks write"):
            MetricsLogger(tmp_path, stage="sft", total_steps=1, progress=False, report_to=["broken"])
    finally:
        writers._REGISTRY.pop("broken")


def test_tensorboard_gets_the_finite_values_at_the_logged_steps(monkeypatch, tmp_path):
    scalars = []

    class SummaryWriter:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    logger = MetricsLogger(tmp_path, stage="sft", total_steps=2, progress=False, tensorboard=True)
    logger.add(1, {"loss": np.float32(2.5), "grad_norm": np.float32(np.nan)})
    logger.add(2, {"loss": np.float32(1.5), "grad_norm": np.float32(np.nan)})
    logger.flush()
    logger.close()
    (row,) = _jsonl(tmp_path / "metrics.jsonl", "sft")
    got = {tag: (value, step) for tag, value, step in scalars}
    assert got["sft/loss"] == (2.0, 2) and row["loss"] == 2.0 and row["grad_norm"] is None
    assert "sft/grad_norm" not in got and "sft/time" not in got


@pytest.mark.parametrize("overrides, backends", [
    ([], ("tensorboard",)),                                               # the default: jsonl + tensorboard
    (["logging.tensorboard=false"], ()),                                  # the older switch still turns it off
    (["logging.report_to=jsonl,wandb"], ("wandb",)),
    (["logging.report_to=wandb", "logging.tensorboard=true"], ("wandb", "tensorboard")),
    (["logging.report_to=none"], ()),
    (["logging.report_to=tensorboard,tensorboard"], ("tensorboard",)),
])
def test_report_to_and_the_tensorboard_switch(overrides, backends):
    assert load_config(None, overrides).logging.backends() == backends


def test_report_to_from_a_toml_list(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[logging]\nreport_to = ["jsonl", "wandb"]\nproject = "p"\n')
    cfg = load_config(recipe)
    assert cfg.logging.report_to == ("jsonl", "wandb") and cfg.logging.project == "p"


@pytest.mark.parametrize("value, message", [
    ("wandbb", "logging.report_to: unknown backend 'wandbb'; did you mean 'wandb'?"),
    ("none,wandb", "logging.report_to: 'none' means metrics.jsonl only"),
])
def test_bad_report_to_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"logging.report_to={value}"])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_real_wandb_offline_run(tmp_path, monkeypatch):
    """With the real client (the 'wandb' extra; skipped without it): an offline run on disk, its summary = the last
    metrics.jsonl row."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path, stage="sft", total_steps=4, progress=False, log_every=2, report_to=["wandb"])
    _log_steps(logger, range(1, 5))
    run = logger.writers[0].run
    summary = {k: run.summary[k] for k in ("sft/loss", "sft/step")}
    logger.close()
    last = _jsonl(tmp_path / "metrics.jsonl", "sft")[-1]
    assert summary["sft/step"] == last["step"] == 4 and math.isclose(summary["sft/loss"], last["loss"], rel_tol=1e-12)
    assert list((tmp_path / "wandb").glob("offline-run-*")), list((tmp_path / "wandb").iterdir())
    assert wandb.run is None



class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_the_trainer_hands_logging_settings_to_the_logger(method, monkeypatch, tokenizer, tmp_path):
    """run_sft / run_grpo build their logger from logging.* and the run's settings (stopped before any compile)."""
    import jax_cat.training.grpo as grpo
    import jax_cat.training.sft as sft
    from jax_cat.training import run_grpo, run_sft
    from tests.training.conftest import make_model, one_device, small_config

    seen = {}

    def capture(out, **kwargs):
        seen.update(kwargs, out=out)
        raise _Stop

    module, run = (sft, run_sft) if method == "sft" else (grpo, run_grpo)
    monkeypatch.setattr(module, "MetricsLogger", capture)
    cfg = small_config(**{"train.method": method, "train.steps": 4, "logging.report_to": "jsonl,wandb",
                          "logging.tensorboard": True, "logging.project": "p", "logging.run_name": "n"})
    with pytest.raises(_Stop):
        run(cfg, model=make_model(0), tokenizer=tokenizer, mesh=one_device(), out=tmp_path)
    assert seen["report_to"] == ("wandb", "tensorboard") and seen["project"] == "p" and seen["run_name"] == "n"
    assert seen["run_config"] == cfg.to_dict() and seen["stage"] == method and seen["progress"] is False
