"""Label-free objectives for the DoTS coefficient search, the candidates they score, and the query selection.

What the DoTS authors' released code measures on a small set of unlabeled queries (no answers are ever read):

- **consistency** (maximise): per query, the share of the modal extracted answer among `votes` samples (0 when no
  sample has an extractable answer; a sample without one never counts for the mode), averaged over the queries.
- **prompt perplexity** (minimise): exp of the mean, over queries, of the per-sequence mean token NLL of the query
  prompt text as the model sees it (the chat template with its generation prompt, no response).
- **answer perplexity** (minimise; ours): the same on the candidate's own sampled answers (every generated token,
  EOS included, at temperature 1). On small models the prompt-only perplexity mostly measures distance from the
  base; the answers' perplexity ranks candidates far better (/work/shared/notes/dots-feasibility.md).

Candidates (`Candidates`) are built in memory: base + sum_i c_i S(tau_i), the task vectors taken in float32 and
sparsified once, the coefficients a traced array of one jitted function, so a new trial neither recompiles nor
writes anything. Parameters keep their sharding (load the models with a mesh).

Dependencies, declared here at the top: this module is part of the DoTS *search*, which samples from jax_cat's own
models -- `jax_cat.sampling.generate` (the sampler), `jax_cat.evaluate.answer_key` and `jax_cat.rewards` (the vote
an answer casts), `jax_cat.data.format_prompt` (the chat template), `jax_cat.sharding` (rows over the mesh) -- and on
flax NNX. The merging core (`import merging`: task vectors, sparsifiers, methods, streaming) never imports it, so
it stays free of them (tests/merging/test_wall.py).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cat.data import format_prompt
from jax_cat.evaluate import answer_key as vote_key
from jax_cat.rewards import extract_answer
from jax_cat.sampling import generate
from jax_cat.sharding import batch_sharding
from merging.task_vectors import combine

__all__ = [
    "ObjectiveConfig", "CandidateScores", "Candidates",
    "answer_key", "modal_share", "consistency", "strategy_consistency",
    "sequence_nll", "perplexity", "prompt_perplexity", "answer_perplexity",
    "chat_prompt_ids", "evaluate_candidate", "query_difficulty", "select_queries",
]


# ---------------------------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveConfig:
    """How a candidate is scored. Defaults are the DoTS authors' (7 votes, temperature 0.6), except
    `max_new_tokens` (theirs: 8192; set it to what your queries need).

    extract: `jax_cat.rewards.extract_answer` style ("auto", "boxed", "gsm8k", "answer_is", "number").
    strategy: optional test-time strategy (e.g. `jax_cat.losses.MajorityAtN(5)`): the per-query score becomes
      `strategy.estimate(correct=[answer == pool mode], answers=...)`, the chance that the strategy's vote over
      `strategy.n` of the samples lands on the pool's modal answer, instead of the modal share.
    seed: the sampling seed, the same for every candidate (common random numbers: candidates differ by their weights,
      not by their draws).
    """

    votes: int = 7
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 512
    extract: str = "auto"
    seed: int = 0
    batch_size: int = 128
    strategy: Any = None

    def __post_init__(self) -> None:
        if self.votes < 1:
            raise ValueError(f"votes must be >= 1, got {self.votes}")
        if not (self.temperature > 0):
            raise ValueError(f"temperature must be > 0 (consistency over greedy samples is always 1), got "
                             f"{self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.strategy is not None and getattr(self.strategy, "n", 0) > self.votes:
            raise ValueError(f"strategy {self.strategy!r} needs {self.strategy.n} samples but votes={self.votes}")


@dataclass(frozen=True)
class CandidateScores:
    """The objectives of one candidate on the query set, plus what explains them."""

    consistency: float
    prompt_perplexity: float
    answer_perplexity: float
    extractable: float  # share of samples with an extractable answer
    mean_answer_tokens: float
    per_query: tuple[float, ...] = field(default=(), repr=False)  # consistency of each query

    def metrics(self) -> dict[str, float]:
        """The scalar metrics (no per-query list), e.g. for a Vizier measurement."""
        return {k: v for k, v in asdict(self).items() if k != "per_query"}


# ---------------------------------------------------------------------------------------------------------------
# Consistency
# ---------------------------------------------------------------------------------------------------------------
def answer_key(text: str | None, *, style: str = "auto") -> Hashable | None:
    """The vote an answer text casts, as `jax_cat.evaluate.answer_key` (the extracted final answer; numbers as exact
    rationals, "0.5" == "1/2"; other answers normalised), with the extraction `style` selectable; None when nothing
    can be extracted."""
    if style == "auto":
        return vote_key(text)
    raw = extract_answer(text, style=style)
    return None if raw is None else vote_key(raw)


def modal_share(answers: Sequence[Hashable | None]) -> float:
    """Share of the most frequent non-None answer among all samples (None = no answer); 0 when none has one.

    >>> modal_share(["4", "4", "5", None])
    0.5
    """
    if not answers:
        raise ValueError("modal_share needs at least one sample")
    counts = Counter(a for a in answers if a is not None)
    return max(counts.values()) / len(answers) if counts else 0.0


def _mode(answers: Sequence[Hashable | None]) -> Hashable | None:
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)  # first reached, deterministic


def strategy_consistency(answers: Sequence[Hashable | None], strategy: Any) -> float:
    """`strategy.estimate` with "correct" = agrees with the pool's modal answer (0 when there is none)."""
    mode = _mode(answers)
    if mode is None:
        return 0.0
    correct = np.array([a is not None and a == mode for a in answers], dtype=np.float64)
    return float(strategy.estimate(correct, answers=list(answers), scores=correct))


