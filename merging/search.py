"""Multi-objective search of merge coefficients with OSS Vizier, in process, resumable; Pareto tools.

- `SearchSpace`: one float coefficient per task vector (range configurable; DoTS: [0.5, 2.0]) and, optionally,
  one density per vector from a list of values (discrete, so each sparsification is computed once and cached).
- `run_search(objective, space, metrics, ...)`: a Vizier study whose SQL datastore is a file (e.g. in the output
  folder): a search killed half way resumes with the same study; completed trials are never re-run and the
  trial that was being evaluated is handed back to us (Vizier keeps an ACTIVE trial assigned to its client id).
  A search killed while Vizier computed a suggestion resumes too: the dead call's pending suggestion operation
  (which Vizier would hand back to our fixed client id and poll forever) is closed first. One process at a time
  owns a datastore (`<db>.lock`; a second one gets `OutputBusyError`). With a `seed`, RANDOM_SEARCH and
  QUASI_RANDOM_SEARCH are reproducible: trial n's parameters depend on (seed, n) only (`merging/_vizier_seeded.py`).
  Metrics carry their own goals (`Metric("consistency", "max")`, `Metric("perplexity", "min")`); nothing is negated.
  Designers: "GAUSSIAN_PROCESS_BANDIT" (default; ~5 s a suggestion on 2 CPU cores), "RANDOM_SEARCH",
  "QUASI_RANDOM_SEARCH", "NSGA2" (the genetic algorithm behind the DoTS authors' Optuna default), "DEFAULT"
  (GP-UCB-PE).
- `pareto_front`, `hypervolume_2d`: pure numpy, goals per metric.
- `pick`: the documented automatic choice (highest consistency among trials whose perplexity is within a budget of
  the base model's; see its docstring).

Vizier (the optional 'dots' extra) is imported inside the functions, through `jax_cat.extras.require`, so a
missing extra is one line naming it; from jax_cat, only the low layer (`jax_cat.extras`, `jax_cat.io`).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jax_cat.extras import require
from jax_cat.io.atomic import output_lock

__all__ = [
    "DESIGNERS", "Metric", "SearchSpace", "TrialRecord", "StudyMismatchError",
    "run_search", "load_trials", "pareto_front", "hypervolume_2d", "pick",
]

DESIGNERS = ("GAUSSIAN_PROCESS_BANDIT", "RANDOM_SEARCH", "QUASI_RANDOM_SEARCH", "NSGA2", "DEFAULT")
CLIENT_ID = "merging.search"  # one fixed worker id: an interrupted (ACTIVE) trial comes back to us on resume


class StudyMismatchError(ValueError):
    """The datastore already holds a study with this id but another search space or metrics."""


@dataclass(frozen=True)
class Metric:
    """A metric and its goal: "max" or "min"."""

    name: str
    goal: Literal["max", "min"]

    def __post_init__(self) -> None:
        if self.goal not in ("max", "min"):
            raise ValueError(f"metric {self.name!r}: goal must be 'max' or 'min', got {self.goal!r}")


@dataclass(frozen=True)
class SearchSpace:
    """Coefficient ranges per vector name, e.g. {"sft": (0.5, 2.0), "rl": (0.5, 2.0)}, and optional density choices
    per vector name ({"sft": (0.1, 0.3, 0.5)}) searched as discrete parameters "density_<name>"."""

    coefficients: Mapping[str, tuple[float, float]]
    densities: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.coefficients:
            raise ValueError("the search space needs at least one coefficient")
        for name, (lo, hi) in self.coefficients.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"coefficient range for {name!r} must be finite with low < high, got ({lo}, {hi})")
        for name, values in self.densities.items():
            if name not in self.coefficients:
                raise ValueError(f"density given for {name!r}, which has no coefficient")
            if not values or any(not 0 < v <= 1 for v in values):
                raise ValueError(f"densities for {name!r} must be a non-empty list in (0, 1], got {values}")

    @property
    def names(self) -> list[str]:
        """The coefficient parameters' names, one per task vector, in order."""
        return list(self.coefficients)

    def parameter_names(self) -> list[str]:
        """Every parameter's name: the coefficients, then `density_<name>` where a density is searched too."""
        return self.names + [f"density_{n}" for n in self.densities]

    def add_to(self, root: Any) -> None:
        """Declare the parameters on a Vizier search space root."""
        for name, (lo, hi) in self.coefficients.items():
            root.add_float_param(name, float(lo), float(hi))
        for name, values in self.densities.items():
            root.add_discrete_param(f"density_{name}", sorted(float(v) for v in values))


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial: Vizier id, parameters, every measured metric, and the wall time it took."""

    trial_id: int
    parameters: dict[str, float]
    metrics: dict[str, float]

    def row(self) -> dict[str, Any]:
        """The trial as one flat row (id, parameters, metrics), for trials.csv and summary.json."""
        return {"trial": self.trial_id, **self.parameters, **self.metrics}


# ---------------------------------------------------------------------------------------------------------------
# Pareto tools (pure numpy)
# ---------------------------------------------------------------------------------------------------------------
def _as_minimisation(points: Any, goals: Sequence[str]) -> np.ndarray:
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != len(goals):
        raise ValueError(f"points must be [n, {len(goals)}] for goals {tuple(goals)}, got shape {p.shape}")
    for g in goals:
        if g not in ("max", "min"):
            raise ValueError(f"goals must be 'max' or 'min', got {g!r}")
    sign = np.array([-1.0 if g == "max" else 1.0 for g in goals])
    return p * sign


def pareto_front(points: Any, goals: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (a point dominates another when it is at least as good in every metric
    and better in one). Points with a NaN are never on the front; duplicates are all kept.

    >>> pareto_front([[0.9, 3.0], [0.8, 2.0], [0.7, 2.5], [0.9, 3.0]], ("max", "min"))
    [0, 1, 3]
    """
    q = _as_minimisation(points, goals)
    ok = np.flatnonzero(~np.isnan(q).any(axis=1))
    if q.shape[1] == 2:  # sweep by the first metric: O(n log n)
        front: list[int] = []
        best = math.inf  # lowest second metric among points with a strictly lower first metric
        sub = q[ok]
        order = np.lexsort((sub[:, 1], sub[:, 0]))
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and sub[order[j], 0] == sub[order[i], 0]:
                j += 1
            group = order[i:j]  # equal first metric, sorted by the second
            low = sub[group[0], 1]
            if low < best:
                front += [int(ok[g]) for g in group if sub[g, 1] == low]
                best = low
            i = j
        return sorted(front)
    front = []
    others = q[ok]
    for i in ok:
        dominated = np.any(np.all(others <= q[i], axis=1) & np.any(others < q[i], axis=1))
        if not dominated:
            front.append(int(i))
    return front


