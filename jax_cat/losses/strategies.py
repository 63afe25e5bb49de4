"""Test-time strategies as small frozen dataclasses: one object serves the CAT loss weights and the metric.

Notation: ``p`` is the policy's single-sample success probability on a prompt; ``S(p)`` is the probability
that the strategy (with ``n`` samples) succeeds. Each strategy gives, as pure JAX on arrays of any shape:

- ``success_probability(p)`` = S(p),
- ``rl_weight(p)`` = dS/dp (the factor on the policy gradient when RL maximises S),
- ``sft_weight(p)`` = p S'(p) / S(p) (the factor on the cross-entropy gradient when SFT minimises -log S),
- ``log_success_from_logp(logp)`` = log S(exp(logp)), stable for sequence log-probabilities far below the
  float range of ``p`` (used by the SFT loss, so its gradient is exactly sft_weight x the CE gradient).

All weights are computed in log space, are finite for n up to (at least) 1024 and p in [0, 1] inclusive,
take their limits at the end points (no NaN/inf), follow the dtype of ``p`` and are jit/vmap-able.

``estimate(correct, answers=, scores=)`` is the empirical counterpart: the expected success of the strategy
when its ``n`` samples are drawn without replacement from a pool of ``M >= n`` samples of ONE problem
(numpy, host side; used by evaluation and by the DoTS consistency objective). See docs/losses.md.

>>> from jax_cat.losses import MajorityAtN
>>> maj = MajorityAtN(8)  # k = floor(8/2) + 1 = 5 votes needed
>>> round(float(maj.success_probability(0.5)), 4), float(maj.sft_weight(0.0)), round(float(maj.rl_weight(0.5)), 4)
(0.3633, 5.0, 2.1875)
>>> MajorityAtN(3).estimate([1, 0, 1, 0], answers=["a", "b", "a", None])  # plurality vote over 3-subsets of 4
0.75
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlog1py, xlogy

__all__ = [
    "PassAtN",
    "MajorityAtN",
    "BestOfN",
    "Strategy",
    "pass_at_k",
    "pass_at_k_many",
    "majority_rl_weight",
    "majority_sft_weight",
    "strategy_from_spec",
    "MAJORITY_EXACT_LIMIT",
    "MAJORITY_MC_SAMPLES",
    "MAJORITY_MC_SEED",
]

# Majority estimate: exact enumeration of n-subsets up to this many, else a fixed-seed Monte Carlo.
MAJORITY_EXACT_LIMIT = 20000
MAJORITY_MC_SAMPLES = 20000
MAJORITY_MC_SEED = 0


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def _as_float(p: Any) -> jax.Array:
    """p as a floating JAX array (keeps float dtypes, casts ints/bools to the default float)."""
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.result_type(float))
    return p


def _log_comb(n: int, i: np.ndarray) -> np.ndarray:
    """log C(n, i) in float64 (host constant)."""
    i = np.asarray(i, dtype=np.float64)
    from math import lgamma

    lg = np.vectorize(lgamma)
    return lg(n + 1.0) - lg(i + 1.0) - lg(n - i + 1.0)


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


# Strategy math compiled once per (strategy, shape, dtype): eager calls stay fast; nests under jit/vmap/grad.
_jit_method = partial(jax.jit, static_argnums=0)


def _near_one(dtype: Any) -> float:
    """|logp| below which p == 1 to working precision (log S is then 0, or N logp for k = N)."""
    return float(jnp.finfo(dtype).eps) ** 2


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _log_success_from_logp(strategy: Any, a: jax.Array) -> jax.Array:
    """log S(exp(a)) with the closed-form derivative sft_weight(exp(a)) (exact, nonnegative, no cancellation)."""
    return strategy._log_success_from_logp_primal(a)


@_log_success_from_logp.defjvp
def _log_success_from_logp_jvp(strategy: Any, primals: tuple, tangents: tuple) -> tuple:
    (a,), (a_dot,) = primals, tangents
    return _log_success_from_logp(strategy, a), strategy.sft_weight(jnp.exp(a)) * a_dot


def _check_n(n: Any, name: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")


def _pool(correct: Any, n: int, who: str) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim != 1:
        raise ValueError(f"{who}.estimate: `correct` must be 1-D (the M samples of one problem), got shape {c.shape}")
    c = c.astype(np.float64)
    if c.size < n:
        raise ValueError(f"{who}.estimate: need M >= n samples, got M={c.size} < n={n}")
    return c


# ----------------------------------------------------------------------------------------------------------
# module-level estimators
# ----------------------------------------------------------------------------------------------------------
def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): P(an k-subset of the M samples holds a correct one) = 1 - C(M-c,k)/C(M,k)."""
    m, c = int(num_samples), int(num_correct)
    _check_n(k, "k")
    if not 0 <= c <= m:
        raise ValueError(f"pass_at_k: need 0 <= num_correct <= num_samples, got num_correct={c}, num_samples={m}")
    if m < k:
        raise ValueError(f"pass_at_k: need num_samples >= k, got num_samples={m} < k={k}")
    if m - c < k:
        return 1.0
    # 1 - prod_{i=m-c+1}^{m} (1 - k/i): stable product form, no big binomials.
    i = np.arange(m - c + 1, m + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def pass_at_k_many(num_samples: Any, num_correct: Any, k: int) -> np.ndarray:
    """Vectorised `pass_at_k` over problems: arrays num_samples[P], num_correct[P] -> pass@k[P] (float64)."""
    m = np.asarray(num_samples, dtype=np.int64)
    c = np.asarray(num_correct, dtype=np.int64)
    m, c = np.broadcast_arrays(m, c)
    _check_n(k, "k")
    if np.any(c < 0) or np.any(c > m):
        raise ValueError("pass_at_k_many: need 0 <= num_correct <= num_samples for every problem")
    if np.any(m < k):
        raise ValueError(f"pass_at_k_many: need num_samples >= k={k} for every problem, min is {m.min()}")
    # log C(m-c, k) - log C(m, k) via lgamma (float64); exact 1 where m - c < k.
    from scipy.special import gammaln  # scipy ships with jax

    w = m - c
    ok = w >= k
    wk = np.where(ok, w, k)
    log_ratio = (gammaln(wk + 1) - gammaln(wk - k + 1)) - (gammaln(m + 1) - gammaln(m - k + 1))
    return np.where(ok, -np.expm1(log_ratio), 1.0)


# ----------------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PassAtN:
    """pass@N: success when any of N independent samples is correct. S(p) = 1 - (1-p)^N."""

    n: int

    def __post_init__(self) -> None:
        _check_n(self.n)

    @property
    def name(self) -> str:
        """The name "pass@N" that metrics, logs and plots show."""
        return f"pass@{self.n}"

    @_jit_method
    def success_probability(self, p: Any) -> jax.Array:
        """S(p) = 1 - (1-p)^N."""
        p = _as_float(p)
        log_miss = self.n * jnp.log1p(-p)  # log (1-p)^N
        # -expm1 where S is small (exact there); 1 - exp where S > 1/2 (its derivative keeps full precision).
        return jnp.where(log_miss > -math.log(2.0), -jnp.expm1(log_miss), 1.0 - jnp.exp(log_miss))

    @_jit_method
    def log_success_probability(self, p: Any) -> jax.Array:
        """log S(p); -inf at p = 0."""
        return jnp.log(self.success_probability(p))

    @_jit_method
    def rl_weight(self, p: Any) -> jax.Array:
        """dS/dp = N (1-p)^(N-1)."""
        p = _as_float(p)
        if self.n == 1:
            return jnp.ones_like(p)
        return self.n * jnp.exp((self.n - 1) * jnp.log1p(-p))

    @_jit_method
    def sft_weight(self, p: Any) -> jax.Array:
        """p S'/S = N p (1-p)^(N-1) / (1 - (1-p)^N); 1 at p = 0, 0 at p = 1 (N > 1)."""
        p = _as_float(p)
        if self.n == 1:
            return jnp.ones_like(p)
        zero = p <= 0
        ps = jnp.where(zero, 0.5, p)
        l1m = jnp.log1p(-ps)
        w = self.n * ps * jnp.exp((self.n - 1) * l1m) / (-jnp.expm1(self.n * l1m))
        return jnp.where(zero, jnp.ones_like(p), w)

    @_jit_method
    def log_success_from_logp(self, logp: Any) -> jax.Array:
        """log S(exp(logp)) for a log-probability logp <= 0; its derivative in logp is sft_weight(exp(logp))."""
        a = _as_float(logp)
        if self.n == 1:
            return a  # exactly plain cross-entropy
        return _log_success_from_logp(self, a)

    def _log_success_from_logp_primal(self, a: jax.Array) -> jax.Array:
        # log S = a + log(S(p)/p) with S(p)/p = N - C(N,2) p + ... -> N as p -> 0.
        dt = a.dtype
        top = a >= -_near_one(dt)  # p == 1 to working precision: log S = 0
        a_s = jnp.where(top | ~jnp.isfinite(a), -1.0, a)
        p = jnp.exp(a_s)
        tiny = p < jnp.finfo(dt).eps
        ratio = -jnp.expm1(self.n * _log1mexp(a_s)) / p
        ratio = jnp.where(tiny, self.n * (1.0 - 0.5 * (self.n - 1) * p), ratio)
        out = jnp.where(top, jnp.zeros_like(a), jnp.minimum(a_s + jnp.log(ratio), 0.0))
        return jnp.where(jnp.isneginf(a), a, out)

    def estimate(self, correct: Any, *, answers: Sequence[Hashable] | None = None, scores: Any = None) -> float:
        """Unbiased pass@n from the M samples of one problem (answers/scores ignored)."""
        c = _pool(correct, self.n, "PassAtN")
        return pass_at_k(c.size, int(np.count_nonzero(c)), self.n)

    def estimate_many(self, correct: Any, *, answers: Any = None, scores: Any = None) -> np.ndarray:
        """`estimate` for P problems at once: correct[P, M] -> [P] (vectorised)."""
        c = np.asarray(correct)
        if c.ndim != 2:
            raise ValueError(f"PassAtN.estimate_many: `correct` must be [P, M], got shape {c.shape}")
        return pass_at_k_many(np.full(c.shape[0], c.shape[1]), np.count_nonzero(c, axis=1), self.n)


@dataclass(frozen=True)
class MajorityAtN:
    """maj@N with vote threshold k: success when at least k of N votes go to the correct answer.

    Training model (CAT): S(p) = P(Binomial(N, p) >= k) = sum_{i>=k} C(N,i) p^i (1-p)^(N-i).
    ``k=None`` means floor(N/2)+1 (a strict majority; it is resolved at construction, so
    ``MajorityAtN(4) == MajorityAtN(4, 3)``). k = 1 is pass@N. The evaluation ``estimate`` is the plurality
    vote actually used at test time (k plays no role there).
    """

    n: int
    k: int | None = None

    def __post_init__(self) -> None:
        _check_n(self.n)
        if self.k is None:
            object.__setattr__(self, "k", self.n // 2 + 1)
        _check_n(self.k, "k")
        if self.k > self.n:
            raise ValueError(f"MajorityAtN: need 1 <= k <= n, got k={self.k}, n={self.n}")

    @property
    def name(self) -> str:
        """'maj@N' (strict majority) or 'maj@N:k=K'; round-trips through `strategy_from_spec`."""
        return f"maj@{self.n}" if self.k == self.n // 2 + 1 else f"maj@{self.n}:k={self.k}"

    # -- binomial tail in log space --------------------------------------------------------------------------
    def _tail_terms(self, log_p: jax.Array, log_1mp: jax.Array, i: np.ndarray) -> jax.Array:
        """log C(N,i) + i log p + (N-i) log(1-p) over a trailing axis i, with 0*log 0 = 0."""
        dt = log_p.dtype
        lc = jnp.asarray(_log_comb(self.n, i), dt)
        ii = jnp.asarray(i, dt)
        ni = jnp.asarray(self.n - i, dt)
        a = log_p[..., None]
        b = log_1mp[..., None]
        ta = jnp.where(ii == 0, 0.0, ii * jnp.where(ii == 0, 0.0, a))
        tb = jnp.where(ni == 0, 0.0, ni * jnp.where(ni == 0, 0.0, b))
        return lc + ta + tb

    def _log_tail(self, log_p: jax.Array, log_1mp: jax.Array) -> jax.Array:
        """log P(X >= k), X ~ Binomial(N, p): the upper sum where it is small, log(1 - lower sum) where it is not."""
        terms = self._tail_terms(log_p, log_1mp, np.arange(0, self.n + 1))
        upper = jax.nn.logsumexp(terms[..., self.k:], axis=-1)
        lower = jax.nn.logsumexp(terms[..., : self.k], axis=-1)
        use_lower = lower < upper  # S > 1/2: 1 - lower is exact to rounding
        return jnp.where(use_lower, _log1mexp(jnp.where(use_lower, lower, -1.0)), upper)

    @_jit_method
    def success_probability(self, p: Any) -> jax.Array:
        """S(p) = P(Binomial(N, p) >= k)."""
        return jnp.exp(self.log_success_probability(p))

    @_jit_method
    def log_success_probability(self, p: Any) -> jax.Array:
        """log P(Binomial(N, p) >= k), stable far into the tails."""
        p = _as_float(p)
        return self._log_tail(jnp.log(p), jnp.log1p(-p))

    @_jit_method
    def log_success_from_logp(self, logp: Any) -> jax.Array:
        """log S(exp(logp)) computed from logp directly (no underflow of p); derivative = sft_weight(exp(logp))."""
        return _log_success_from_logp(self, _as_float(logp))

    def _log_success_from_logp_primal(self, a: jax.Array) -> jax.Array:
        dt = a.dtype
        top = a >= -_near_one(dt)
        a_s = jnp.where(top | ~jnp.isfinite(a), -1.0, a)
        out = jnp.minimum(self._log_tail(a_s, _log1mexp(a_s)), 0.0)
        # at p == 1: log S = 0, except k == N where log S = N * logp exactly
        out = jnp.where(top, (self.n * a) if self.k == self.n else jnp.zeros_like(a), out)
        return jnp.where(jnp.isneginf(a), a, out)

    @_jit_method
    def rl_weight(self, p: Any, k: Any = None) -> jax.Array:
        """dS/dp = N C(N-1,k-1) p^(k-1) (1-p)^(N-k). ``k`` (int array broadcastable to p) overrides self.k."""
        return majority_rl_weight(p, self.n, self.k if k is None else k)

    @_jit_method
    def sft_weight(self, p: Any, k: Any = None) -> jax.Array:
        """p S'/S = k C(N,k) p^k (1-p)^(N-k) / S(p); k at p = 0, 0 at p = 1 (N when k = N). ``k`` overrides self.k."""
        return majority_sft_weight(p, self.n, self.k if k is None else k)

    def estimate(self, correct: Any, *, answers: Sequence[Hashable] | None = None, scores: Any = None,
                 ties: str = "split") -> float:
        """Expected plurality-vote success over n-subsets of the pool (None answers never win).

        ``ties``: "split" (default) = a tie between top answers is broken uniformly at random (its expected value;
        the reference's first-occurrence rule over a random draw order); "failure" = a tied top count fails (the
        reference's ``tie_break="failure"``). Exact enumeration when C(M, n) <= MAJORITY_EXACT_LIMIT, else a Monte
        Carlo over MAJORITY_MC_SAMPLES uniformly random n-subsets drawn with a fixed seed (MAJORITY_MC_SEED).
        """
        c = _pool(correct, self.n, "MajorityAtN")
        if answers is None:
            raise ValueError("MajorityAtN.estimate needs `answers` (one hashable per sample, None = no answer)")
        if len(answers) != c.size:
            raise ValueError(f"MajorityAtN.estimate: len(answers)={len(answers)} != len(correct)={c.size}")
        if ties not in ("split", "failure"):
            raise ValueError(f"MajorityAtN.estimate: ties must be 'split' or 'failure', got {ties!r}")
        return float(_majority_estimate(c, answers, self.n, ties))

    def estimate_many(self, correct: Any, *, answers: Sequence[Sequence[Hashable]] | None = None,
                      scores: Any = None, ties: str = "split") -> np.ndarray:
        """`estimate` for P problems: correct[P, M], answers P lists of M -> [P]."""
        c = np.asarray(correct)
        if answers is None or len(answers) != len(c):
            raise ValueError("MajorityAtN.estimate_many needs `answers` with one list per problem")
        return np.array([self.estimate(ci, answers=ai, ties=ties) for ci, ai in zip(c, answers)], dtype=np.float64)


@dataclass(frozen=True)
class BestOfN:
    """best-of-N with a scorer: the sample with the highest score among N is returned.

    In terms of the reward quantile q of a sample, the chance that BoN's pick is at or below quantile q is q^N,
    so ``success_probability(q) = q^N`` and ``rl_weight(q) = N q^(N-1)`` (the density of BoN's pick: the
    factor by which BoN reweights a sample at quantile q). ``sft_weight(p)`` takes the single-sample success p
    and is the pass@N one (with a perfect verifier BoN succeeds iff any sample is correct).
    """

    n: int

    def __post_init__(self) -> None:
        _check_n(self.n)

    @property
    def name(self) -> str:
        """The name "bon@N" that metrics, logs and plots show."""
        return f"bon@{self.n}"

    @_jit_method
    def success_probability(self, q: Any) -> jax.Array:
        """q^N: the CDF of the best of N at reward quantile q."""
        q = _as_float(q)
        if self.n == 1:
            return q
        return jnp.exp(xlogy(jnp.asarray(self.n, q.dtype), q))

    @_jit_method
    def rl_weight(self, q: Any) -> jax.Array:
        """N q^(N-1) at the sample's reward quantile q."""
        q = _as_float(q)
        if self.n == 1:
            return jnp.ones_like(q)
        return self.n * jnp.exp(xlogy(jnp.asarray(self.n - 1, q.dtype), q))

    @_jit_method
    def sft_weight(self, p: Any) -> jax.Array:
        """The pass@N SFT weight at single-sample success p."""
        return PassAtN(self.n).sft_weight(p)

    @_jit_method
    def log_success_from_logp(self, logp: Any) -> jax.Array:
        """The pass@N SFT objective (log S of pass@N at p = exp(logp))."""
        return PassAtN(self.n).log_success_from_logp(logp)

    def estimate(self, correct: Any, *, answers: Any = None, scores: Any = None) -> float:
        """Expected correctness of the top-scored sample of a random n-subset (order statistics, exact).

        A block of t tied scores whose best member ranks s (0-based, descending) holds the subset's maximum with
        probability [C(M-s, n) - C(M-s-t, n)] / C(M, n); the tie is broken uniformly, so the block contributes its
        mean correctness.
        """
        c = _pool(correct, self.n, "BestOfN")
        if scores is None:
            raise ValueError("BestOfN.estimate needs `scores` (one float per sample)")
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != c.shape:
            raise ValueError(f"BestOfN.estimate: scores shape {s.shape} != correct shape {c.shape}")
        if np.any(np.isnan(s)):
            raise ValueError("BestOfN.estimate: `scores` contains NaN")
        m, n = c.size, self.n
        order = np.argsort(-s, kind="stable")
        s_sorted, c_sorted = s[order], c[order]
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        sizes = np.diff(np.r_[starts, m])
        total = math.comb(m, n)
        value = 0.0
        for st, t in zip(starts.tolist(), sizes.tolist()):
            hits = math.comb(m - st, n) - math.comb(m - st - t, n)
            if hits:
                value += (hits / total) * float(c_sorted[st:st + t].mean())
        return value

    def estimate_many(self, correct: Any, *, answers: Any = None, scores: Any = None) -> np.ndarray:
        """`estimate` for P problems: correct[P, M], scores[P, M] -> [P]."""
        c = np.asarray(correct)
        s = np.asarray(scores) if scores is not None else None
        if s is None or s.shape != c.shape:
            raise ValueError("BestOfN.estimate_many needs `scores` of the same [P, M] shape as `correct`")
        return np.array([self.estimate(ci, scores=si) for ci, si in zip(c, s)], dtype=np.float64)


Strategy = PassAtN | MajorityAtN | BestOfN


# ----------------------------------------------------------------------------------------------------------
# majority weights with a per-element threshold k (the dynamic consensus threshold varies by prompt)
# ----------------------------------------------------------------------------------------------------------
def _k_array(k: Any, n: int, like: jax.Array) -> jax.Array:
    if isinstance(k, (int, np.integer)) and not 1 <= k <= n:
        raise ValueError(f"majority threshold k must be in [1, n={n}], got {k}")
    return jnp.clip(jnp.asarray(k, jnp.int32), 1, n)  # traced k cannot be checked; clipped into range


def majority_rl_weight(p: Any, n: int, k: Any) -> jax.Array:
    """N C(N-1,k-1) p^(k-1) (1-p)^(N-k) = k C(N,k) p^(k-1) (1-p)^(N-k), with k an int or an int array."""
    p = _as_float(p)
    _check_n(n)
    kk = _k_array(k, n, p)
    log_c = jnp.asarray(_log_comb(n, np.arange(n + 1)), p.dtype)[kk]  # log C(n, k), table built in float64
    kf = kk.astype(p.dtype)
    return jnp.exp(jnp.log(kf) + log_c + xlogy(kf - 1, p) + xlog1py(n - kf, -p))


def majority_sft_weight(p: Any, n: int, k: Any) -> jax.Array:
    """k C(N,k) p^k (1-p)^(N-k) / P(Bin(N,p) >= k), as k / sum_{i>=k} [C(N,i)/C(N,k)] (p/(1-p))^(i-k)."""
    p = _as_float(p)
    _check_n(n)
    kk = _k_array(k, n, p)
    table = jnp.asarray(_log_comb(n, np.arange(n + 1)), p.dtype)
    kk, p = jnp.broadcast_arrays(kk, p)
    i = jnp.arange(n + 1, dtype=jnp.int32)
    j = i - kk[..., None]  # [..., n+1]
    use = j >= 0
    jf = jnp.where(use, j, 0).astype(p.dtype)
    pp = p[..., None]
    odds = xlogy(jf, pp) - xlog1py(jf, -pp)  # j * logit(p); exactly 0 for j = 0, even at p in {0, 1}
    terms = jnp.where(use, table - table[kk][..., None] + odds, -jnp.inf)
    return kk.astype(p.dtype) * jnp.exp(-jax.nn.logsumexp(terms, axis=-1))


def strategy_from_spec(spec: str) -> Strategy:
    """Parse 'pass@16', 'maj@8', 'maj@8:k=3' (or 'maj@8,k=3'), 'bon@4' into a strategy object."""
    m = re.fullmatch(r"\s*(pass|maj|majority|bon|best_of_n|best-of-n)\s*@\s*(\d+)\s*(?:[:,]\s*k\s*=\s*(\d+))?\s*",
                     spec.lower())
    if not m:
        raise ValueError(f"strategy spec {spec!r} not understood; use 'pass@N', 'maj@N', 'maj@N:k=K' or 'bon@N'")
    kind, n, k = m.group(1), int(m.group(2)), m.group(3)
    if k is not None and not kind.startswith("maj"):
        raise ValueError(f"strategy spec {spec!r}: k= only applies to maj@N")
    if kind == "pass":
        return PassAtN(n)
    if kind.startswith("maj"):
        return MajorityAtN(n, None if k is None else int(k))
    return BestOfN(n)


# ----------------------------------------------------------------------------------------------------------
# majority-vote estimate
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _subsets(m: int, n: int, exact_limit: int, mc_samples: int, seed: int) -> np.ndarray:
    """All n-subsets of range(m) if there are at most exact_limit, else mc_samples uniform ones (fixed seed).

    The same index sets serve every problem with the same (m, n), so they are built once and cached (read-only).
    """
    if math.comb(m, n) <= exact_limit:
        out = np.array(list(itertools.combinations(range(m), n)), dtype=np.int32).reshape(-1, n)
    else:
        rng = np.random.default_rng(seed)
        out = np.argpartition(rng.random((mc_samples, m)), n - 1, axis=1)[:, :n].astype(np.int32)
    out.setflags(write=False)
    return out


def _majority_estimate(correct: np.ndarray, answers: Sequence[Hashable], n: int, ties: str = "split") -> float:
    m = correct.size
    ids: dict[Hashable, int] = {}
    code = np.empty(m, dtype=np.int64)
    for j, a in enumerate(answers):
        code[j] = -1 if a is None else ids.setdefault(a, len(ids))
    num_answers = len(ids)
    if num_answers == 0:
        return 0.0
    # correctness of an answer = mean correctness of the pool samples carrying it (they agree in practice).
    ans_correct = np.zeros(num_answers)
    np.add.at(ans_correct, code[code >= 0], correct[code >= 0])
    counts_pool = np.bincount(code[code >= 0], minlength=num_answers)
    ans_correct = ans_correct / np.maximum(counts_pool, 1)

    subsets = _subsets(m, n, MAJORITY_EXACT_LIMIT, MAJORITY_MC_SAMPLES, MAJORITY_MC_SEED)
    sub_codes = code[subsets]  # [S, n]
    # votes[S, A]: one-hot counts (answers with code -1 dropped).
    num_sub = sub_codes.shape[0]
    flat = (np.arange(num_sub)[:, None] * (num_answers + 1) + (sub_codes + 1)).ravel()  # slot 0 = no answer
    votes = np.bincount(flat, minlength=num_sub * (num_answers + 1)).reshape(num_sub, num_answers + 1)[:, 1:]
    top = votes.max(axis=1, keepdims=True)
    winners = (votes == top) & (top > 0)
    num_winners = winners.sum(axis=1)
    win_value = (winners * ans_correct[None, :]).sum(axis=1) / np.maximum(num_winners, 1)
    decided = (num_winners == 1) if ties == "failure" else (num_winners > 0)
    return float(np.where(decided, win_value, 0.0).mean())
