"""`SamplingParams`: how each token is picked (temperature, top-p, top-k), and the keyword form of the same settings.

`sample_tokens`, `generate` and `jax_cat.evaluate.evaluate` take either a `SamplingParams` or the loose
`temperature` / `top_p` / `top_k` keywords (never both); `_sampling_params` turns either into one object.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each token: temperature 0 is greedy; top_k 0 and top_p 1 disable those filters.

    Accepted by `sample_tokens`, `generate` and `jax_cat.evaluate.evaluate` as `sampling_params=`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0) or not np.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        """Whether sampling is greedy (temperature 0): the sampler then takes the argmax and draws nothing."""
        return self.temperature == 0.0


def _sampling_params(
    sampling_params: SamplingParams | None, temperature: float | None, top_p: float | None, top_k: int | None, where: str
) -> SamplingParams:
    """One `SamplingParams` from either the object or the loose keywords (defaults 1.0 / 1.0 / 0), never both."""
    loose = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    given = [name for name, value in loose.items() if value is not None]
    if sampling_params is not None:
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"{where}: sampling_params must be a SamplingParams, got {type(sampling_params).__name__}")
        if given:
            raise ValueError(
                f"{where}: got sampling_params and {', '.join(given)}=; put every setting in the SamplingParams"
            )
        return sampling_params
    return SamplingParams(
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=0 if top_k is None else int(top_k),
    )