def hypervolume_2d(points: Any, reference: Sequence[float], goals: Sequence[str] = ("max", "min")) -> float:
    """Area dominated by `points` and bounded by the `reference` point (which every useful point beats), for two
    metrics with the given goals. Points that do not beat the reference in both metrics add nothing.

    >>> hypervolume_2d([[1.0, 1.0], [2.0, 2.0]], reference=(0.0, 3.0))  # max the 1st, min the 2nd: 2 + 2 - 1
    3.0
    """
    if len(goals) != 2:
        raise ValueError("hypervolume_2d takes exactly two metrics")
    p = np.asarray(points, np.float64).reshape(-1, 2)
    q = _as_minimisation(p, goals) if len(p) else np.zeros((0, 2))
    r = _as_minimisation([reference], goals)[0]
    q = q[~np.isnan(q).any(axis=1)]
    q = q[(q[:, 0] < r[0]) & (q[:, 1] < r[1])]
    if len(q) == 0:
        return 0.0
    # sum of slabs: front points by increasing first metric, each adds its width to the reference x its step down
    front = q[pareto_front(q, ("min", "min"))]
    front = front[np.argsort(front[:, 0], kind="stable")]
    area = 0.0
    prev_y = r[1]
    for x, y in front:
        if y < prev_y:
            area += (r[0] - x) * (prev_y - y)
            prev_y = y
    return float(area)