def consistency(answer_lists: Sequence[Sequence[Hashable | None]], strategy: Any = None) -> float:
    """Mean over queries of the modal share (or of `strategy_consistency` when a strategy is given)."""
    if not answer_lists:
        raise ValueError("consistency needs at least one query")
    score = modal_share if strategy is None else partial(strategy_consistency, strategy=strategy)
    return float(np.mean([score(a) for a in answer_lists]))


# ---------------------------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnums=0)
def _token_nll_sums(graphdef: Any, state: Any, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: (sum of -log p(token t | tokens < t) over real tokens t >= 1, number of such tokens)."""
    model = nnx.merge(graphdef, state)
    logits = model(ids, mask)  # float32 [B, T, V]
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    valid = (mask[:, :-1] & mask[:, 1:]).astype(jnp.float32)
    return jnp.sum(nll * valid, axis=-1), jnp.sum(valid, axis=-1)


def _pow2(x: int, minimum: int = 1) -> int:
    return 1 << (max(int(x), minimum) - 1).bit_length()


def sequence_nll(model: Any, token_lists: Sequence[Sequence[int]], *, batch_size: int = 64, mesh: Any = None,
                 pad_token_id: int = 0) -> np.ndarray:
    """Mean token NLL of each sequence under `model` (teacher forcing; the first token is only context).

    Rows are left-padded into power-of-two buckets (few compilations); with `mesh` the rows are split over its
    data axes. A sequence of one token has no predicted token: its NLL is NaN.
    """
    graphdef, state = nnx.split(model)
    out = np.full(len(token_lists), np.nan)
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    dp = 1 if mesh is None else int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = _pow2(max(len(token_lists[i]) for i in rows), 8)
        batch = -(-_pow2(len(rows)) // dp) * dp
        ids = np.full((batch, length), pad_token_id, np.int32)
        mask = np.zeros((batch, length), bool)
        for r, i in enumerate(rows):
            toks = token_lists[i]
            ids[r, length - len(toks):] = toks
            mask[r, length - len(toks):] = True
        ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
        if mesh is not None:
            ids_j, mask_j = jax.device_put((ids_j, mask_j), batch_sharding(mesh))
        sums, counts = jax.device_get(_token_nll_sums(graphdef, state, ids_j, mask_j))
        for r, i in enumerate(rows):
            if counts[r] > 0:
                out[i] = float(sums[r]) / float(counts[r])
    return out


def perplexity(mean_nlls: Sequence[float]) -> float:
    """exp of the mean of per-sequence mean NLLs (NaN entries, sequences with nothing to score, are skipped)."""
    x = np.asarray(mean_nlls, np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan")
    return float(math.exp(float(np.mean(x))))


def prompt_perplexity(model: Any, prompt_ids: Sequence[Sequence[int]], *, mesh: Any = None,
                      pad_token_id: int = 0, batch_size: int = 64) -> float:
    """The DoTS perplexity: exp(mean over queries of the prompt's mean token NLL)."""
    return perplexity(sequence_nll(model, prompt_ids, mesh=mesh, pad_token_id=pad_token_id, batch_size=batch_size))


def answer_perplexity(completions: Sequence[Sequence[Any]]) -> float:
    """exp(mean over all samples of each sample's mean token NLL), from the sampler's temperature-1 log-probs
    (`Completion.logprobs`: EOS included); empty samples are skipped."""
    nlls = [-c.mean_logprob for row in completions for c in row if c.length > 0]
    return perplexity(nlls)


# ---------------------------------------------------------------------------------------------------------------
# Prompts and one candidate's scores
# ---------------------------------------------------------------------------------------------------------------
def chat_prompt_ids(tokenizer: Any, queries: Sequence[str]) -> list[list[int]]:
    """Each query as the model sees it: the chat template (user turn + generation prompt) when the tokenizer has
    one, else the raw text with the tokenizer's special tokens; as token id lists."""
    if getattr(tokenizer, "chat_template", None):
        texts = [format_prompt(q, tokenizer) for q in queries]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(list(queries), add_special_tokens=True)["input_ids"]
    out = [list(map(int, x)) for x in ids]
    for i, x in enumerate(out):
        if not x:
            raise ValueError(f"query {i} is empty after tokenisation")
    return out


def evaluate_candidate(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], config: ObjectiveConfig,
                       *, mesh: Any = None) -> CandidateScores:
    """Sample `config.votes` answers per query and compute every objective (one round of sampling, one forward)."""
    completions = generate(
        model, tokenizer, [list(p) for p in prompt_ids], n=config.votes, max_new_tokens=config.max_new_tokens,
        temperature=config.temperature, top_p=config.top_p, seed=config.seed, batch_size=config.batch_size,
        add_special_tokens=False, mesh=mesh, progress=False,
    )
    answers = [[answer_key(c.text, style=config.extract) for c in row] for row in completions]
    per_query = [modal_share(a) if config.strategy is None else strategy_consistency(a, config.strategy)
                 for a in answers]
    pad = getattr(tokenizer, "pad_token_id", None)
    lengths = [c.length for row in completions for c in row]
    return CandidateScores(
        consistency=float(np.mean(per_query)),
        prompt_perplexity=prompt_perplexity(model, prompt_ids, mesh=mesh, pad_token_id=int(pad or 0)),
        answer_perplexity=answer_perplexity(completions),
        extractable=float(np.mean([a is not None for row in answers for a in row])),
        mean_answer_tokens=float(np.mean(lengths)),
        per_query=tuple(float(x) for x in per_query),
    )


# ---------------------------------------------------------------------------------------------------------------
# Candidates: base + sum_i c_i S(tau_i), one jitted build
# ---------------------------------------------------------------------------------------------------------------
class Candidates:
    """Merged models base + sum_i c_i * sparse_i, built in memory from one base model and sparse task vectors.

    `sparse` are pytrees shaped like `nnx.state(base_model)` (float32 task vectors, already sparsified). `model(c)`
    runs one jitted function of the coefficient array (compiled once; a new trial only re-runs it), in float32,
    cast to the base's dtypes (the same leaf kernel as `merging.combine` and the streaming merge). Parameters keep
    the base's sharding. Nothing is modified in place: the base state and the vectors are never touched.
    """

    def __init__(self, base_model: Any, sparse: Sequence[Any]):
        self.graphdef, self.base_state = nnx.split(base_model)
        self.sparse = tuple(sparse)
        self._build = jax.jit(lambda base, taus, k: combine(base, list(taus), k))

    def state(self, coeffs: Sequence[float] | jax.Array, sparse: Sequence[Any] | None = None) -> Any:
        """The merged parameter state for `coeffs` (one per vector); `sparse` replaces the stored vectors for this
        call (e.g. another density: same shapes, so no recompilation)."""
        taus = self.sparse if sparse is None else tuple(sparse)
        k = jnp.asarray(coeffs, jnp.float32)
        if k.shape != (len(taus),):
            raise ValueError(f"need {len(taus)} coefficients, got shape {k.shape}")
        return self._build(self.base_state, taus, k)

    def model(self, coeffs: Sequence[float] | jax.Array, sparse: Sequence[Any] | None = None) -> Any:
        """The merged model for `coeffs` (a new module; the base model is unchanged)."""
        return nnx.merge(self.graphdef, self.state(coeffs, sparse))

    def single(self, i: int, coeff: float = 1.0) -> Any:
        """base + coeff * sparse_i alone (the others at 0): what the query selection scores."""
        c = [0.0] * len(self.sparse)
        c[i] = coeff
        return self.model(c)


# ---------------------------------------------------------------------------------------------------------------
# Query selection
# ---------------------------------------------------------------------------------------------------------------
def query_difficulty(per_model_consistency: Sequence[Sequence[float]]) -> np.ndarray:
    """difficulty[q] = 1 - mean over models of query q's consistency (rows: one model each, e.g. base + S(tau_sft)
    and base + S(tau_rl), each scored with 5 votes)."""
    c = np.asarray(per_model_consistency, np.float64)
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"expected [models, queries] consistencies, got shape {c.shape}")
    return 1.0 - c.mean(axis=0)


