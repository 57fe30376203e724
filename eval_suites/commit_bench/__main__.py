"""python -m eval_suites.commit_bench [--pages 5000] [--rounds 4] [--out DIR]

What one small change costs a large collection: devdocs pages added as texts (the static
embedder, so embedding does not hide the indexes' cost), then rounds of one new text committed
and deleted again. Each commit either updates the committed chunk BM25 in place (the default:
index.collection.Collection._updated_bm25) or counts every chunk again from the store, as
commits did before; the two alternate within each round, on the same collection.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VARIANTS = ("in place", "from scratch")


def _from_scratch(collection, removed, added):
    """Collection._updated_bm25's fallback, always: every stored chunk counted again."""
    return collection._bm25_from_store()


def run(args) -> dict:
    from index.collection import Collection
    from index.collection_config import CollectionConfig

    pages = []
    with gzip.open(args.data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for line in handle:
            pages.append(json.loads(line))
            if len(pages) >= args.pages:
                break
    collection = Collection.open(Path(tempfile.mkdtemp(prefix="commit-bench-")), "docs",
                                 CollectionConfig(embedding_backend="static"), create=True)
    started = time.perf_counter()
    collection.add_texts([p["text"] for p in pages], paths=[p["id"] for p in pages])
    build_s = time.perf_counter() - started
    in_place = Collection._updated_bm25
    rows = []
    try:
        for round_ in range(args.rounds):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                Collection._updated_bm25 = in_place if variant == "in place" else _from_scratch
                path = f"note-{round_}-{variant}"
                for action in ("add", "delete"):
                    start = time.perf_counter()
                    if action == "add":
                        collection.add_texts([f"note {round_} about pandas.DataFrame.groupby"], paths=[path])
                    else:
                        collection.delete(path)
                    rows.append({"round": round_, "variant": variant, "action": action,
                                 "seconds": time.perf_counter() - start})
                    print(f"[round {round_}] {variant} {action}: {rows[-1]['seconds']:.2f} s", flush=True)
    finally:
        Collection._updated_bm25 = in_place
    stats = collection.stats()
    collection.close()
    return {"rows": rows, "chunks": stats["chunks"], "documents": stats["documents"], "build_s": build_s,
            "load": os.getloadavg()}


def summary(rows: list[dict]) -> list[dict]:
    table = []
    for variant in VARIANTS:
        for action in ("add", "delete"):
            seconds = [r["seconds"] for r in rows if r["variant"] == variant and r["action"] == action]
            table.append({"variant": variant, "action": action, "commits": len(seconds),
                          "median s": statistics.median(seconds), "min s": min(seconds), "max s": max(seconds)})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/commit_bench"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    results = run(args)
    table = summary(results["rows"])

    from eval_suites.report import Report

    report = Report("One small change committed to a large collection: BM25 updated in place vs counted again",
                    settings={"pages": args.pages, "rounds": args.rounds, "chunks": results["chunks"],
                              "embedder": "static", "initial build s": round(results["build_s"], 1),
                              "load": results["load"]})
    report.add_table("Commit seconds (one new text added, then deleted)", table,
                     note="Both variants alternate within each round on the same collection. 'from scratch' "
                          "counts every stored chunk's tokens again, as commits did before the in-place update.")
    median = {(r["variant"], r["action"]): r["median s"] for r in table}
    report.add("Ratio", "\n".join(f"- {action}: in place / from scratch = "
                                  f"{median[('in place', action)] / median[('from scratch', action)]:.2f}x "
                                  f"({median[('in place', action)]:.2f} vs {median[('from scratch', action)]:.2f} s)"
                                  for action in ("add", "delete")))
    report.results = results

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    for variant, color in zip(VARIANTS, ("#4c72b0", "#dd8452")):
        seconds = [r["seconds"] for r in results["rows"] if r["variant"] == variant]
        axis.plot(range(len(seconds)), seconds, marker="o", color=color, label=variant)
    axis.set_xlabel("commit (add, delete per round)")
    axis.set_ylabel("seconds")
    axis.set_ylim(bottom=0)
    axis.legend()
    report.add_figure(figure, args.out, "commits.png", "seconds per commit")
    plt.close(figure)
    path = report.write(args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
