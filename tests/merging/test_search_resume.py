"""A study interrupted while Vizier computes a suggestion (Ctrl-C, a crashed designer, SIGKILL) resumes: the dead
call's pending suggestion operation no longer blocks the next client (before the fix the resumed search polled it
forever); a second process on the same datastore is refused; seeded RANDOM/QUASI_RANDOM studies are reproducible."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from merging.search import Metric, SearchSpace, StudyMismatchError, run_search

METRICS = [Metric("consistency", "max"), Metric("perplexity", "min")]
SPACE = SearchSpace({"sft": (0.5, 2.0), "rl": (0.5, 2.0)})
ROOT = Path(__file__).resolve().parents[2]


def objective(p):
    return {"consistency": -abs(p["sft"] - 1.0), "perplexity": abs(p["rl"] - 1.5) + 1.0}


@contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""
    def boom(*_):
        raise TimeoutError(f"still running after {seconds} s: the resumed search is stuck")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_interrupted_suggestion_does_not_block_the_resumed_search(tmp_path, monkeypatch):
    from vizier._src.service import pythia_service

    db = tmp_path / "v.db"
    run_search(objective, SPACE, METRICS, num_trials=2, db_path=db, designer="RANDOM_SEARCH")
    real = pythia_service.PythiaServicer.Suggest

    def interrupted(self, request, context=None):
        raise KeyboardInterrupt  # Ctrl-C while the designer computes the third suggestion

    monkeypatch.setattr(pythia_service.PythiaServicer, "Suggest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(objective, SPACE, METRICS, num_trials=4, db_path=db, designer="RANDOM_SEARCH")
    monkeypatch.setattr(pythia_service.PythiaServicer, "Suggest", real)
    with deadline(30):
        records = run_search(objective, SPACE, METRICS, num_trials=4, db_path=db, designer="RANDOM_SEARCH")
    assert [r.trial_id for r in records] == [1, 2, 3, 4]


def test_crashed_designer_does_not_block_the_next_search(tmp_path, monkeypatch):
    """A designer that raises (e.g. a numerical crash) leaves Vizier's local operation undone as well."""
    from vizier._src.service import pythia_service

    db = tmp_path / "v.db"
    real = pythia_service.PythiaServicer.Suggest
    monkeypatch.setattr(pythia_service.PythiaServicer, "Suggest",
                        lambda self, request, context=None: (_ for _ in ()).throw(FloatingPointError("nan")))
    with pytest.raises(Exception, match="nan"):
        run_search(objective, SPACE, METRICS, num_trials=2, db_path=db, designer="RANDOM_SEARCH")
    monkeypatch.setattr(pythia_service.PythiaServicer, "Suggest", real)
    with deadline(30):
        assert len(run_search(objective, SPACE, METRICS, num_trials=2, db_path=db, designer="RANDOM_SEARCH")) == 2


SLOW_SUGGEST = textwrap.dedent("""
    import sys, time
    from vizier._src.service import pythia_service
    from merging.search import Metric, SearchSpace, run_search
    real = pythia_service.PythiaServicer.Suggest
    def slow(self, request, context=None):
        print("suggesting", flush=True)
        time.sleep(600)
    pythia_service.PythiaServicer.Suggest = slow if sys.argv[2] == "hang" else real
    space = SearchSpace({"sft": (0.5, 2.0), "rl": (0.5, 2.0)})
    obj = lambda p: {"consistency": p["sft"], "perplexity": p["rl"]}
    recs = run_search(obj, space, [Metric("consistency", "max"), Metric("perplexity", "min")], num_trials=3,
                      db_path=sys.argv[1], designer="RANDOM_SEARCH")
    print("done", [r.trial_id for r in recs], flush=True)
""")


def test_sigkill_during_a_suggestion_then_resume_in_a_new_process(tmp_path):
    db = tmp_path / "v.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SUGGEST, str(db), "hang"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "suggesting"
        # while it holds the study, a second process is refused with one line naming the datastore
        busy = subprocess.run([sys.executable, "-c", SLOW_SUGGEST, str(db), "ok"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
        assert busy.returncode != 0 and f"is writing {db}" in busy.stderr
    finally:
        proc.kill()
        proc.wait()
    done = subprocess.run([sys.executable, "-c", SLOW_SUGGEST, str(db), "ok"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("done [1, 2, 3]")


@pytest.mark.parametrize("designer", ["RANDOM_SEARCH", "QUASI_RANDOM_SEARCH"])
def test_seeded_designers_are_reproducible(tmp_path, designer):
    """With a seed, trial n's parameters depend only on (seed, n): two studies agree, another seed differs."""
    def params(name, seed, n=4):
        recs = run_search(objective, SPACE, METRICS, num_trials=n, db_path=tmp_path / f"{name}.db",
                          designer=designer, seed=seed)
        return [(r.parameters["sft"], r.parameters["rl"]) for r in recs]

    a, b, c = params("a", 7), params("b", 7), params("c", 8)
    assert a == b and a != c and len(set(a)) == 4
    with pytest.raises(StudyMismatchError, match="seed"):
        params("a", 9)


def test_datastore_write_failure_is_one_short_line(tmp_path, monkeypatch):
    """A full disk under vizier.db: SQLAlchemy's message holds the SQL and the serialized trial; we report one short
    OSError naming the file, and the completed trials survive for the resume."""
    import sqlite3

    import sqlalchemy.exc
    from vizier._src.service import sql_datastore

    db = tmp_path / "v.db"
    run_search(objective, SPACE, METRICS, num_trials=1, db_path=db, designer="RANDOM_SEARCH")

    def full(self, trial):
        raise sqlalchemy.exc.OperationalError("UPDATE trials SET serialized_trial=? " + "x" * 5000, ("blob",),
                                              sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(sql_datastore.SQLDataStore, "update_trial", full)
    with pytest.raises(OSError) as info:
        run_search(objective, SPACE, METRICS, num_trials=2, db_path=db, designer="RANDOM_SEARCH")
    msg = str(info.value)
    assert str(db) in msg and "database or disk is full" in msg and len(msg) < 500 and "\n" not in msg
    monkeypatch.undo()
    with deadline(30):
        assert [r.trial_id for r in run_search(objective, SPACE, METRICS, num_trials=2, db_path=db,
                                               designer="RANDOM_SEARCH")] == [1, 2]
