import pytest

from runtime.errors import MissingDependencyError
from index.tokenize import TokenizerConfig, tokenize


def test_identifiers_kept_whole_and_split():
    tokens = tokenize("def getUserName(user_id):")
    assert tokens == ["def", "getusername", "get", "user", "name", "user_id", "user", "id"]


def test_acronyms_and_digits_split():
    assert tokenize("HTTPServerError2") == ["httpservererror2", "http", "server", "error", "2"]


def test_stopwords_dropped_but_not_from_identifier_parts():
    assert tokenize("the end of the_file") == ["end", "the_file", "the", "file"]
    assert "the" in tokenize("the end", TokenizerConfig(stopwords=False))


def test_no_split_and_case_options():
    config = TokenizerConfig(split_identifiers=False, lowercase=False)
    assert tokenize("readCsv(path)", config) == ["readCsv", "path"]


def test_empty_and_symbol_only_text():
    assert tokenize("") == []
    assert tokenize("+-*/ ()[]") == []
    assert tokenize("a_b") == ["a_b", "a", "b"]


def test_stemming_needs_pystemmer_or_works():
    try:
        import Stemmer  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="PyStemmer"):
            tokenize("running", TokenizerConfig(stem=True))
    else:
        assert tokenize("running", TokenizerConfig(stem=True)) == ["run"]
