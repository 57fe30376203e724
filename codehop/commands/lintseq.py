"""`codehop lintseq INPUT.jsonl --out OUT.jsonl`: LintSeq edit sequences for a code dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from runtime.errors import CodehopError, InvalidInputError, MissingDependencyError, NotFoundError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lintseq", help="turn programs into LintSeq synthetic edit sequences",
        description="Sample LintSeq edit sequences (linter-guided backward deletion, reversed into "
                    "zero-context unified diffs) for every record of a JSONL file. Records need a code "
                    "field (code, solution, canonical_solution, completion, response or output; a "
                    "```python fenced block inside it is used when present). Malformed records are "
                    "reported and skipped.",
    )
    parser.add_argument("input", help="input JSONL (one record per line)")
    parser.add_argument("--out", required=True, help="output JSONL: one line per sampled sequence")
    parser.add_argument("--samples", type=int, default=5, help="sequences per program (default 5)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all cores; 1 = in-process)")
    parser.add_argument("--linter", choices=("pyflakes", "pylint"), default="pyflakes",
                        help="pyflakes + compile() (fast, default) or pylint E/F + bad-indentation")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    parser.add_argument("--ignore-source-errors", action="store_true",
                        help="ignore lint errors the program already has (e.g. pylint bad-indentation)")
    parser.add_argument("--code-field", default=None, help="read the program from this field only")
    parser.add_argument("--ray", action="store_true", help="distribute with Ray (needs ray installed)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=handler)


def _read(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, record or None, problem) for every non-blank line."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON ({exc.msg})"
                continue
            if not isinstance(record, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, record, ""


def _work(job: tuple) -> tuple[int, list[dict], str]:
    """Process one record in a worker; errors become a message, never an exception."""
    number, record, config, code_field = job
    from code_tools.lintseq import process_record

    key = str(record.get("task_id", number))
    try:
        return number, process_record(record, config, key, code_field), ""
    except CodehopError as exc:
        return number, [], str(exc)
    except Exception as exc:  # a pathological program must not abort the run
        return number, [], f"{type(exc).__name__}: {exc}"


def _pool(workers: int, use_ray: bool):
    if use_ray:
        try:
            from ray.util.multiprocessing import Pool as RayPool
        except ImportError as exc:
            raise MissingDependencyError("--ray needs Ray: pip install 'ray[default]'") from exc
        return RayPool(processes=workers)
    import multiprocessing

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers)


def handler(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from code_tools.lintseq import LintSeqConfig

    source = Path(args.input)
    if not source.is_file():
        raise NotFoundError(f"input file {source} does not exist")
    config = LintSeqConfig(linter=args.linter, samples=args.samples, seed=args.seed,
                           ignore_source_errors=args.ignore_source_errors)
    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise InvalidInputError("--workers must be >= 1")
    skipped: list[tuple[int, str]] = []
    jobs = []
    for number, record, problem in _read(source):
        if record is None:
            skipped.append((number, problem))
        else:
            jobs.append((number, record, config, args.code_field))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    programs = sequences = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            bar = tqdm(total=len(jobs), desc=f"lintseq ({args.linter})", unit="prog",
                       disable=args.no_progress, file=sys.stderr)
            if workers == 1 and not args.ray:
                results = map(_work, jobs)
                pool = None
            else:
                pool = _pool(workers, args.ray)
                results = pool.imap(_work, jobs, chunksize=4)  # ordered: output follows input order
            try:
                for number, records, problem in results:
                    bar.update(1)
                    if problem:
                        skipped.append((number, problem))
                        continue
                    programs += 1
                    for record in records:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                        sequences += 1
            finally:
                bar.close()
                if pool is not None:
                    pool.close()
                    pool.join()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for number, problem in sorted(skipped)[:20]:
        print(f"lintseq: skipped line {number}: {problem}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"lintseq: ... and {len(skipped) - 20} more skipped lines", file=sys.stderr)
    print(f"lintseq: {programs} programs -> {sequences} edit sequences in {out} "
          f"(linter={args.linter}, samples={args.samples}, seed={args.seed}); "
          f"{len(skipped)} malformed records skipped")
    return 0