def pick(
    records: Sequence[TrialRecord],
    *,
    consistency: str = "consistency",
    perplexity: str = "perplexity",
    reference_perplexity: float | None = None,
    budget: float = 0.1,
) -> TrialRecord | None:
    """The automatic pick: among the Pareto front of (consistency max, perplexity min), the trial with the highest
    consistency whose perplexity is at most (1 + budget) x `reference_perplexity` (the base model's); ties go to the
    lower perplexity. With no reference, or when no front trial is within the budget, the front trial with the lowest
    perplexity (the candidate closest to what the base already does well). None when there is no usable trial.
    """
    usable = [r for r in records if not any(math.isnan(r.metrics.get(k, math.nan)) for k in (consistency, perplexity))]
    if not usable:
        return None
    pts = [[r.metrics[consistency], r.metrics[perplexity]] for r in usable]
    front = [usable[i] for i in pareto_front(pts, ("max", "min"))]
    if reference_perplexity is not None and math.isfinite(reference_perplexity):
        within = [r for r in front if r.metrics[perplexity] <= (1.0 + budget) * reference_perplexity]
        if within:
            return max(within, key=lambda r: (r.metrics[consistency], -r.metrics[perplexity]))
    return min(front, key=lambda r: (r.metrics[perplexity], -r.metrics[consistency]))


# ---------------------------------------------------------------------------------------------------------------
# Vizier
# ---------------------------------------------------------------------------------------------------------------
_CURRENT_DB: list[str] = []


def _use_database(url: str) -> None:
    """Point the in-process Vizier service at `url`.

    Vizier builds its local servicer once per process from `environment_variables.servicer_kwargs` (an lru_cache);
    to open another datastore in the same process (tests, benchmarks) that cache is cleared first.
    """
    clients = require("vizier.service.clients", feature="the DoTS coefficient search")

    kwargs = clients.environment_variables.servicer_kwargs
    if kwargs.get("database_url") == url and _CURRENT_DB == [url]:
        return
    kwargs["database_url"] = url
    from vizier._src.service import vizier_client

    vizier_client._create_local_vizier_servicer.cache_clear()
    _CURRENT_DB[:] = [url]


@contextlib.contextmanager
def _keep_x64_setting() -> Iterator[None]:
    """Restore the global jax_enable_x64 flag after Vizier code that flips it (our models must stay 32-bit)."""
    import jax

    before = bool(jax.config.read("jax_enable_x64"))
    try:
        yield
    finally:
        if bool(jax.config.read("jax_enable_x64")) != before:
            jax.config.update("jax_enable_x64", before)


def _suggest(study: Any) -> list[Any]:
    """One suggestion, computed with x64 on in this thread only (Vizier's GP designers want float64).

    When the computation is interrupted or crashes (Ctrl-C, a designer error), Vizier's in-process service leaves
    the suggestion operation pending; it is closed here so that the next call starts a fresh one.
    """
    import jax

    try:
        with _keep_x64_setting(), jax.enable_x64(True):
            return study.suggest(count=1, client_id=CLIENT_ID)
    except BaseException:
        with contextlib.suppress(Exception):
            abandon_pending_suggestions(study)
        raise


def abandon_pending_suggestions(study: Any, client_id: str = CLIENT_ID) -> int:
    """Close (done, with an ABORTED error) the study's unfinished suggestion operations of `client_id`; return how
    many. They belong to a call that died while the designer computed (SIGKILL, Ctrl-C, a crash): Vizier hands a
    pending operation back to the same client id and polls it forever, since nothing will ever finish it. A trial
    that call had already created stays ACTIVE and is still handed back by the next suggestion. Call only while
    owning the datastore (`run_search` holds its lock)."""
    from google.rpc import code_pb2, status_pb2
    from vizier._src.service import custom_errors, vizier_client

    datastore = vizier_client._create_local_vizier_servicer().datastore
    try:
        pending = datastore.list_suggestion_operations(study.resource_name, client_id, lambda op: not op.done)
    except custom_errors.NotFoundError:
        return 0
    for op in pending:
        op.done = True
        op.error.CopyFrom(status_pb2.Status(code=code_pb2.Code.ABORTED,
                                            message="abandoned: the process computing it was interrupted"))
        datastore.update_suggestion_operation(op)
    return len(pending)


