"""Multi-objective search of merge coefficients with OSS Vizier, in process, resumable; Pareto tools.

- `SearchSpace`: one float coefficient per task vector (range configurable; DoTS: [0.5, 2.0]) and, optionally,
  one density per vector from a list of values (discrete, so each sparsification is computed once and cached).
- `run_search(objective, space, metrics, ...)`: a Vizier study whose SQL datastore is a file (e.g. in the output
  folder): a search killed half way resumes with the same study; completed trials are never re-run and the
  trial that was being evaluated is handed back to us (Vizier keeps an ACTIVE trial assigned to its client id).
  Metrics carry their own goals (`Metric("consistency", "max")`, `Metric("perplexity", "min")`); nothing is negated.
  Designers: "GAUSSIAN_PROCESS_BANDIT" (default; ~5 s a suggestion on 2 CPU cores), "RANDOM_SEARCH",
  "QUASI_RANDOM_SEARCH", "NSGA2" (the genetic algorithm behind the DoTS authors' Optuna default), "DEFAULT"
  (GP-UCB-PE).
- `pareto_front`, `hypervolume_2d`: pure numpy, goals per metric.
- `pick`: the documented automatic choice (highest consistency among trials whose perplexity is within a budget of
  the base model's; see its docstring).

Vizier is imported inside the functions; nothing here imports jax_cat.
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
        return list(self.coefficients)

    def parameter_names(self) -> list[str]:
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
    """One suggestion, computed with x64 on in this thread only (Vizier's GP designers want float64)."""
    import jax

    with _keep_x64_setting(), jax.enable_x64(True):
        return study.suggest(count=1, client_id=CLIENT_ID)


def _study_config(space: SearchSpace, metrics: Sequence[Metric], designer: str) -> Any:
    from vizier.service import pyvizier as vz

    if designer not in DESIGNERS:
        raise ValueError(f"designer must be one of {DESIGNERS}, got {designer!r}")
    cfg = vz.StudyConfig(algorithm=designer)
    space.add_to(cfg.search_space.root)
    for m in metrics:
        goal = vz.ObjectiveMetricGoal.MAXIMIZE if m.goal == "max" else vz.ObjectiveMetricGoal.MINIMIZE
        cfg.metric_information.append(vz.MetricInformation(m.name, goal=goal))
    return cfg


def open_study(db_path: str | Path, study_id: str, space: SearchSpace, metrics: Sequence[Metric],
               designer: str = "GAUSSIAN_PROCESS_BANDIT", owner: str = "merging") -> Any:
    """Create, or load when the datastore already has it, the study `study_id` in the sqlite file `db_path`.

    Raises `StudyMismatchError` when a stored study with that id has other parameters, metrics or designer.
    """
    from vizier.service import clients

    db_path = Path(db_path).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    _use_database(f"sqlite:///{db_path}")
    cfg = _study_config(space, metrics, designer)
    with _keep_x64_setting():  # Vizier's in-process Pythia service turns jax_enable_x64 on globally when created
        study = clients.Study.from_study_config(cfg, owner=owner, study_id=study_id)
    stored = study.materialize_study_config()
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
) -> list[TrialRecord]:
    """Run (or continue) the study until it has `num_trials` completed trials; return them all.

    `objective(parameters)` returns at least the `metrics` (extra entries are stored too; "seconds" is added). A
    NaN/inf in a searched metric marks the trial infeasible (kept in the datastore, not on the front). `on_trial`
    is called after each completed trial with it and all completed so far (progress bars, tables on disk).
    """
    from vizier.service import pyvizier as vz

    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    study = open_study(db_path, study_id, space, metrics, designer)
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
