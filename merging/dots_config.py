"""`DotsConfig`: every setting of a DoTS run (`merging.dots_run.run_dots`, `python -m merging.dots`), in one frozen
dataclass. Each field is one flag of the CLI (`query_pool` is `--query-pool`); the defaults are the flags'.

Settings are checked when the config is built (`ValueError` naming the setting by its flag, the range and the value
given), so a bad setting is refused before any model is loaded or anything is written. What depends on the machine
or the files (the mesh against the devices, the checkpoints, the queries, the output folder) is checked by
`run_dots` before it writes anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from jax_cat.io.safetensors import parse_size
from jax_cat.losses import strategy_from_spec
from merging.search import DESIGNERS

__all__ = ["DotsConfig", "EXTRACT_STYLES", "STUDY_KEYS"]

EXTRACT_STYLES = ("auto", "boxed", "gsm8k", "answer_is", "number")
# Settings that must not change between a run and its resume (they define the study and its objectives); recorded
# in <out>/config.json with the three checkpoints and the queries.
STUDY_KEYS = ("base", "sft", "rl", "queries", "query_pool", "density", "topk_scope", "rescale", "search_density",
              "coeff_range", "designer", "perplexity", "votes", "vote_strategy", "temperature", "top_p",
              "max_new_tokens", "extract", "seed", "n_easy", "n_hard", "max_difficulty", "selection_votes", "dtype")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class DotsConfig:
    """Settings of a DoTS run (the three checkpoints, the queries and the output folder are `run_dots` arguments).

    Attributes:
      trials: completed trials the study should have (a resumed study runs only the missing ones).
      resume: continue the study already in the output folder (same settings; refused otherwise).
      query_pool: how many of the queries (the first N) enter the query selection.
      designer: the Vizier algorithm (`merging.search.DESIGNERS`; GP-bandit by default).
      density: fraction of each task vector kept by top-k.
      topk_scope: "tensor" (top-k per tensor, the DoTS code) or "global" (over the whole task vector).
      rescale: restore each sparse vector's global L2 norm (the authors' option; off in every config they shipped).
      search_density: when given, each vector's density is also searched among these values (discrete).
      coeff_range: (low, high) range of both coefficients (the authors': 0.5 to 2.0).
      perplexity: the perplexity objective: of the query prompts ("prompt", the authors') or of the sampled answers
        ("answer"); both are recorded in the trial table.
      ppl_budget: the automatic pick: highest consistency with perplexity <= (1 + budget) x the base model's.
      votes: samples per query in a trial.
      vote_strategy: score each query by a test-time strategy's chance of landing on the pool's modal answer
        (e.g. "maj@5", "pass@2"; `jax_cat.losses.strategy_from_spec`) instead of the modal share; None: modal share.
      temperature, top_p, max_new_tokens: sampling of every candidate (the authors: 0.6, 1.0, 8192).
      extract: answer extraction (`jax_cat.rewards.extract_answer` styles; "auto" as `jax_cat.evaluate`).
      n_easy, n_hard: queries drawn from below / above the median difficulty.
      max_difficulty: queries harder than this (1 - mean consistency of the two sparse vectors alone) are dropped.
      selection_votes: samples per query when scoring difficulty.
      seed: the sampling seed (the same for every trial: common random numbers) and the query draw's.
      dtype: parameter dtype in memory ("float32" or "bfloat16").
      mesh: (data, fsdp, tensor) device mesh; None: every device on the data axis.
      batch_size: rows decoded together.
      max_shard_size: shard size of the written model ("2GB", "5GiB" or bytes).
      out_dtype: float dtype of the written model ("base": the base checkpoint's, or float32 / bfloat16 / float16).
      progress: progress bars and stage notes on stderr.
    """

    trials: int = 30
    resume: bool = False
    query_pool: int = 128
    designer: str = "GAUSSIAN_PROCESS_BANDIT"
    density: float = 0.3
    topk_scope: str = "tensor"
    rescale: bool = False
    search_density: tuple[float, ...] = ()
    coeff_range: tuple[float, float] = (0.5, 2.0)
    perplexity: str = "prompt"
    ppl_budget: float = 0.1
    votes: int = 7
    vote_strategy: str | None = None
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 512
    extract: str = "auto"
    n_easy: int = 8
    n_hard: int = 8
    max_difficulty: float = 0.8
    selection_votes: int = 5
    seed: int = 0
    dtype: str = "float32"
    mesh: tuple[int, int, int] | None = None
    batch_size: int = 128
    max_shard_size: str | int = "2GB"
    out_dtype: str = "base"
    progress: bool = True

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen: normalise once
        set_("search_density", tuple(float(d) for d in (self.search_density or ())))
        set_("coeff_range", tuple(float(c) for c in self.coeff_range))
        if self.mesh is not None:
            set_("mesh", tuple(int(n) for n in self.mesh))
        self._check()

    def _check(self) -> None:
        """Every setting in its range, named by its flag (`--query-pool -1` used to drop the last query)."""
        for name, allowed in (("designer", DESIGNERS), ("topk_scope", ("tensor", "global")),
                              ("perplexity", ("prompt", "answer")), ("extract", EXTRACT_STYLES),
                              ("dtype", ("float32", "bfloat16")),
                              ("out_dtype", ("base", "float32", "bfloat16", "float16"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        _at_least("query_pool", self.query_pool, 1)
        _at_least("trials", self.trials, 1)
        _within("density", self.density, 0, 1)
        for d in self.search_density:
            _within("search_density", d, 0, 1)
        if len(self.coeff_range) != 2:
            raise ValueError(f"--coeff-range needs two numbers LOW HIGH, got {self.coeff_range}")
        lo, hi = (_finite("coeff_range", v) for v in self.coeff_range)
        if not lo < hi:
            raise ValueError(f"--coeff-range LOW HIGH needs LOW < HIGH, got {lo:g} {hi:g}")
        if _finite("ppl_budget", self.ppl_budget) < 0:
            raise ValueError(f"--ppl-budget must be >= 0, got {self.ppl_budget:g}")
        _at_least("votes", self.votes, 2, " (consistency over one sample is always 1)")
        _at_least("selection_votes", self.selection_votes, 2, " (difficulty from one sample is always 0)")
        if not _finite("temperature", self.temperature) > 0:
            raise ValueError(f"--temperature must be > 0 (greedy samples all agree: consistency 1 for every trial), "
                             f"got {self.temperature:g}")
        _within("top_p", self.top_p, 0, 1)
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("n_easy", self.n_easy, 0)
        _at_least("n_hard", self.n_hard, 0)
        if self.n_easy + self.n_hard < 1:
            raise ValueError("--n-easy + --n-hard must be >= 1 (the queries each trial is scored on)")
        _within("max_difficulty", self.max_difficulty, 0, 1, lo_open=False)
        _at_least("seed", self.seed, 0)
        _at_least("batch_size", self.batch_size, 1)
        if self.mesh is not None:
            if len(self.mesh) != 3:
                raise ValueError(f"--mesh needs three sizes DATA FSDP TENSOR, got {self.mesh}")
            for axis, n in zip(("DATA", "FSDP", "TENSOR"), self.mesh):
                if n < 1:
                    raise ValueError(f"--mesh {axis} must be >= 1, got {n}")
        try:
            parse_size(self.max_shard_size)
        except ValueError as err:
            raise ValueError(f"--max-shard-size: {err}") from None
        strategy = self.strategy()
        if strategy is not None and getattr(strategy, "n", 0) > self.votes:
            raise ValueError(f"--vote-strategy {self.vote_strategy} needs {strategy.n} samples but --votes is "
                             f"{self.votes}")

    def strategy(self) -> Any:
        """The `vote_strategy` as a strategy object (`jax_cat.losses`), or None."""
        return strategy_from_spec(self.vote_strategy) if self.vote_strategy else None

    def study_record(self, *, base: Any, sft: Any, rl: Any, queries: Any) -> dict[str, Any]:
        """The settings that define the study (`STUDY_KEYS`), as written to <out>/config.json and compared on resume
        (the spellings of earlier releases: rescale "on"/"off", search_density a list or None)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(base=str(base), sft=str(sft), rl=str(rl),
                      queries=queries if isinstance(queries, list) else str(queries),
                      rescale="on" if self.rescale else "off", search_density=list(self.search_density) or None,
                      coeff_range=list(self.coeff_range))
        return {k: values[k] for k in STUDY_KEYS}


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{_flag(name)} must be a finite number, got {value}")
    return value


def _at_least(name: str, value: int, low: int, why: str = "") -> None:
    if value < low:
        raise ValueError(f"{_flag(name)} must be >= {low}{why}, got {value}")


def _within(name: str, value: float, lo: float, hi: float, lo_open: bool = True) -> None:
    _finite(name, value)
    if not ((lo < value) if lo_open else (lo <= value)) or value > hi:
        raise ValueError(f"{_flag(name)} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}")
