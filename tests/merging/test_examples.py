"""The usage examples in the docstrings run and give the values they show (they are what users copy first)."""
import doctest

import pytest

import merging
import merging.task_vectors


@pytest.mark.parametrize("module", [merging, merging.task_vectors], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_public_surface():
    """The names the issue promises, importable from the package root with their documented signatures."""
    import inspect

    assert list(inspect.signature(merging.task_vector).parameters)[:2] == ["finetuned", "base"]
    assert list(inspect.signature(merging.combine).parameters)[:3] == ["base", "taus", "coeffs"]
    assert callable(merging.add) and callable(merging.scale) and callable(merging.merge_checkpoints)
