"""String similarity of a predicted line against the real one (completion benches).

Edit similarity is RepoEval's / CodeXGLUE's: 1 - Levenshtein(a, b) / max(len(a), len(b)).
Example: levenshtein("kitten", "sitting") -> 3; edit_similarity("abc", "abd") -> 0.667.
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions that turn `a` into `b` (one row of the DP table)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1.0 for identical strings (two empty ones included), 0.0 for nothing in common."""
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))
