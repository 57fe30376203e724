"""LintSeq throughput benchmark: python -m eval_suites.lintseq_bench --out DIR."""
