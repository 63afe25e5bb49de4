"""Final-answer extraction from model completions, and answer normalisation for string comparison.

Everything here is pure Python over strings, linear in the input length (no regex with nested
quantifiers, a single forward scan for braces), so a 1 MB completion costs milliseconds, not a hang.

Extraction (``extract_answer``), in ``style="auto"`` order, the first that finds something wins:

1. the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces and escaped ``\\{ \\}`` handled; an
   unclosed, truncated box is ignored; ``\\boxed{\\boxed{5}}`` unwraps to ``5``);
2. the last GSM8K-style ``#### x`` line;
3. the last "the (final) answer is x" / "answer: x" phrase (up to the end of its sentence);
4. the last number in the text (signs, thousands commas, decimals, ``3/4``, ``\\frac{3}{4}``).

The extracted text is then cleaned: surrounding ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` delimiters,
a leading currency sign (``$5``, ``\\$5``), trailing sentence punctuation, a ``\\text{...}`` unit after
a number (``5\\text{ cm}``) and up to three plain unit words after a number (``5 dollars``,
``12 square feet``) are removed. Percent signs and degree marks are kept by extraction (they are part of
what the model said) and ignored by ``normalize_answer`` (so ``50\\%`` matches ``50``).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

ExtractStyle = Literal["auto", "boxed", "gsm8k", "answer_is", "number"]
_STYLES = ("auto", "boxed", "gsm8k", "answer_is", "number")

# A number as written in prose: optional sign (not a binary minus: no word char / closing bracket right
# before it), thousands commas or plain digits, optional decimals, optional "/denominator".
_NUM_CORE = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGN = r"(?:(?<![\w)\]}])-)?"
_LATEX_FRAC = r"-?\\[dt]?frac\s*\{\s*-?\d+\s*\}\s*\{\s*-?\d+\s*\}|-?\\[dt]?frac\s*\d\s*\d"
_NUMBER_RE = re.compile(rf"{_LATEX_FRAC}|{_SIGN}(?:{_NUM_CORE})(?:\s*/\s*\d+)?")
_BOX_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
_BOX_BARE_RE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")
_GSM8K_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\b|:|=)\s*:?[ \t]*", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_UNIT_WORDS_RE = re.compile(r"\s+[A-Za-z][A-Za-z.]*(?:\s+[A-Za-z][A-Za-z.]*){0,2}\s*$")
_TEXT_UNIT_RE = re.compile(r"\s*\\(?:text|mbox|mathrm|textrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_LEADING_NUMBER_RE = re.compile(rf"({_LATEX_FRAC}|-?(?:{_NUM_CORE})(?:\s*/\s*\d+)?)(?=$|\s+[A-Za-z]|\s*[,;!?)]|\s*\.(?!\d))")


def extract_answer(text: str | None, *, style: ExtractStyle = "auto") -> str | None:
    """The final answer a completion commits to (see module doc for the rules), or None when there is none."""
    if style not in _STYLES:
        raise ValueError(f"extract_answer: style must be one of {_STYLES}, got {style!r}")
    if not isinstance(text, str) or not text.strip():
        return None
    finders = {
        "boxed": _last_boxed,
        "gsm8k": _last_gsm8k,
        "answer_is": _last_answer_is,
        "number": _last_number,
    }
    order = ("boxed", "gsm8k", "answer_is", "number") if style == "auto" else (style,)
    for name in order:
        raw = finders[name](text)
        if raw is None:
            continue
        answer = clean_answer(raw)
        if answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...}/\\fbox{...}, unwrapping directly nested boxes."""
    stack: list[int | None] = []  # content start for a box, None for a plain brace
    last: tuple[int, int] | None = None
    for match in _BOX_TOKEN_RE.finditer(text):
        token = match.group()
        if token in ("\\{", "\\}"):
            continue
        if token == "{":
            stack.append(None)
        elif token == "}":
            if stack:
                start = stack.pop()
                if start is not None:
                    last = (start, match.start())
        else:
            stack.append(match.end())
    if last is None:
        bare = None
        for bare in _BOX_BARE_RE.finditer(text):
            pass
        return bare.group(1) if bare is not None else None
    content = text[last[0] : last[1]].strip()
    inner = _last_boxed(content) if content.startswith(("\\boxed", "\\fbox")) else None
    return inner if inner is not None else content


def _last_gsm8k(text: str) -> str | None:
    found = None
    for found in _GSM8K_RE.finditer(text):
        pass
    return found.group(1) if found is not None else None


def _last_answer_is(text: str) -> str | None:
    """What follows the last "the answer is" / "answer:" phrase, up to the end of that sentence; a leading
    number followed by words ("5 because ...") is just the number."""
    found = None
    for found in _ANSWER_IS_RE.finditer(text):
        pass
    if found is None:
        return None
    line_end = text.find("\n", found.end())
    tail = text[found.end() : line_end if line_end >= 0 else len(text)].strip()
    end = _SENTENCE_END_RE.search(tail)  # a period followed by space/end: not a decimal point
    sentence = tail[: end.start()] if end else tail
    leading = _LEADING_NUMBER_RE.match(_strip_currency(_strip_delims(_strip_markdown(sentence))))
    return leading.group(1) if leading is not None else sentence


