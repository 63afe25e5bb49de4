"""Success estimates: the per-sample p (or quantile q, or majority threshold k) the CAT weight is evaluated at.

p from the rollout policy's sequence log-prob (`success_from_logprobs`) or Laplace-smoothed per prompt from the
rollouts' correctness (`success_from_group`); q the reward quantile within the prompt (`group_quantiles`, for
BestOfN); k the paper's dynamic majority threshold (`dynamic_consensus_threshold`, host form
`consensus_threshold`). `estimate_success` is the one entry point for p and q. See docs/losses.md.
"""
from __future__ import annotations

from functools import partial
from typing import Hashable, Literal, Sequence

import jax
import jax.numpy as jnp

from jax_cat.losses.arrays import _check_1d, _masked_seq_sum, _segment_sum, group_index


@jax.jit
def success_from_logprobs(old_logprobs: jax.Array, mask: jax.Array, *, logp_floor: float = -50.0) -> jax.Array:
    """p per completion = exp(clip(sum of token log-probs under the rollout policy, logp_floor, 0)) -> [B].

    The floor (the paper's Appendix J uses -50) keeps p away from exact 0 for long completions.
    """
    seq = _masked_seq_sum(jnp.asarray(old_logprobs), jnp.asarray(mask).astype(bool))
    return jnp.exp(jnp.clip(seq, logp_floor, 0.0))


@jax.jit
def success_from_group(correct: jax.Array, group_ids: jax.Array, *, smoothing: float = 1.0,
                       sample_mask: jax.Array | None = None) -> jax.Array:
    """p per prompt, Laplace-smoothed: (c + s) / (M + 2s) with c correct of M completions, broadcast to [B]."""
    correct = jnp.asarray(correct)
    _check_1d("correct", correct, correct.shape[0])
    seg = group_index(group_ids)
    valid = jnp.ones(correct.shape, bool) if sample_mask is None else jnp.asarray(sample_mask).astype(bool)
    c = _segment_sum(jnp.where(valid, correct.astype(jnp.float32), 0.0), seg)
    m = _segment_sum(valid.astype(jnp.float32), seg)
    return (c + smoothing) / (m + 2.0 * smoothing)


@jax.jit
def group_quantiles(rewards: jax.Array, group_ids: jax.Array) -> jax.Array:
    """Reward quantile of each sample within its group: q = (#strictly lower + 1) / (M + 1) -> [B].

    Ties share one q (strict-less rank), groups are never mixed; q lies in [1/(M+1), M/(M+1)].
    O(B^2) comparisons (fine for RL batches of a few thousand completions).
    """
    rewards = jnp.asarray(rewards)
    _check_1d("rewards", rewards, rewards.shape[0])
    seg = group_index(group_ids)
    same = seg[:, None] == seg[None, :]
    lower = jnp.sum(same & (rewards[None, :] < rewards[:, None]), axis=1)
    m = jnp.sum(same, axis=1)
    dt = jnp.promote_types(rewards.dtype, jnp.float32) if jnp.issubdtype(rewards.dtype, jnp.floating) else jnp.float32
    return (lower + 1).astype(dt) / (m + 1).astype(dt)


