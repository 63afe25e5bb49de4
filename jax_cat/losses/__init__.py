"""CAT losses: test-time strategies and strategy-aligned SFT/RL objectives (pure JAX on arrays)."""
from jax_cat.losses.strategies import (
    BestOfN,
    MajorityAtN,
    PassAtN,
    Strategy,
    pass_at_k,
    pass_at_k_many,
    strategy_from_spec,
)

__all__ = [
    "BestOfN",
    "MajorityAtN",
    "PassAtN",
    "Strategy",
    "pass_at_k",
    "pass_at_k_many",
    "strategy_from_spec",
]
