"""Verifiable rewards: final-answer extraction and 0/1 equivalence checks (math-verify in a bounded pool).

Importing this package never imports JAX (the verifier's worker processes import it too).
"""
from jax_cat.rewards.answers import answer_ids, answer_key, canonical_answer
from jax_cat.rewards.exact import exact_match, exact_match_rewards
from jax_cat.rewards.extract import (
    clean_answer,
    extract_answer,
    is_integer_answer,
    normalize_answer,
    parse_number,
)
from jax_cat.rewards.verify import (
    MathVerifier,
    WorkerStartError,
    close,
    compute_rewards,
    default_verifier,
    fast_verdict,
    gold_answer,
    is_equivalent,
)

__all__ = [
    "MathVerifier",
    "WorkerStartError",
    "answer_ids",
    "answer_key",
    "canonical_answer",
    "clean_answer",
    "close",
    "compute_rewards",
    "default_verifier",
    "exact_match",
    "exact_match_rewards",
    "extract_answer",
    "fast_verdict",
    "gold_answer",
    "is_equivalent",
    "is_integer_answer",
    "normalize_answer",
    "parse_number",
]
