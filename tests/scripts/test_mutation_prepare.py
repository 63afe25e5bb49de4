"""scripts/mutation_prepare.py: jit decorators become plain assignments (so mutmut mutates the function), the
rewritten module still behaves the same, and the sample score carries its exact binomial interval."""
import importlib
import sys

import pytest

from tests._load_script import load_script

pytest.importorskip("libcst")
prep = load_script("scripts/mutation_prepare.py")

SOURCE = '''from functools import partial
import jax


@jax.jit
def double(x):
    def inner(y):  # nested defs are left alone
        return 2 * y
    return inner(x)


@partial(jax.jit, static_argnames=("n",))
def power(x, n):
    return x ** n


@staticmethod
def untouched(x):
    return x
'''


def test_unwrap_jit_rewrites_only_jit_decorated_top_level_functions(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(SOURCE)
    assert prep.unwrap_jit(path) == ["double", "power"]
    text = path.read_text()
    assert "@jax.jit" not in text and "@partial" not in text and "@staticmethod" in text
    assert "double = (jax.jit)(double)" in text
    assert 'power = (partial(jax.jit, static_argnames=("n",)))(power)' in text
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("mod")
        assert float(mod.double(3.0)) == 6.0 and float(mod.power(2.0, n=3)) == 8.0
        assert hasattr(mod.power, "lower")  # still a jitted function
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mod", None)


def test_score_of_a_sample_has_the_clopper_pearson_interval(tmp_path, capsys):
    results = tmp_path / "results.txt"
    results.write_text("".join(f"    m.x_f__mutmut_{i}: {'killed' if i < 9 else 'survived'}\n" for i in range(12)))
    selected = tmp_path / "selected.txt"
    selected.write_text("\n".join(f"m.x_f__mutmut_{i}" for i in range(10)) + "\n")
    prep.score(results, selected)
    out = capsys.readouterr().out
    # 9 of 10: exact 95 % interval [0.555, 0.9975] (Clopper-Pearson, e.g. R's binom.test(9, 10))
    assert out.splitlines()[0] == "9 of 10 checked mutants killed (90.0 %), 95 % interval [55.5, 99.7] %"
    assert "      9 killed" in out and "      1 survived" in out
