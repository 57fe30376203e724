"""RAG orchestrator benchmark on HotpotQA: rewriting, filtering, answers, trigger savings."""
