"""The usage examples in the docstrings run and give the values they show (they are what users copy first)."""
import doctest

import pytest

import jax_cat.losses
import jax_cat.losses.advantages
import jax_cat.losses.alignment
import jax_cat.losses.reduce
import jax_cat.losses.rl
import jax_cat.losses.sft
import jax_cat.losses.strategies
import jax_cat.losses.success


@pytest.mark.parametrize("module", [jax_cat.losses, jax_cat.losses.strategies, jax_cat.losses.success,
                                    jax_cat.losses.sft, jax_cat.losses.advantages, jax_cat.losses.rl,
                                    jax_cat.losses.alignment, jax_cat.losses.reduce], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_public_signatures():
    """The entry points keep the issue's signatures (positional order and the `form` default)."""
    import inspect

    from jax_cat.losses import cat_rl_loss, cat_sft_loss

    assert list(inspect.signature(cat_sft_loss).parameters)[:4] == ["logits", "targets", "mask", "strategy"]
    rl = inspect.signature(cat_rl_loss).parameters
    assert list(rl)[:8] == ["logprobs", "old_logprobs", "ref_logprobs", "rewards", "group_ids", "mask", "strategy",
                            "form"]
    assert rl["form"].default == "raw"
