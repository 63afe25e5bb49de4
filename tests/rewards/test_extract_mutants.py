"""Cases added to kill mutmut survivors in jax_cat/rewards/extract.py (see docs/testing.md): math delimiters,
lone dollar signs, markdown bold, and numbers in every written form."""
from fractions import Fraction

import pytest

from jax_cat.rewards.extract import clean_answer, is_integer_answer, parse_number


@pytest.mark.parametrize("raw,expected", [
    ("$x$", "x"),
    ("$$x+1$$", "x+1"),
    ("\\(x+1\\)", "x+1"),
    ("\\[y\\]", "y"),
    ("$\\frac{1}{2}", "\\frac{1}{2}"),  # an opening $ whose closing one was cut off
    ("x^2$", "x^2"),
    ("$ab", "ab"),
    ("$5", "5"),  # a currency sign, not a delimiter
    ("$5$.", "5"),
    ("**42**", "42"),
    ("*42", "42"),
    ("42*", "42"),
])
def test_clean_answer_strips_delimiters(raw, expected):
    assert clean_answer(raw) == expected


@pytest.mark.parametrize("text,value", [
    ("3/4", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("\\dfrac{1}{2}", Fraction(1, 2)),
    ("-2.50", Fraction(-5, 2)),
    ("1,234", Fraction(1234)),
    ("abc", None),
    ("", None),
])
def test_parse_number_forms(text, value):
    assert parse_number(text) == value


def test_is_integer_answer():
    assert is_integer_answer("12") and is_integer_answer("-3") and is_integer_answer("0363")
    assert not is_integer_answer("1.5") and not is_integer_answer("x") and not is_integer_answer("")
