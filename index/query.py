"""What a query searches with: a question as it is; a pasted code prompt without its data.

A question such as DS-1000's is a problem statement wrapped around code: a DataFrame built from
a dozen string values, a table of timestamps and floats. Those literals name nothing in the
documentation and crowd the words that do (identifiers, the prose) out of BM25's scores and out
of the embedder's 256-token window. So a query that carries code (two or more lines, at least
one of them code) loses its numbers, and its code lines lose the contents of their string
literals; identifiers, operators and the prose stay. A one-line question, however it is
phrased, is searched unchanged (METHODS.md: "code-aware queries").

A question also has echoes: chunks that contain it word for word (a test that sends it, a list
of sample questions, a log of answers). They match it perfectly and answer nothing, so search
ranks them after the chunks that do not (`echoes`).

    search_text("df = pd.DataFrame({'a': ['apple', 'egg']})\\nHow do I count values >= 2?")
    -> "df = pd.DataFrame({'': ['', '']})\\nHow do I count values >= ?"
"""

from __future__ import annotations

import re

_STRING = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_NUMBER = re.compile(r"(?<![A-Za-z_\d])[-+]?\d[\d_]*(?:[.:,/-]\d+)*(?:[eE][-+]?\d+)?")
_CODE_LINE = re.compile(
    r"""^\s*(?:>>>|\.\.\.\s|import\s|from\s+[\w.]+\s+import\s|def\s|class\s|return\b|@\w
        |[\w.\[\]'"]+\s*(?:[-+*/%|&]|//|\*\*)?=(?!=)      # an assignment
        |[)\]}]                                          # a closing bracket
        |.*[(\[{,\\]\s*$)                                # a line left open
    """, re.VERBOSE)


def is_code_line(line: str) -> bool:
    """Whether a line reads as code (an import, an assignment, a prompt, an open bracket...)."""
    return bool(_CODE_LINE.match(line))


def search_text(query: str) -> str:
    """The text BM25 and the embedder search with (see the module docstring)."""
    lines = query.splitlines()
    if len(lines) < 2 or not any(is_code_line(line) for line in lines):
        return query
    kept = []
    for line in lines:
        if is_code_line(line):
            line = _STRING.sub(lambda literal: literal.group(0)[0] * 2, line)
        line = re.sub(r"[ \t]+", " ", _NUMBER.sub("", line)).rstrip()
        if line.strip() or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip()


_QUESTION_WORDS = frozenset("how what why where when which who whom whose does do is are can could "
                            "should would will".split())


def is_question(query: str, min_words: int = 4) -> bool:
    """A one-line question of at least `min_words` words ("How are writes made atomic?")."""
    words = query.split()
    return ("\n" not in query.strip() and len(words) >= min_words
            and (query.rstrip().endswith("?") or words[0].lower() in _QUESTION_WORDS))


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def echoes(question: str, text: str) -> bool:
    """Whether `text` contains the whole question word for word (case, spacing and
    punctuation aside): echoes("How are writes atomic?", 'QUESTION = "how are writes atomic?"')
    -> True."""
    needle = _normal(question)
    return bool(needle) and needle in _normal(text)
