"""Answer extraction and normalisation on a table of tricky completions (values checked by hand)."""
from fractions import Fraction

import pytest

from jax_cat.rewards import extract_answer, normalize_answer, parse_number

EXTRACT_CASES = [
    # (completion, expected extracted answer)
    ("So the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{a+\\frac{1}{2}}{b_{1}}}", "\\frac{a+\\frac{1}{2}}{b_{1}}"),  # nested braces
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),  # last box wins
    ("\\boxed{\\boxed{5}}", "5"),
    ("the set is \\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
    ("\\fbox{7} is it", "7"),
    ("\\boxed 9", "9"),
    ("early \\boxed{3} ... truncated \\boxed{12", "3"),  # an unclosed (truncated) box is ignored
    ("so we get \\boxed{12", "12"),  # ... and with no complete box the last number wins
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234", "1,234"),
    ("#### $18.", "18"),
    ("The answer is 5 dollars.", "5"),
    ("The answer is $5.", "5"),
    ("The final answer is: $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("The answer is 2x+1.", "2x+1"),
    ("Therefore, the answer is yes. Done", "yes"),
    ("answer: -7", "-7"),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),  # Minerva format
    ("The answer is: **42**", "42"),  # markdown bold
    ("The answer is 5 because we add all of them together.", "5"),
    ("The answer is 3.5 kg.", "3.5"),
    ("The answer is 1,000,000 people", "1,000,000"),
    ("We get 12-5 = 7.", "7"),  # binary minus is not a sign
    ("the temperature is -5", "-5"),
    ("it costs $5.50.", "5.50"),
    ("roughly 3/4 of them", "3/4"),
    ("so x = \\frac{3}{4}", "\\frac{3}{4}"),
    ("0363", "0363"),  # arithmetic task: leading zeros kept
    ("\\boxed{5\\text{ cm}}", "5"),
    ("\\boxed{\\$5}", "5"),
    ("\\boxed{50\\%}", "50\\%"),  # percent kept by extraction, ignored by normalisation
    ("\\boxed{1,\\!000}", "1,\\!000"),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}"),
    ("answer is \\(x = 3\\)", "x = 3"),
    ("", None),
    ("   \n ", None),
    ("I have no idea.", None),
    (None, None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer_table(text, expected):
    assert extract_answer(text) == expected


def test_explicit_styles_only_look_for_their_pattern():
    text = "We try \\boxed{3}. The answer is 4.\n#### 5\nthen 6"
    assert extract_answer(text, style="boxed") == "3"
    assert extract_answer(text, style="answer_is") == "4"
    assert extract_answer(text, style="gsm8k") == "5\nthen 6".split("\n")[0]
    assert extract_answer(text, style="number") == "6"
    assert extract_answer(text) == "3"  # auto: a box beats everything else
    assert extract_answer("no box 5", style="boxed") is None
    with pytest.raises(ValueError, match="style"):
        extract_answer("5", style="latex")


NORMALIZE_CASES = [
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("1,\\!000", "1000"),
    ("1{,}000", "1000"),
    ("50\\%", "50"),
    ("90^\\circ", "90"),
    ("\\$5", "5"),
    ("x = 5", "5"),
    ("\\text{Monday}", "monday"),
    ("5\\text{ cm}", "5"),
    ("{7}", "7"),
    ("+3.", "3"),
    ("(1, 2)", "(1,2)"),  # a tuple is not a thousands number
]


@pytest.mark.parametrize("answer,expected", NORMALIZE_CASES)
def test_normalize_answer_table(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(
    "answer,value",
    [("0.5", Fraction(1, 2)), ("1/2", Fraction(1, 2)), ("\\frac{1}{2}", Fraction(1, 2)), ("\\frac12", Fraction(1, 2)),
     ("-\\dfrac{3}{4}", Fraction(-3, 4)), ("1,234", Fraction(1234)), ("0363", Fraction(363)), ("-.25", Fraction(-1, 4)),
     ("1/0", None), ("x+1", None), ("", None), (None, None)],
)
def test_parse_number_is_exact(answer, value):
    assert parse_number(answer) == value


def test_extraction_is_linear_on_huge_inputs():
    """1 MB completions (digits, unclosed boxes, many braces): linear time, well under a second each when idle."""
    import time

    huge = [
        "9" * 1_000_000,
        "\\boxed{" * 100_000,
        "{" * 500_000 + "}" * 500_000,
        "The answer is " + "x" * 1_000_000,
        ("1," * 500_000) + "5",
    ]
    for text in huge:
        start = time.perf_counter()
        extract_answer(text)
        normalize_answer(text)
        assert time.perf_counter() - start < 5.0, text[:20]  # quadratic would take minutes
