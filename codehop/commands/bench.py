"""`codehop bench <suite> ...`: run a benchmark suite and write its report.

Suites so far: `coderag` (CodeRAG-Bench retrieval + generation, eval_suites.coderag). Each
suite is a sub-subcommand, so others can be added next to it in `_SUITES`.
"""

from __future__ import annotations

import argparse


def _coderag(parser: argparse.ArgumentParser) -> None:
    from eval_suites.coderag.cli import add_arguments

    add_arguments(parser)
    parser.set_defaults(func=_run_coderag)


def _run_coderag(args: argparse.Namespace) -> int:
    from eval_suites.coderag.cli import run_from_args

    return run_from_args(args)


_SUITES = {"coderag": ("CodeRAG-Bench: retrieval NDCG@10 and sandboxed pass@1", _coderag)}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark suite and write its report")
    suites = parser.add_subparsers(dest="suite", metavar="SUITE")
    suites.required = True
    for name, (help_text, build) in _SUITES.items():
        build(suites.add_parser(name, help=help_text, description=help_text))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
