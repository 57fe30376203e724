"""python -m eval_suites.ann_bench.devdocs_pq --out DIR: PQ compression vs NDCG@10 on the full devdocs corpus.

Every devdocs page (not the gold + distractor sub-corpus of the main suite) cut into fixed
1,000-character chunks (the first `--chunks-per-page` of each page), embedded with the static
embedder (model2vec distilled from the shipped MiniLM, 256-d: MiniLM itself would need hours
for this many chunks on 2 shared cores), the DS-1000 and ODEX questions as queries, page-level
NDCG@10 against exact search. PQ codebooks are trained on a sample (PQConfig.train_size), so
most codes come from vectors the codebooks never saw. Methods: our OPQ+IVF at 32x (M=32 bytes
per 1,024-byte vector) and 64x (M=16), ADC alone and with exact re-rank from the on-disk float
vectors, plus SPANN; memory and disk are the index's own counts, the code size is M bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from eval_suites.coderag.builders import devdocs_page_keys, iter_devdocs, load_problems
    from index.dense import create_dense_index, load_dense_index
    from index.embed import Embedder, EmbedderConfig
    from index.pq import PQConfig
    from index.spann import SpannConfig

    parser = argparse.ArgumentParser(prog="python -m eval_suites.ann_bench.devdocs_pq")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--chunks-per-page", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "codehop-annreal")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    keys = devdocs_page_keys(args.data)
    problems = [p for task in ("ds1000", "odex") for p in load_problems(args.data, task, keys) if p.gold]
    chunk_page, texts, pages = [], [], 0
    for record in iter_devdocs(args.data):
        pages += 1
        text = record["text"]
        for start in range(0, min(len(text), 1000 * args.chunks_per_page), 1000):
            chunk_page.append(record["id"])
            texts.append(text[start : start + 1000])
    chunk_page = np.array(chunk_page)
    embedder = Embedder(EmbedderConfig(backend="static", models_dir=args.models_dir, batch_size=1024))
    start = time.perf_counter()
    x = np.concatenate([embedder.encode(texts[i : i + 8192]) for i in range(0, len(texts), 8192)]).astype(np.float32)
    embed_s = time.perf_counter() - start
    queries = embedder.encode([p.query for p in problems]).astype(np.float32)
    dim = x.shape[1]
    print(f"{pages} pages, {len(x)} chunks x {dim} embedded in {embed_s:.0f} s; {len(problems)} questions", flush=True)

    def ndcg(found: np.ndarray) -> float:
        scores = []
        for problem, ids in zip(problems, found):
            ranked = list(dict.fromkeys(chunk_page[i] for i in ids if i >= 0))[:10]
            rel = set(problem.gold)
            dcg = sum(1 / math.log2(i + 2) for i, p in enumerate(ranked) if p in rel)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
            scores.append(dcg / idcg)
        return float(np.mean(scores))

    exact = np.argsort(-(queries @ x.T), axis=1)[:, :50]
    exact_ndcg = ndcg(exact)
    rows = [{"method": "exact", "params": {}, "bytes_per_vector": 4 * dim, "compression": 1.0,
             "ndcg@10": exact_ndcg, "ndcg_loss_pts": 0.0, "recall@10": 1.0}]
    methods = [
        ("OPQ M=32 (32x)", "pq", PQConfig(m=32, nprobe=32, opq_iters=4, train_size=30_000),
         [{"nprobe": 32}, {"nprobe": 128}, {"nprobe": 128, "rerank": True}]),
        ("OPQ M=16 (64x)", "pq", PQConfig(m=16, nprobe=32, opq_iters=4, train_size=30_000),
         [{"nprobe": 32}, {"nprobe": 128}, {"nprobe": 128, "rerank": True}]),
        ("SPANN", "spann", SpannConfig(head_ratio=0.08, precision="float16"), [{"search_heads": 16}, {"search_heads": 64}]),
    ]
    import dataclasses

    for name, kind, config, sweep in methods:
        index = create_dense_index(kind, dim, config)
        index.add(np.arange(len(x)), x)
        start = time.perf_counter()
        index.build()
        build_s = time.perf_counter() - start
        where = args.work / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        index.save(where)
        index = load_dense_index(kind, where)
        disk = sum(p.stat().st_size for p in where.iterdir() if p.is_file())
        for params in sweep:
            index.config = dataclasses.replace(index.config, **params)
            start = time.perf_counter()
            hits = index.search(queries, 50)
            ms = 1e3 * (time.perf_counter() - start) / len(queries)
            found = np.full((len(queries), 50), -1, np.int64)
            for r, h in enumerate(hits):
                found[r, : len(h.ids)] = h.ids
            score = ndcg(found)
            recall = float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, exact)]))
            code = config.m if kind == "pq" else None
            rows.append({"method": name, "params": params, "bytes_per_vector": code,
                         "compression": 4 * dim / code if code else None, "ndcg@10": score,
                         "ndcg_loss_pts": 100 * (exact_ndcg - score), "recall@10": recall,
                         "batch_ms_per_query": ms, "memory_MiB": index.memory_bytes() / 2**20,
                         "memory_%raw": 100 * index.memory_bytes() / x.nbytes, "disk_MiB": disk / 2**20,
                         "build_s": build_s})
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "devdocs_pq.json").write_text(json.dumps({
        "pages": pages, "chunks": len(x), "dim": dim, "embed_s": embed_s, "questions": len(problems),
        "chunks_per_page": args.chunks_per_page, "exact_ndcg@10": exact_ndcg, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
