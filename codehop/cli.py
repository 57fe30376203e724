"""`codehop` command line: one entry point, subcommands discovered from codehop/commands/.

Each module in codehop/commands/ defines `register(subparsers)` which adds its subcommand(s)
and sets `func` on the parser: `func(args) -> int` (the exit code). Errors from our hierarchy
become one line on stderr and that error's exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import select
import sys

from runtime.errors import CodehopError

import codehop.commands


def _configure_threads() -> None:
    # On small machines a spinning OpenMP pool slows torch 10-30x; wait passively.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codehop", description="Self-hosted RAG and code-assistant backend."
    )
    parser.add_argument("--config", help="TOML settings file (default: ./codehop.toml if present)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(codehop.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"codehop.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def _reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no stdout, or not a file descriptor
        return False


def main(argv: list[str] | None = None) -> int:
    _configure_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CodehopError as error:
        print(f"codehop: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("codehop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _reader_left():  # a pipe or socket of the command's own (a model server's, ...)
            raise
        # the reader left (`codehop ask ... | head`): stop quietly, as Unix tools do. Python
        # would report the failed flush of stdout at exit; point stdout at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


if __name__ == "__main__":
    sys.exit(main())
