"""PIE KV-cache editing benchmark: python -m eval_suites.pie_bench --out DIR."""
