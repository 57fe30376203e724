"""python -m eval_suites.coderag --out DIR [--tasks ...] [--retrievers ...] [--limit N] ...

Runs the CodeRAG-Bench retrieval and generation evaluation (see runner.py) and writes
DIR/report.md, DIR/results.json and the plots. Same options as `codehop bench coderag`.
"""

from __future__ import annotations

import argparse
import sys

from eval_suites.coderag.cli import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites.coderag", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
