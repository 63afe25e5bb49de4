"""Answer keys and per-group answer ids (what majority voting and the dynamic consensus threshold compare)."""
import numpy as np
import pytest

from jax_cat.rewards import answer_ids, answer_key, canonical_answer, extract_answer


def test_equal_values_share_a_key():
    assert canonical_answer("1/2") == canonical_answer("0.5") == canonical_answer("\\frac{1}{2}") == "1/2"
    assert canonical_answer("0363") == canonical_answer("363") == "363"
    assert canonical_answer("x+1") == canonical_answer(" X + 1 ") == "x+1"
    assert canonical_answer(None) is None and canonical_answer("") is None
    assert answer_key("so the answer is 0.5") == canonical_answer(extract_answer("so the answer is 0.5")) == "1/2"
    for text in ("1/2", "0.75", "x+1", "\\sqrt{2}", "-4"):  # a key is its own key
        key = canonical_answer(text)
        assert canonical_answer(key) == key


def test_answer_ids_by_hand():
    answers = ["5", "5.0", None, "3", "x", "3", "X", None]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    ids = answer_ids(answers, groups)
    # group 0: "5" and "5.0" -> 0, no answer -> -1, "3" -> 1; group 1 numbers its own answers from 0
    np.testing.assert_array_equal(ids, [0, 0, -1, 1, 0, 1, 0, -1])
    assert ids.dtype == np.int32
    # ids are per group: the same answer in another group may get another id; groups need not be sorted
    np.testing.assert_array_equal(answer_ids(["3", "7", "7", "3"], np.array([4, 9, 4, 9])), [0, 0, 1, 1])


def test_answer_ids_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one answer per row"):
        answer_ids(["1", "2"], [0])
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        answer_ids(["1"], [[0]])