def select_queries(difficulty: Sequence[float], *, n_easy: int = 8, n_hard: int = 8, max_difficulty: float = 0.8,
                   seed: int = 0) -> list[int]:
    """The DoTS query draw: keep queries with difficulty <= max_difficulty, split them at the median difficulty
    (easy: <= median, hard: > median), draw n_easy + n_hard without replacement (seeded). When one half is short,
    the other half fills the gap, so the draw has min(n_easy + n_hard, kept) queries. Returns sorted indices.

    >>> select_queries([0.0, 0.1, 0.5, 0.9, 0.6], n_easy=1, n_hard=1, seed=0)  # 0.9 is dropped, median 0.3
    [1, 4]
    """
    d = np.asarray(difficulty, np.float64)
    if d.ndim != 1:
        raise ValueError(f"difficulty must be one value per query, got shape {d.shape}")
    if n_easy < 0 or n_hard < 0:
        raise ValueError("n_easy and n_hard must be >= 0")
    kept = np.flatnonzero(d <= max_difficulty)
    if kept.size == 0:
        raise ValueError(f"no query has difficulty <= {max_difficulty} (all {d.size} are too hard for both models)")
    median = float(np.median(d[kept]))
    easy = kept[d[kept] <= median]
    hard = kept[d[kept] > median]
    rng = np.random.default_rng(seed)
    want = min(n_easy + n_hard, kept.size)
    take_easy, take_hard = min(n_easy, easy.size), min(n_hard, hard.size)
    deficit = want - take_easy - take_hard  # one half is short: the other fills the gap
    extra = min(deficit, easy.size - take_easy)
    take_easy, deficit = take_easy + extra, deficit - extra
    take_hard += min(deficit, hard.size - take_hard)
    picked = list(rng.choice(easy, take_easy, replace=False)) + list(rng.choice(hard, take_hard, replace=False))
    return sorted(int(i) for i in picked)
