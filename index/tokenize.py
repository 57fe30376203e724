"""Code-aware tokenisation shared by BM25, the benches and sentence-level pruning.

Identifiers are kept whole and also split into their camelCase / snake_case parts, so a query
for "user name" finds `getUserName` and a query for `get_user_name` finds the exact symbol:

    tokenize("def getUserName(user_id):")
    -> ["def", "getusername", "get", "user", "name", "user_id", "user", "id"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from runtime.errors import MissingDependencyError

# A word is an identifier-like run or a number; everything else separates words.
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
# Parts of a camelCase identifier: "HTTPServerError2" -> HTTP, Server, Error, 2.
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

ENGLISH_STOPWORDS = frozenset(
    """a an and are as at be but by for if in into is it no not of on or such that the their
    then there these they this to was will with""".split()
)


@dataclass(frozen=True)
class TokenizerConfig:
    """How text becomes tokens.

    Args:
        split_identifiers: also emit the camelCase/snake_case parts of identifiers.
        lowercase: fold case (identifiers are matched case-insensitively).
        stopwords: drop English stopwords (parts of identifiers are never dropped).
        stem: Snowball-stem plain words (needs PyStemmer).
        min_length: drop tokens shorter than this.
    """

    split_identifiers: bool = True
    lowercase: bool = True
    stopwords: bool = True
    stem: bool = False
    min_length: int = 1


def _identifier_parts(word: str) -> list[str]:
    parts: list[str] = []
    for piece in word.split("_"):
        if piece:
            parts.extend(_CAMEL_PART.findall(piece))
    return parts


@lru_cache(maxsize=1)
def _stemmer():
    try:
        import Stemmer  # PyStemmer
    except ImportError as error:
        raise MissingDependencyError(
            "stemming needs PyStemmer: pip install PyStemmer==3.1.0 (or set stem=False)"
        ) from error
    return Stemmer.Stemmer("english")


def tokenize(text: str, config: TokenizerConfig = TokenizerConfig()) -> list[str]:
    """Split `text` into search tokens (see the module docstring for an example)."""
    tokens: list[str] = []
    stopwords = ENGLISH_STOPWORDS if config.stopwords else frozenset()
    for word in _WORD.findall(text):
        whole = word.lower() if config.lowercase else word
        if whole not in stopwords and len(whole) >= config.min_length:
            tokens.append(whole)
        if not config.split_identifiers:
            continue
        parts = _identifier_parts(word)
        if len(parts) > 1:
            for part in parts:
                part = part.lower() if config.lowercase else part
                if len(part) >= config.min_length:
                    tokens.append(part)
    if config.stem:
        tokens = _stemmer().stemWords(tokens)
    return tokens
