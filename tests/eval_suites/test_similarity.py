import pytest

from eval_suites.similarity import edit_similarity, levenshtein


@pytest.mark.parametrize(("a", "b", "distance"), [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("same", "same", 0),
    ("return x", "return y", 1), ("ab", "ba", 2),
])
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_edit_similarity_bounds():
    assert edit_similarity("", "") == 1.0 == edit_similarity("x = 1", "x = 1")
    assert edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("abc", "abd") == pytest.approx(2 / 3)