def _last_number(text: str) -> str | None:
    found = None
    for found in _NUMBER_RE.finditer(text):
        pass
    return found.group() if found is not None else None


def _strip_delims(s: str) -> str:
    s = s.strip()
    for left, right in _MATH_DELIMS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : -len(right)].strip()
    # An opening delimiter with the closing one cut off by the sentence end: "$\frac12$." -> handled above
    # after punctuation stripping; a lone leading "$" before a non-digit is a math delimiter, drop it.
    if s.startswith("$") and not s[1:2].isdigit():
        s = s.lstrip("$").strip()
    if s.endswith("$") and not s.endswith("\\$"):
        s = s.rstrip("$").strip()
    return s


_CURRENCY_RE = re.compile(r"^(-?)\s*\\?\$\s*(?=[\d.])")
_TRAILING_CURRENCY_RE = re.compile(r"(-?[\d.,]+)\s*\\?\$")
_PLAIN_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _strip_markdown(s: str) -> str:
    """'**42**' -> '42' (chat models bold their answers)."""
    return s.strip("*").strip() if s.startswith("*") or s.endswith("*") else s


def _strip_currency(s: str) -> str:
    return _CURRENCY_RE.sub(r"\1", s) if "$" in s else s


def clean_answer(raw: str) -> str:
    """Strip delimiters, currency signs, trailing punctuation and unit words around an extracted answer."""
    s = raw.strip()
    if _PLAIN_NUMBER_RE.fullmatch(s):  # the common case (arithmetic, GSM8K): nothing to strip
        return s
    for _ in range(3):  # delimiters and punctuation can nest: "$5$." / "(\$5)."
        before = s
        s = _strip_markdown(s.rstrip(" \t.,;:!?"))
        s = _strip_delims(s)
        s = _strip_currency(s)
        if trailing := _TRAILING_CURRENCY_RE.fullmatch(s):  # "5$"
            s = trailing.group(1)
        if s == before:
            break
    number_then_rest = _LEADING_NUMBER_RE.match(s)
    if number_then_rest is not None:
        rest = s[number_then_rest.end(1) :]
        if _TEXT_UNIT_RE.fullmatch(rest) or _UNIT_WORDS_RE.fullmatch(rest):
            s = number_then_rest.group(1)
    elif (unit := _TEXT_UNIT_RE.search(s)) is not None and _NUMBER_RE.fullmatch(s[: unit.start()].strip()):
        s = s[: unit.start()].strip()
    return s.strip()


# ---------------------------------------------------------------------------------------------------------
# Normalisation for the string fast path
# ---------------------------------------------------------------------------------------------------------

_LATEX_SPACES_RE = re.compile(r"\\[!,;: ]|\\q?quad\b|~")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]+$)")


def normalize_answer(answer: str | None) -> str:
    """A canonical string form of an answer: LaTeX spacing/\\left/\\text{}/\\dfrac, $, %, degrees, thousands
    commas, a leading ``x =`` and whitespace removed; lower-cased when it has no LaTeX commands."""
    if not isinstance(answer, str):
        return ""
    s = answer.strip()
    if _PLAIN_NUMBER_RE.fullmatch(s):
        return s
    s = clean_answer(s)
    s = s.replace("{,}", ",")
    s = _LATEX_SPACES_RE.sub(" ", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES_RE.sub("", s)
    for _ in range(3):
        s = _TEXT_CMD_RE.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = clean_answer(s)  # units exposed by \text removal: "5 cm" -> "5"
    s = _ASSIGNMENT_RE.sub("", s.strip())
    s = re.sub(r"\s+", "", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = s.rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    s = _strip_outer_braces(s)
    if "\\" not in s:
        s = s.lower()
    return s


def _strip_outer_braces(s: str) -> str:
    """'{{7}}' -> '7' but '{1}+{2}' unchanged; one pass to pair braces, so linear even for '{'*n + '}'*n."""
    if not s.startswith("{"):
        return s
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(s):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    depth = 0
    while depth < len(s) // 2 and s[depth] == "{" and closing.get(depth) == len(s) - 1 - depth:
        depth += 1
    return s[depth : len(s) - depth] if depth else s


_INT_RE = re.compile(r"-?\d+")
_DEC_RE = re.compile(r"-?(?:\d+\.\d*|\.\d+)")
_SLASH_RE = re.compile(r"(-?\d+)/(-?\d+)")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_FRAC_SHORT_RE = re.compile(r"(-?)\\frac(\d)(\d)")


def parse_number(answer: str | None) -> Fraction | None:
    """The exact rational value of a plain numeric answer (int, decimal, a/b, \\frac{a}{b}), else None."""
    s = normalize_answer(answer) if isinstance(answer, str) else ""
    if not s or len(s) > 400:
        return None
    try:
        if _INT_RE.fullmatch(s) or _DEC_RE.fullmatch(s):
            return Fraction(s)
        if m := _SLASH_RE.fullmatch(s):
            return Fraction(int(m.group(1)), int(m.group(2)))
        if m := (_FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s)):
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def is_integer_answer(answer: str | None) -> bool:
    """True when the answer normalises to a plain integer (the arithmetic task's golds, GSM8K's golds)."""
    return bool(_INT_RE.fullmatch(normalize_answer(answer))) if isinstance(answer, str) else False
