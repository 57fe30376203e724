"""Repository-level completion benchmark (RepoEval-style tasks from pinned PyPI sdists)."""
