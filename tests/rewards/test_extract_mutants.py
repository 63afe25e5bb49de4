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


def test_nested_and_bare_boxes():
    from jax_cat.rewards.extract import extract_answer

    assert extract_answer("\\boxed{\\fbox{7}}") == "7"
    assert extract_answer("\\fbox{\\boxed{8}}") == "8"
    assert extract_answer("so \\boxed 5") == "5"


def test_normalize_answer_details():
    from jax_cat.rewards.extract import normalize_answer

    assert normalize_answer("\\tfrac{1}{2}") == normalize_answer("\\frac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("50%") == "50" and normalize_answer("5$") == "5"
    assert normalize_answer("5.") == "5" and normalize_answer(".5") == ".5"  # a trailing period only
    assert normalize_answer("{{5}}") == "5"
    assert normalize_answer(None) == ""


def test_non_strings_and_length_limit():
    assert parse_number(None) is None and parse_number(5) is None
    assert not is_integer_answer(None) and not is_integer_answer(12)
    assert parse_number("1" * 400) == int("1" * 400) and parse_number("1" * 401) is None  # 400 chars at most
    assert clean_answer("-4 \\$") == "-4"  # a trailing escaped dollar after a number


def test_bare_box_nested_box_and_answer_line():
    """The brace-less `\\boxed 5` (accepted by the MATH reference code) wins over a later number; a box inside the
    boxed content is part of the answer (the reference's last `\\boxed{...}` + remove_boxed keep the whole content);
    "The answer is ..." reads its own line only, even when earlier lines exist or later ones hold numbers."""
    from jax_cat.rewards.extract import extract_answer

    assert extract_answer("\\boxed 5, not 7") == "5"
    assert extract_answer("\\boxed{y = \\fbox{3} + 1}") == "y = \\fbox{3} + 1"
    assert extract_answer("Step 1\nThe answer is 12 apples and 3 pears") == "12"
    assert extract_answer("The answer is B\nWhy: 5\ndone") == "B"


def test_units_currency_and_braces_around_numbers():
    """A number followed by unit words is the number: lm-eval's GSM8K regex `#### (\\-?[0-9\\.\\,]+)` reads "5" from
    "#### 5 apples"; the MATH normaliser (Hendrycks' strip_string) drops "\\$"; braces around the whole answer go,
    braces around parts of it stay."""
    from jax_cat.rewards.extract import extract_answer, normalize_answer

    assert extract_answer("#### 5 apples") == "5"
    assert clean_answer("1,000 dollars") == "1,000" and clean_answer("5 apples") == "5"
    assert parse_number("3/4 cup") == Fraction(3, 4) and parse_number("-5 dollars") == -5
    assert parse_number("\\$\\frac{1}{2}") == Fraction(1, 2) and normalize_answer("\\frac{1}{2}\\$") == "\\frac{1}{2}"
    assert parse_number("5$ each") == 5
    assert parse_number("{-5}") == -5 and normalize_answer("{1}+{2}") == "{1}+{2}"


def test_a_variable_named_x_survives_the_stripping():
    """Stripping $, *, trailing punctuation and dots removes those characters only, not a neighbouring "X"; and
    LaTeX is case-sensitive (\\Delta is not \\delta), so only command-free answers are lower-cased."""
    from jax_cat.rewards.extract import normalize_answer

    assert clean_answer("$X+1") == "X+1" and clean_answer("1+X$") == "1+X"
    assert clean_answer("**X**") == "X" and clean_answer("X.") == "X"
    assert normalize_answer("2X") == "2x"
    assert normalize_answer("\\Delta") == "\\Delta" != normalize_answer("\\delta")
