"""Code-aware query text: a pasted code prompt loses its literal data, a question stays whole."""

from index.query import is_code_line, search_text


def test_a_question_is_searched_unchanged():
    for question in ("How are index writes made atomic?", "Format a datetime string `when` to date 2",
                     "what does 'ValueError: invalid literal' mean in python 3.9", "two lines\nof prose 42"):
        assert search_text(question) == question


def test_a_code_prompt_keeps_identifiers_and_prose_but_not_its_data():
    prompt = ("Problem:\nI have following pandas dataframe with 'Qu1' values:\n"
              "data = DataFrame({'Qu1': ['apple', 'potato'], 'Qu2': [1.5, 2e-3]})\n"
              "2015-04-24 06:38:49 0.023844\n"
              ">>> pd.value_counts(data.Qu1) >= 2\n")
    text = search_text(prompt)
    for kept in ("Problem:", "pandas dataframe", "'Qu1' values", "data = DataFrame", "pd.value_counts(data.Qu1)"):
        assert kept in text
    for gone in ("apple", "potato", "1.5", "2e-3", "2015", "0.023844"):
        assert gone not in text
    assert search_text(text) == text  # stable


def test_code_lines():
    for line in ("import pandas as pd", "from a.b import c", "x = f(1)", "df['a'] += 1", ">>> f()",
                 "def f(x):", "    return x", "}", "result = foo(", "values = [1,"):
        assert is_code_line(line), line
    for line in ("How do I group rows?", "I have a DataFrame", "x == y is what I test"):
        assert not is_code_line(line), line


def test_questions_and_their_echoes():
    from index.query import echoes, is_question

    assert is_question("How are index writes made atomic?") and is_question("does the store use WAL")
    for not_a_question in ("atomic writes", "reciprocal rank fusion in hybrid search", "a b?\nc d e f?"):
        assert not is_question(not_a_question), not_a_question
    question = "How are index writes made atomic?"
    assert echoes(question, 'QUESTION = "how are  index writes made atomic ?"  # sample')
    assert not echoes(question, "Index writes are made atomic by renaming a temp file into place.")
