"""The CAT losses called as users call them: directly and under their own `jax.jit` (chex variants), against the
closed-form objectives computed in numpy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import log_softmax

from jax_cat.losses import MajorityAtN, PassAtN, cat_sft_loss
from jax_cat.losses.cat import group_advantages

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(3, 4, 6)).astype(np.float32)
TARGETS = RNG.integers(0, 6, size=(3, 4)).astype(np.int32)
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]], np.float32)


def _reference_sft(strategy_success, logits):
    """token_mean reduction: sum over sequences of -log S(p) / number of target tokens, p = exp(Σ target log-probs)."""
    lp = np.take_along_axis(log_softmax(logits.astype(np.float64), -1), TARGETS[..., None], -1)[..., 0]
    p = np.exp((lp * MASK).sum(-1))
    return -np.log(strategy_success(p)).sum() / MASK.sum()


class SFTLossVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_pass_at_n_value_and_gradient(self):
        n = 4
        loss_fn = self.variant(lambda x: cat_sft_loss(x, TARGETS, MASK, PassAtN(n))[0])
        loss = loss_fn(jnp.asarray(LOGITS))
        np.testing.assert_allclose(loss, _reference_sft(lambda p: 1 - (1 - p) ** n, LOGITS), rtol=1e-5)
        grad = self.variant(jax.grad(lambda x: cat_sft_loss(x, TARGETS, MASK, PassAtN(n))[0]))(jnp.asarray(LOGITS))
        eps, i = 1e-3, (1, 0, 2)  # central difference of the float64 reference at one logit
        up, down = LOGITS.astype(np.float64).copy(), LOGITS.astype(np.float64).copy()
        up[i] += eps
        down[i] -= eps
        fd = (_reference_sft(lambda p: 1 - (1 - p) ** n, up) - _reference_sft(lambda p: 1 - (1 - p) ** n, down)) / (2 * eps)
        np.testing.assert_allclose(grad[i], fd, rtol=1e-3, atol=1e-6)
        chex.assert_tree_all_finite(grad)
        chex.assert_shape(grad, LOGITS.shape)

    @chex.variants(with_jit=True, without_jit=True)
    def test_majority_value(self):
        n, k = 5, 3  # maj@5 with threshold 3: S(p) = P(Binomial(5, p) >= 3)
        from math import comb

        success = lambda p: sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))  # noqa: E731
        loss = self.variant(lambda x: cat_sft_loss(x, TARGETS, MASK, MajorityAtN(n, k=k))[0])(jnp.asarray(LOGITS))
        np.testing.assert_allclose(loss, _reference_sft(success, LOGITS), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_group_advantages_equal_across_variants(self):
        rewards, groups = jnp.array([1.0, 0, 0, 1, 1, 0]), jnp.array([0, 0, 0, 1, 1, 1])
        adv = self.variant(lambda r: group_advantages(r, groups))(rewards)
        chex.assert_trees_all_close(adv, group_advantages(rewards, groups), atol=0)