def _study_config(space: SearchSpace, metrics: Sequence[Metric], designer: str, seed: int | None = None) -> Any:
    from vizier.service import pyvizier as vz

    from merging import _vizier_seeded

    if designer not in DESIGNERS:
        raise ValueError(f"designer must be one of {DESIGNERS}, got {designer!r}")
    cfg = vz.StudyConfig(algorithm=designer)
    if seed is not None:
        cfg.metadata.ns(_vizier_seeded.NAMESPACE)["seed"] = str(int(seed))
    space.add_to(cfg.search_space.root)
    for m in metrics:
        goal = vz.ObjectiveMetricGoal.MAXIMIZE if m.goal == "max" else vz.ObjectiveMetricGoal.MINIMIZE
        cfg.metric_information.append(vz.MetricInformation(m.name, goal=goal))
    return cfg


def open_study(db_path: str | Path, study_id: str, space: SearchSpace, metrics: Sequence[Metric],
               designer: str = "GAUSSIAN_PROCESS_BANDIT", owner: str = "merging", seed: int | None = None) -> Any:
    """Create, or load when the datastore already has it, the study `study_id` in the sqlite file `db_path`.

    Raises `StudyMismatchError` when a stored study with that id has other parameters, metrics, designer or seed,
    and `ValueError` naming the file when it is not a readable Vizier datastore. `seed` makes RANDOM_SEARCH and
    QUASI_RANDOM_SEARCH reproducible (a stored study keeps the seed it was created with).
    """
    from vizier._src.service import vizier_client
    from vizier.service import clients

    from merging import _vizier_seeded

    db_path = Path(db_path).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    _use_database(f"sqlite:///{db_path}")
    cfg = _study_config(space, metrics, designer, seed)
    try:
        with _keep_x64_setting():  # Vizier's in-process Pythia service turns jax_enable_x64 on globally when created
            _vizier_seeded.install(vizier_client._create_local_vizier_servicer())
            study = clients.Study.from_study_config(cfg, owner=owner, study_id=study_id)
        stored = study.materialize_study_config()
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        _CURRENT_DB.clear()  # do not keep a service bound to the broken file
        raise ValueError(
            f"{db_path} is not a readable Vizier study database ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]}); move it aside to start the search afresh (trials.json beside it "
            f"lists the completed trials), or restore it from a backup") from None
    stored_seed = _vizier_seeded.study_seed(stored)
    if seed is not None and stored_seed is not None and stored_seed != int(seed):
        raise StudyMismatchError(f"{db_path} already holds study {study_id!r} with seed {stored_seed}, this search "
                                 f"has seed {seed}. Use the same seed, another output folder or study id.")
    stored_params = sorted(p.name for p in stored.search_space.parameters)
    stored_metrics = sorted((m.name, str(m.goal)) for m in stored.metric_information)
    want_metrics = sorted((m.name, str(m.goal)) for m in cfg.metric_information)
    if stored_params != sorted(space.parameter_names()) or stored_metrics != want_metrics \
            or stored.algorithm != cfg.algorithm:
        raise StudyMismatchError(
            f"{db_path} already holds study {study_id!r} with parameters {stored_params}, metrics {stored_metrics}, "
            f"designer {stored.algorithm}; this search has {sorted(space.parameter_names())}, {want_metrics}, "
            f"{cfg.algorithm}. Use another output folder or study id."
        )
    return study


