"""RAPID speculative-decoding benchmark: python -m eval_suites.rapid_bench --out DIR."""
