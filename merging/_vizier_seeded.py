"""Reproducible RANDOM_SEARCH and QUASI_RANDOM_SEARCH for Vizier studies that carry a seed (imports Vizier).

Vizier seeds both from the clock or the OS, so two studies never agree and a study resumed after a kill draws
other points than an uninterrupted one. Here trial n's parameters are a pure function of (seed, n): each parameter
drawn uniformly from its own stream, `numpy.random.default_rng([seed, n, crc32(name)])` (`random_parameters`), or
point n of the seeded scrambled Halton sequence (after Vizier's 1,000 skipped points). A suggestion computed twice
(a process killed mid-suggestion) is the same suggestion. Studies without a seed in their metadata keep Vizier's
own policies.

One stream per parameter, not Vizier's RandomDesigner seeded with [seed, n] (earlier): that draws all of a trial's
parameters in a row from one RandomState seeded by the consecutive keys [seed, n], and seed 0's DoTS search drew
density_sft == density_rl in 7 of its first 8 trials (independent draws: 1/3 each). Separate streams keyed by the
parameter's name make the parameters independent by construction (tests/merging/test_seeded_random.py checks the
equal-pair counts against the binomial law), and adding a parameter does not change the others' draws.
"""
from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
from vizier import pythia
from vizier import pyvizier as vz
from vizier._src.algorithms.designers import quasi_random
from vizier._src.service import policy_factory

NAMESPACE = "merging"  # study metadata namespace holding our "seed"
SEEDED = ("RANDOM_SEARCH", "QUASI_RANDOM_SEARCH")
HALTON_SKIP = 1000  # Vizier's QuasiRandomDesigner default


class SeededPolicy(pythia.Policy):
    """Suggest trial n (n = the study's max trial id + 1, ...) from (seed, n) alone."""

    def __init__(self, algorithm: str, seed: int):
        self._algorithm = algorithm
        self._seed = int(seed)

    def suggest(self, request: pythia.SuggestRequest) -> pythia.SuggestDecision:
        """The next `count` trials, each a pure function of (seed, trial id): a resumed or rerun study gets the same."""
        space = request.study_config.search_space
        n, count = int(request.max_trial_id), int(request.count or 1)
        out = []
        for i in range(n, n + count):
            if self._algorithm == "RANDOM_SEARCH":
                out.append(vz.TrialSuggestion(random_parameters(space, self._seed, i)))
            else:
                designer = quasi_random.QuasiRandomDesigner(space, skip_points=HALTON_SKIP + i,
                                                            seed=self._seed % 2**31)
                out += list(designer.suggest(1))
        return pythia.SuggestDecision(out)

    def early_stop(self, request: pythia.EarlyStopRequest) -> pythia.EarlyStopDecisions:
        """No trial is stopped early (every DoTS trial is cheap and scored in full)."""
        return pythia.EarlyStopDecisions()


def random_parameters(space: Any, seed: int, trial: int) -> dict[str, Any]:
    """Trial `trial`'s parameters of a flat Vizier search space, each drawn uniformly from its own stream
    `default_rng([seed, trial, crc32(name)])`: independent across parameters and trials, a pure function of
    (seed, trial, name). Floats uniform in [lo, hi] (log-uniform on a LOG scale), integers uniform in [lo, hi],
    discrete and categorical values uniform over the feasible values."""
    if space.is_conditional:
        raise ValueError("seeded RANDOM_SEARCH supports flat search spaces only (this one is conditional)")
    out: dict[str, Any] = {}
    for pc in space.parameters:
        rng = np.random.default_rng([int(seed) % 2**32, int(trial), zlib.crc32(pc.name.encode())])
        if pc.type == vz.ParameterType.DOUBLE:
            lo, hi = pc.bounds
            if pc.scale_type == vz.ScaleType.LOG and lo > 0:
                out[pc.name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            else:
                out[pc.name] = float(rng.uniform(lo, hi))
        elif pc.type == vz.ParameterType.INTEGER:
            lo, hi = pc.bounds
            out[pc.name] = int(rng.integers(int(lo), int(hi) + 1))
        else:  # DISCRETE or CATEGORICAL
            values = list(pc.feasible_values)
            out[pc.name] = values[int(rng.integers(len(values)))]
    return out


class SeededPolicyFactory(policy_factory.DefaultPolicyFactory):
    """Vizier's default policies, except seeded RANDOM/QUASI_RANDOM studies."""

    def __call__(self, problem_statement: Any, algorithm: str, policy_supporter: Any, study_name: str) -> Any:
        seed = study_seed(problem_statement)
        if algorithm in SEEDED and seed is not None:
            return SeededPolicy(algorithm, seed)
        return super().__call__(problem_statement, algorithm, policy_supporter, study_name)


def study_seed(problem_statement: Any) -> int | None:
    """The seed stored in a study config's metadata, or None."""
    value = problem_statement.metadata.ns(NAMESPACE).get("seed")
    return None if value is None else int(value)


def install(servicer: Any) -> None:
    """Make the in-process Vizier servicer's Pythia service use `SeededPolicyFactory` (idempotent)."""
    pythia_service = servicer.default_pythia_service
    if not isinstance(getattr(pythia_service, "_policy_factory", None), SeededPolicyFactory):
        object.__setattr__(pythia_service, "_policy_factory", SeededPolicyFactory())