def _is_database_error(exc: BaseException) -> bool:
    """True for sqlite/SQLAlchemy errors (a corrupt or foreign file where the datastore should be)."""
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover - Vizier depends on SQLAlchemy
        return False
    import sqlite3

    while exc is not None:
        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, sqlite3.DatabaseError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _record(trial: Any) -> TrialRecord:
    metrics = {k: float(v.value) for k, v in trial.final_measurement.metrics.items()}
    return TrialRecord(int(trial.id), {k: float(v) for k, v in trial.parameters.as_dict().items()}, metrics)


def load_trials(study: Any) -> list[TrialRecord]:
    """The study's completed, feasible trials in id order."""
    out = []
    for t in study.trials().get():
        if t.status.name == "COMPLETED" and t.final_measurement is not None and not t.infeasible:
            out.append(_record(t))
    return sorted(out, key=lambda r: r.trial_id)


def run_search(
    objective: Callable[[dict[str, float]], Mapping[str, float]],
    space: SearchSpace,
    metrics: Sequence[Metric],
    *,
    num_trials: int,
    db_path: str | Path,
    study_id: str = "dots",
    designer: str = "GAUSSIAN_PROCESS_BANDIT",
    on_trial: Callable[[TrialRecord, list[TrialRecord]], None] | None = None,
    seed: int | None = None,
) -> list[TrialRecord]:
    """Run (or continue) the study until it has `num_trials` completed trials; return them all.

    The datastore is owned by this call (`<db_path>.lock`; a concurrent call gets `OutputBusyError`). Suggestion
    operations left pending by a killed or interrupted earlier call are closed first, so a resumed search always
    progresses; the trial such a call was evaluating is handed back and evaluated once. `seed`: see `open_study`.

    `objective(parameters)` returns at least the `metrics` (extra entries are stored too; "seconds" is added). A
    NaN/inf in a searched metric marks the trial infeasible (kept in the datastore, not on the front). `on_trial`
    is called after each completed trial with it and all completed so far (progress bars, tables on disk).
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    db_path = Path(db_path).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(db_path):
        study = open_study(db_path, study_id, space, metrics, designer, seed=seed)
        try:
            abandon_pending_suggestions(study)
            return _search_loop(study, objective, metrics, num_trials, on_trial)
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            orig = getattr(exc, "orig", None) or exc  # SQLAlchemy's message carries the SQL and the whole trial blob
            raise OSError(f"{db_path}: the Vizier datastore could not be updated ({type(orig).__name__}: "
                          f"{' '.join(str(orig).split())[:160]}); fix the cause (e.g. free disk space), then resume: "
                          f"completed trials are kept") from None


def _search_loop(study: Any, objective: Callable[[dict[str, float]], Mapping[str, float]], metrics: Sequence[Metric],
                 num_trials: int, on_trial: Callable[[TrialRecord, list[TrialRecord]], None] | None
                 ) -> list[TrialRecord]:
    from vizier.service import pyvizier as vz

    done = load_trials(study)
    finished = sum(1 for t in study.trials().get() if t.status.name == "COMPLETED")
    while finished < num_trials:
        suggestions = _suggest(study)
        if not suggestions:
            break  # finite space exhausted
        trial = suggestions[0]
        params = {k: float(v) for k, v in trial.parameters.items()}
        start = time.perf_counter()
        values = {k: float(v) for k, v in objective(params).items()}
        missing = [m.name for m in metrics if m.name not in values]
        if missing:
            raise KeyError(f"objective did not return metric(s) {missing} (got {sorted(values)})")
        values["seconds"] = time.perf_counter() - start
        bad = [m.name for m in metrics if not math.isfinite(values[m.name])]
        if bad:
            trial.complete(vz.Measurement({k: v for k, v in values.items() if math.isfinite(v)}),
                           infeasible_reason=f"non-finite {bad}")
        else:
            trial.complete(vz.Measurement(values))
            record = TrialRecord(int(trial.id), params, values)
            done.append(record)
            if on_trial is not None:
                on_trial(record, list(done))
        finished += 1
    return load_trials(study)
