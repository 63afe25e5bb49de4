"""Reproducible RANDOM_SEARCH and QUASI_RANDOM_SEARCH for Vizier studies that carry a seed (imports Vizier).

Vizier seeds both from the clock or the OS, so two studies never agree and a study resumed after a kill draws
other points than an uninterrupted one. Here trial n's parameters are a pure function of (seed, n): uniform draws
from `RandomState([seed, n])`, or point n of the seeded scrambled Halton sequence (after Vizier's 1,000 skipped
points). A suggestion computed twice (a process killed mid-suggestion) is the same suggestion. Studies without a
seed in their metadata keep Vizier's own policies.
"""
from __future__ import annotations

from typing import Any

from vizier import pythia
from vizier._src.algorithms.designers import quasi_random
from vizier._src.algorithms.designers import random as random_designer
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
        space = request.study_config.search_space
        n, count = int(request.max_trial_id), int(request.count or 1)
        out = []
        for i in range(n, n + count):
            if self._algorithm == "RANDOM_SEARCH":
                designer: Any = random_designer.RandomDesigner(space, seed=[self._seed % 2**32, i])
            else:
                designer = quasi_random.QuasiRandomDesigner(space, skip_points=HALTON_SKIP + i,
                                                            seed=self._seed % 2**31)
            out += list(designer.suggest(1))
        return pythia.SuggestDecision(out)

    def early_stop(self, request: pythia.EarlyStopRequest) -> pythia.EarlyStopDecisions:
        return pythia.EarlyStopDecisions()


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
