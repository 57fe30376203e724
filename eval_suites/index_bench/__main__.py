"""python -m eval_suites.index_bench PHASE [--out DIR] [--data DIR] [--work DIR]

Progressive indexing and embedders, measured; each phase writes `<out>/<phase>.json` (so the
long ones can run apart, in the background) and `report` renders them into `<out>/report.md`
with a plot:

    embedders   chunks/s per embedder on 1,000 devdocs passages (no cache), and dense
                NDCG@10 on the CodeRAG doc queries (DS-1000 + ODEX over their gold pages and
                400 distractors) and the HotpotQA dev pool (2,966 paragraphs)
    serve       `codehop serve` on a snapshot of this repository per embedding backend: time
                to first answer, to embedding start, to fully indexed; the progress timeline
    devdocs     the whole devdocs corpus (13.7k pages as files) through a Collection: BM25
                first (time to first answer), then every chunk embedded (time to fully indexed)
    report      report.md + progress.png from whatever phases have results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from index.atomic import atomic_write

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _save(out: Path, phase: str, payload) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=str)
    atomic_write(out / f"{phase}.json", lambda temp: Path(temp).write_text(text))


def _load(out: Path, phase: str):
    path = out / f"{phase}.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_embedders(args) -> None:
    from eval_suites.index_bench import embedders as e

    specs = [s for s in e.EMBEDDERS if s.name in args.embedders.split(",")]
    sets = {"coderag-docs": e.coderag_docs(args.data), "hotpotqa": e.hotpotqa(args.data)}
    sample = e.speed_sample(sets["coderag-docs"][0], args.speed_chunks)
    # Rows of embedders not measured now are kept from an earlier run (a re-measured one replaces its own).
    result = _load(args.out, "embedders") or {"speed": [], "quality": []}
    names, backends = {s.name for s in specs}, {s.backend for s in specs}
    result["speed"] = [r for r in result["speed"] if r["embedder"] not in names]
    result["quality"] = [r for r in result["quality"] if r["embedder"] not in backends]
    result.update(sets={k: v[4] for k, v in sets.items()}, speed_chunks=len(sample))
    for spec in specs:  # speed first for every embedder, close together in time
        result["speed"].append(e.speed(spec, sample, args.work))
        print(result["speed"][-1], flush=True)
        _save(args.out, "embedders", result)
    done_quality = set()
    for spec in specs:
        if spec.threads == 1 and spec.backend != "static":
            continue  # vectors do not depend on the thread count: one quality row per model
        key = spec.backend
        if key in done_quality:
            continue
        done_quality.add(key)
        row = e.quality(spec, sets, args.work)
        row["embedder"] = spec.backend
        result["quality"].append(row)
        print(row, flush=True)
        _save(args.out, "embedders", result)


def run_serve(args) -> None:
    from eval_suites.index_bench.startup import serve_timeline, snapshot

    source = snapshot(REPO, args.work / "repo-snapshot")
    result = _load(args.out, "serve") or {"runs": []}
    for backend in args.backends.split(","):
        run = serve_timeline(source, args.work / f"serve-{backend}", backend)
        result["runs"] = [r for r in result["runs"] if r["backend"] != backend] + [run]
        print({k: v for k, v in run.items() if k not in ("samples", "log_tail")}, flush=True)
        _save(args.out, "serve", result)


def run_devdocs(args) -> None:
    from eval_suites.index_bench.startup import devdocs_timeline

    result = _load(args.out, "devdocs") or {"runs": []}
    for backend in args.backends.split(","):
        run = devdocs_timeline(args.data, args.work, backend)
        result["runs"] = [r for r in result["runs"] if r["backend"] != backend] + [run]
        print(run, flush=True)
        _save(args.out, "devdocs", result)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites.index_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("embedders", "serve", "devdocs", "report"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "index_bench")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/codehop-index-bench"),
                        help="scratch space: workspaces, converted models, the devdocs tree")
    parser.add_argument("--embedders", default="torch-1t,torch-2t,onnx-int8-1t,onnx-int8-2t,static")
    parser.add_argument("--backends", default="sentence-transformers,onnx-int8,static",
                        help="embedding backends of the serve / devdocs phases")
    parser.add_argument("--speed-chunks", type=int, default=1000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.phase == "report":
        from eval_suites.index_bench.report import write

        print(f"wrote {write(args.out)}")
        return 0
    {"embedders": run_embedders, "serve": run_serve, "devdocs": run_devdocs}[args.phase](args)
    print(f"{args.phase} done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
