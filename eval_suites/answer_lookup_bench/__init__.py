"""Prompt-lookup drafting of ask answers vs plain greedy: python -m eval_suites.answer_lookup_bench."""
