"""report.md + progress.png of the index bench from the phases' JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval_suites.report import Report


def _load(out: Path, phase: str) -> dict[str, Any] | None:
    path = out / f"{phase}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _plot(out: Path, report: Report, embedders, serve) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    if serve:
        for run in serve["runs"]:
            samples = run.get("samples") or []
            if not samples:
                continue
            total = samples[-1]["total"] or 1
            axes[0].plot([s["t"] for s in samples], [100 * s["done"] / total for s in samples],
                         label=f"{run['backend']} (first answer {run['first_answer_s']} s)")
        axes[0].set_xlabel("seconds since `codehop serve` started")
        axes[0].set_ylabel("% of chunks with a vector")
        axes[0].set_title("codehop serve on this repository")
        axes[0].legend(fontsize=8)
    if embedders:
        quality = {q["embedder"]: q for q in embedders["quality"]}
        names = [s["embedder"] for s in embedders["speed"]]
        speeds = [s["chunks_per_cpu_s"] for s in embedders["speed"]]
        axes[1].bar(names, speeds, color="tab:blue")
        axes[1].set_yscale("log")
        axes[1].set_ylabel("chunks per CPU-second (log)")
        backend = {"torch": "sentence-transformers", "onnx": "onnx-int8", "static": "static"}
        for i, name in enumerate(names):
            row = quality.get(backend[name.split("-")[0]])
            if row:
                axes[1].annotate(f"NDCG {row['coderag-docs ndcg@10']:.3f}\n/{row['hotpotqa ndcg@10']:.3f}",
                                 (i, speeds[i]), ha="center", va="bottom", fontsize=7)
        axes[1].set_title("embedders: speed, NDCG@10 (CodeRAG docs / HotpotQA)")
        axes[1].tick_params(axis="x", labelsize=8)
    report.add_figure(figure, out, "progress.png", "serve timeline and embedder speed/quality")
    plt.close(figure)


def write(out: Path) -> Path:
    embedders, serve, devdocs = _load(out, "embedders"), _load(out, "serve"), _load(out, "devdocs")
    report = Report("Index bench: progressive indexing and faster embeddings")
    if serve:
        rows = [{"backend": r["backend"], "server up s": r.get("server_up_s", "-"),
                 "first answer s": r["first_answer_s"],
                 "first answer CPU s": r.get("first_answer_cpu_s"),
                 "dense share at first answer": (r.get("partial_at_first") or {}).get("dense", 1.0),
                 "embedding started s": r.get("embedding_started_s"),
                 "fully indexed s": r.get("fully_indexed_s"),
                 "fully indexed CPU s": r.get("fully_indexed_cpu_s"),
                 "chunks": (r.get("final") or {}).get("chunks_total"),
                 "embedded": (r.get("final") or {}).get("embedded"),
                 "state": (r.get("final") or {}).get("state", r.get("error"))} for r in serve["runs"]]
        report.add_table("codehop serve on this repository (fresh workspace each)", rows,
                         "Server up: the first /health answer (runs with this column start the "
                         "server before the scan). First answer: the first hybrid /v1/search with "
                         "results after the process started (BM25 committed, dense side empty or "
                         "partial). Embedding started: model loaded (onnx-int8 exports and "
                         "quantises, static distils: once per machine into the model cache, which "
                         "these runs start empty; earlier rows: once per workspace). Fully "
                         "indexed: /health says done.")
    if embedders:
        report.add_table("Embedder speed (no cache; same 1,000 devdocs passages)", embedders["speed"],
                         "wall = elapsed; CPU = this process's CPU time. Other jobs shared the 2 "
                         "cores, so chunks per CPU-second is the steadier comparison.")
        report.add_table("Embedder quality (dense retrieval, max-passage per document)",
                         embedders["quality"],
                         "Sets: " + json.dumps(embedders["sets"]) + ". Threads do not change vectors, "
                         "so one row per model.")
    if devdocs:
        report.add_table("The whole devdocs corpus through a Collection (BM25 first, then fill_dense)",
                         [{k: v for k, v in r.items()} for r in devdocs["runs"]])
    if embedders or serve:
        _plot(out, report, embedders, serve)
    notes = out / "notes.md"
    if notes.exists():
        report.add("Notes", notes.read_text())
    report.results = {"embedders": embedders, "serve": serve, "devdocs": devdocs}
    return report.write(out)