@partial(jax.jit, static_argnames=("n", "min_k", "no_answer"))
def dynamic_consensus_threshold(answer_ids: jax.Array, correct: jax.Array, group_ids: jax.Array, n: int, *,
                                min_k: int = 2, no_answer: Literal["rival", "abstain"] = "rival") -> jax.Array:
    """The paper's dynamic majority threshold (App. K.2) per sample: k = clip(floor(n c_w / M) + 1, min_k, n//2+1).

    c_w is the count of the most common WRONG answer among the M rollouts of the prompt: the correct answer must
    out-vote the strongest rival scaled to n votes. Rollouts without an extracted answer (answer id < 0):
    ``no_answer="rival"`` (default, the authors' reference) counts all of them together as ONE wrong answer;
    ``"abstain"`` lets them cast no vote (as in the test-time plurality vote, where a missing answer never wins).
    M always counts every rollout. Capped at a strict majority; ``min_k=2`` keeps it from degenerating to pass@n.
    """
    answer_ids = jnp.asarray(answer_ids)
    correct = jnp.asarray(correct).astype(bool)
    b = answer_ids.shape[0]
    _check_1d("answer_ids", answer_ids, b)
    _check_1d("correct", correct, b)
    if not 1 <= min_k <= n // 2 + 1:
        raise ValueError(f"min_k must be in [1, n//2+1={n // 2 + 1}], got {min_k}")
    if no_answer not in ("rival", "abstain"):
        raise ValueError(f"no_answer must be 'rival' or 'abstain', got {no_answer!r}")
    seg = group_index(group_ids)
    has_answer = answer_ids >= 0
    key = jnp.where(has_answer, answer_ids, -1)  # every missing answer is the same key
    same_group = seg[:, None] == seg[None, :]
    wrong = ~correct if no_answer == "rival" else (has_answer & ~correct)
    same_wrong = same_group & (key[:, None] == key[None, :]) & wrong[None, :] & wrong[:, None]
    wrong_count = jnp.sum(same_wrong, axis=1)  # votes of sample i's answer if it is a wrong answer, else 0
    strongest = jax.ops.segment_max(wrong_count, seg, num_segments=b)[seg]
    m = jnp.sum(same_group, axis=1)
    k = (n * strongest) // m + 1
    return jnp.clip(k, min_k, n // 2 + 1).astype(jnp.int32)


def consensus_threshold(answers: Sequence[Hashable | None], correct: Sequence[bool], n: int, *, min_k: int = 2,
                        no_answer: Literal["rival", "abstain"] = "rival") -> int:
    """Host version of `dynamic_consensus_threshold` for one prompt (answers hashable, None = no answer)."""
    if len(answers) != len(correct) or not answers:
        raise ValueError("consensus_threshold: answers and correct must be non-empty and of equal length")
    if no_answer not in ("rival", "abstain"):
        raise ValueError(f"no_answer must be 'rival' or 'abstain', got {no_answer!r}")
    counts: dict[Hashable, int] = {}
    for a, c in zip(answers, correct):
        if not c and (a is not None or no_answer == "rival"):
            counts[a] = counts.get(a, 0) + 1
    strongest = max(counts.values(), default=0)
    return int(max(min_k, min(n // 2 + 1, (n * strongest) // len(answers) + 1)))


def estimate_success(*, rewards: jax.Array | None = None, group_ids: jax.Array | None = None,
                     old_logprobs: jax.Array | None = None, mask: jax.Array | None = None,
                     method: Literal["group", "sequence", "quantile"] = "group", correct: jax.Array | None = None,
                     smoothing: float = 1.0, logp_floor: float = -50.0) -> jax.Array:
    """One entry point for the per-sample success estimate the CAT weight is evaluated at -> [B].

    "group": Laplace (c+s)/(M+2s) per prompt from ``correct`` (default rewards > 0);
    "sequence": exp of the clamped rollout-policy sequence log-prob; "quantile": BoN reward quantile in group.
    The majority threshold per prompt is `dynamic_consensus_threshold`.

    >>> import jax.numpy as jnp
    >>> estimate_success(rewards=jnp.array([1.0, 0.0, 0.0, 0.0]), group_ids=jnp.array([0, 0, 0, 0])).tolist()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    if method == "sequence":
        if old_logprobs is None or mask is None:
            raise ValueError("estimate_success(method='sequence') needs old_logprobs and mask")
        return success_from_logprobs(old_logprobs, mask, logp_floor=logp_floor)
    if group_ids is None:
        raise ValueError(f"estimate_success(method={method!r}) needs group_ids")
    if method == "group":
        if correct is None:
            if rewards is None:
                raise ValueError("estimate_success(method='group') needs rewards or correct")
            correct = jnp.asarray(rewards) > 0
        return success_from_group(correct, group_ids, smoothing=smoothing)
    if method == "quantile":
        if rewards is None:
            raise ValueError("estimate_success(method='quantile') needs rewards")
        return group_quantiles(rewards, group_ids)
    raise ValueError(f"estimate_success: method must be 'group', 'sequence' or 'quantile', got {method!r}")
