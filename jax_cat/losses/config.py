"""`CATLossConfig`: every static setting of the CAT RL objective in one frozen, hashable dataclass, with presets.

Pass it as ``config=`` to `cat_advantages` / `cat_rl_loss` (it is hashable, so it is a static jit argument).
Keyword arguments given beside it override its fields when they differ from the field's default (to set a preset's
field back to the default, use ``dataclasses.replace(preset, field=default)``). The strategy (PassAtN(16), ...) is
not part of the config: it stays the loss's positional argument. "Reference" below is the authors' public PyTorch
code ("compute-aligned-training", ``configs/rl/*.json``); docs/losses.md tabulates where it and the paper differ.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from jax_cat.losses.reduce import REDUCTIONS, canonical_reduction

__all__ = ["CATLossConfig", "REFERENCE_PASS_AT_N", "REFERENCE_MAJORITY", "NORMALIZE_MODES", "resolve_config"]

NORMALIZE_MODES = ("batch", "mixed", "none", "running")


@dataclass(frozen=True)
class CATLossConfig:
    """Static settings of the CAT-weighted GRPO objective (defaults = this library's; reference values in brackets).

    Advantage side (used by `cat_advantages`):
      form: "raw" multiplies A by dS/dp, "log" by p S'/S [raw or log per experiment].
      p_source: "group" = Laplace (c + smoothing)/(M + 2 smoothing) per prompt from `correct` [majority presets];
        "sequence" = exp(clip(Σ rollout-policy token log-probs, logp_floor, 0)) per completion [pass@N presets].
      smoothing: Laplace pseudo-count [1]. logp_floor: floor of the sequence log-prob [-50, App. J].
      min_k: lower bound of the dynamic majority threshold [2].
      no_answer: "rival" = rollouts without an extracted answer count together as ONE wrong answer in the dynamic
        threshold [reference]; "abstain" = they cast no vote.
      weight_clip: upper clip of the CAT weight before normalising [pass@N 50, majority 10; None = no clip].
      normalize: "batch" = divide by the mean weight over all samples of the logical batch [reference, paper's
        E[w̃]=1; majority presets]; "mixed" = by the mean over prompts with mixed outcomes of each prompt's mean
        weight; "none" [pass@N presets]; "running" = by an exponential mean of the batch mean weight carried in
        `CATState` across steps.
      norm_decay: decay of that exponential mean (bias-corrected) [no reference; 0.9].
      bon_quantile: BestOfN's reward quantile: "group" = within the prompt's rollouts [reference "within_prompt"];
        "history" = against a FIFO of past rewards carried in `CATState` [reference "history", 4000 rewards].
      adv_eps: GRPO std epsilon [1e-4]. std_ddof: 1 = unbiased std [1].
      scale_rewards: what the centred reward is divided by (TRL's name and values): "group" = the prompt's reward
        std (GRPO) [reference]; "batch" = the std of every reward in the batch; "none" = no division (Dr. GRPO).
      all_wrong_penalty: subtracted from the advantage of every rollout of a prompt with no correct rollout
        [majority 0.5, pass@N 0]. advantage_clip: clip |A| (after the penalty) [None].
    Loss side (used by `cat_rl_loss`):
      surrogate: "token" = per-token ratio exp(lp_t - old_t) (GRPO/DAPO); "sequence" = one ratio per sequence
        exp(Σ_t (lp_t - old_t)) [reference, paper's Sec. C]. Both are -ρA when unclipped (the REINFORCE gradient).
      clip_eps_low, clip_eps_high: PPO clip range (None, None = no clipping) [reference "reinforce": no clipping].
      beta: weight of the k3 KL to the reference policy [pass@N 0.05, majority 0].
      kl: "sequence_mean" = β · mean over sequences of each sequence's token-mean k3 [reference]; "token" = β · k3
        per token, reduced like the policy term.
      reduction: "token_mean", "sequence_mean" or "token_sum" (see jax_cat.losses.reduce) [token_sum].
    """

    form: Literal["raw", "log"] = "raw"
    p_source: Literal["group", "sequence"] = "group"
    smoothing: float = 1.0
    logp_floor: float = -50.0
    min_k: int = 2
    no_answer: Literal["rival", "abstain"] = "rival"
    weight_clip: float | None = None
    normalize: Literal["batch", "mixed", "none", "running"] = "batch"
    norm_decay: float = 0.9
    bon_quantile: Literal["group", "history"] = "group"
    adv_eps: float = 1e-4
    std_ddof: int = 1
    scale_rewards: Literal["group", "batch", "none"] = "group"
    all_wrong_penalty: float = 0.0
    advantage_clip: float | None = None
    surrogate: Literal["token", "sequence"] = "token"
    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    beta: float = 0.0
    kl: Literal["sequence_mean", "token"] = "sequence_mean"
    reduction: Literal["token_mean", "sequence_mean", "token_sum"] = "token_mean"

    def __post_init__(self) -> None:
        if isinstance(self.normalize, bool):  # the True/False switch went in 0.1.0 (CHANGELOG.md)
            raise ValueError(f"CATLossConfig.normalize takes a mode: 'batch' (was True) or 'none' (was False), "
                             f"or 'mixed' / 'running'; got {self.normalize!r}")
        object.__setattr__(self, "reduction", canonical_reduction(self.reduction))
        choices = {"form": ("raw", "log"), "p_source": ("group", "sequence"), "no_answer": ("rival", "abstain"),
                   "normalize": NORMALIZE_MODES, "bon_quantile": ("group", "history"),
                   "surrogate": ("token", "sequence"), "kl": ("sequence_mean", "token"), "reduction": REDUCTIONS,
                   "scale_rewards": ("group", "batch", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CATLossConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("smoothing", "adv_eps", "all_wrong_penalty", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"CATLossConfig.{name} must be a finite number >= 0, got {v!r}")
        for name in ("weight_clip", "advantage_clip", "clip_eps_low", "clip_eps_high"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise ValueError(f"CATLossConfig.{name} must be None or a finite number > 0, got {v!r}")
        if not isinstance(self.logp_floor, (int, float)) or not self.logp_floor < 0:
            raise ValueError(f"CATLossConfig.logp_floor must be a negative number, got {self.logp_floor!r}")
        if not 0.0 <= self.norm_decay < 1.0:
            raise ValueError(f"CATLossConfig.norm_decay must be in [0, 1), got {self.norm_decay!r}")
        for name in ("min_k", "std_ddof"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "min_k" else 0):
                raise ValueError(f"CATLossConfig.{name} must be an int >= {1 if name == 'min_k' else 0}, got {v!r}")

    def replace(self, **changes: Any) -> "CATLossConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# The authors' configs/rl/math_passn_*.json: sequence p, no normalisation, weight clip 50, KL 0.05 as a
# per-sequence token mean, REINFORCE (no ratio clipping), loss = Σ over sequences of Σ_t / #sequences.
REFERENCE_PASS_AT_N = CATLossConfig(p_source="sequence", normalize="none", weight_clip=50.0, beta=0.05,
                                    kl="sequence_mean", surrogate="sequence", reduction="token_sum",
                                    no_answer="rival", all_wrong_penalty=0.0)
# configs/rl/math_majority_*.json: Laplace p, batch-normalised weights, clip 10, all-wrong penalty 0.5, no KL.
REFERENCE_MAJORITY = CATLossConfig(p_source="group", normalize="batch", weight_clip=10.0, beta=0.0,
                                   kl="sequence_mean", surrogate="sequence", reduction="token_sum",
                                   no_answer="rival", all_wrong_penalty=0.5)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CATLossConfig)}


def resolve_config(config: CATLossConfig | None, **kwargs: Any) -> CATLossConfig:
    """``config`` (default CATLossConfig()) with every keyword that differs from the field default applied on top."""
    if config is None:
        config = CATLossConfig()
    elif not isinstance(config, CATLossConfig):
        raise TypeError(f"config must be a CATLossConfig, got {type(config).__name__}")
    changes = {}
    for name, value in kwargs.items():
        if name not in _DEFAULTS:
            raise TypeError(f"unknown CAT setting {name!r}")
        default = _DEFAULTS[name]
        if value is not default and value != default:
            changes[name] = value
    return dataclasses.replace(config, **changes) if changes else config
