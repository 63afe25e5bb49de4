"""`scale_rewards` (TRL's setting: "group" = GRPO, "batch", "none" = Dr. GRPO) against advantages computed by hand."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.losses import CATLossConfig, PassAtN, cat_advantages
from jax_cat.losses.cat import group_advantages

# Two prompts x 3 rollouts. Group 0: rewards 1, 0, 0 (mean 1/3); group 1: 1, 1, 0 (mean 2/3).
REWARDS = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
GROUPS = jnp.array([0, 0, 0, 1, 1, 1])
EPS = 1e-4


def test_none_is_the_centred_reward():
    adv = group_advantages(REWARDS, GROUPS, eps=EPS, scale="none")
    np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3], atol=1e-6)


def test_group_divides_by_each_groups_unbiased_std():
    # each group's sample variance: ((2/3)^2 + 2 (1/3)^2) / (3 - 1) = 1/3, so std = 0.57735
    std = math.sqrt(1 / 3)
    adv = group_advantages(REWARDS, GROUPS, eps=EPS, scale="group")
    np.testing.assert_allclose(adv, np.array([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3]) / (std + EPS), atol=1e-6)
    np.testing.assert_allclose(group_advantages(REWARDS, GROUPS, eps=EPS), adv)  # the default


def test_batch_divides_by_the_std_of_all_rewards():
    # all six rewards: mean 1/2, sample variance 6 * (1/2)^2 / 5 = 0.3
    std = math.sqrt(0.3)
    adv = group_advantages(REWARDS, GROUPS, eps=EPS, scale="batch")
    np.testing.assert_allclose(adv, np.array([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3]) / (std + EPS), atol=1e-6)


def test_batch_std_ignores_padding_rows():
    rewards = jnp.concatenate([REWARDS, jnp.array([1.0, 1.0])])
    groups = jnp.concatenate([GROUPS, jnp.array([2, 2])])
    mask = jnp.array([True] * 6 + [False] * 2)
    adv = group_advantages(rewards, groups, eps=EPS, scale="batch", sample_mask=mask)
    np.testing.assert_allclose(adv[:6], group_advantages(REWARDS, GROUPS, eps=EPS, scale="batch"), atol=1e-7)
    np.testing.assert_array_equal(adv[6:], 0)


def test_cat_advantages_pass_at_1_with_scale_none_is_the_centred_reward():
    adv, _ = cat_advantages(PassAtN(1), rewards=REWARDS, group_ids=GROUPS,
                            config=CATLossConfig(scale_rewards="none", normalize="none"))
    np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3], atol=1e-6)


def test_unknown_scale_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="scale_rewards"):
        CATLossConfig(scale_rewards="std")
