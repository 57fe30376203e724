"""python -m eval_suites.ann_bench.scale: SPANN and PQ at N = 1M next to faiss, measured, not computed.

One run, resumable phase by phase (each phase writes into --work and is skipped when its output
exists), every build and every measurement in a fresh subprocess:

    data      seeded clustered 384-d unit vectors (N/200 Gaussian centres, noise 0.7), written in
              chunks to <work>/x.npy (a memmap, never all in RAM at once), queries from the same
              mixture, exact top-10 by inner product (faiss.knn) as ground truth
    build M   builds method M from the memmap, saves it under <work>/M, records wall time and the
              process's peak RSS (ru_maxrss)
    measure M loads M from disk in a fresh process and measures: recall@10; warm single-query
              p50/p99 (1 thread, after one pass over the queries); batch QPS (2 threads); RSS
              read from /proc/self/status (anon and file-backed, minus the process's own baseline
              taken before the index was loaded); disk bytes; and cold single-query latency for
              the methods whose data live on disk: before each cold query the index's files are
              evicted from the page cache (munmap + posix_fadvise(DONTNEED); `fincore` confirms
              0 resident pages) so its reads go to the disk
              `measure --rounds N M1 M2` alternates the methods N times (each in a fresh process) and
              keeps every round (measure.round<i>.json): on shared cores one round's latency carries
              that minute's load, so the report gives SPANN / IVF-Flat ratios per round
    report    results_scale.json + scale_tables.md under --out

Methods: SPANN (ours; heads in RAM behind HNSW, float16 postings on disk), our OPQ+IVF PQ at
32x and 64x, faiss IVF-Flat, faiss IVF with OnDiskInvertedLists (same quantiser and lists as
IVF-Flat, lists mmapped from one file), faiss IVF-PQ fastscan + exact refine, faiss HNSW32.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 384
CHUNK = 50_000
METHODS = ("spann", "ivfflat", "ivfondisk", "ivfpqfs", "opq48", "opq24", "rq48", "rq24", "hnsw")
OUR_PQ = {"opq48": {"m": 48}, "opq24": {"m": 24},  # PQConfig fields beyond the defaults
          "rq48": {"m": 48, "quantizer": "rq"}, "rq24": {"m": 24, "quantizer": "rq"}}
LABELS = {
    "spann": "SPANN (ours, 6% heads, fp16 postings on disk)",
    "ivfflat": "faiss IVF-Flat (in RAM)",
    "ivfondisk": "faiss IVF-Flat, OnDiskInvertedLists",
    "ivfpqfs": "faiss IVF-PQ fastscan+refine (in RAM)",
    "opq48": "OPQ M=48 (ours, 32x)",
    "opq24": "OPQ M=24 (ours, 64x)",
    "rq48": "RQ M=48 (ours, 32x, beam 5)",
    "rq24": "RQ M=24 (ours, 64x, beam 5)",
    "hnsw": "faiss HNSW32 (in RAM)",
}
SWEEPS = {
    "spann": [{"search_heads": h, "hnsw_ef_search": ef}
              for h, ef in ((8, 8), (8, 16), (8, 32), (12, 24), (16, 16), (16, 32), (32, 64), (64, 64))],
    # from nprobe 1: "equal recall" needs IVF's fastest setting at SPANN's recall, not only >= 4
    "ivfflat": [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64)],
    "ivfondisk": [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64)],
    "ivfpqfs": [{"nprobe": p, "k_factor_rf": 4} for p in (8, 16, 32, 64)],
    # codes alone at the default nprobe and wider (the codes are in RAM: cheap to sweep), then the
    # default: the top k*4 re-scored from the float rows on disk
    "opq48": [{"nprobe": p, "rerank": False} for p in (32, 64, 128)] + [{"nprobe": 32, "rerank": True}],
    "opq24": [{"nprobe": p, "rerank": False} for p in (32, 64, 128)] + [{"nprobe": 32, "rerank": True}],
    "rq48": [{"nprobe": p, "rerank": False} for p in (32, 64)] + [{"nprobe": 32, "rerank": True}],
    "rq24": [{"nprobe": p, "rerank": False} for p in (32, 64)] + [{"nprobe": 32, "rerank": True}],
    "hnsw": [{"efSearch": e} for e in (16, 32, 64, 128)],
}
ON_DISK = {"spann", "ivfondisk", *OUR_PQ}  # cold reads are meaningful for these


def nlist_for(n: int) -> int:
    return int(2 ** round(np.log2(4 * np.sqrt(n))))


# ---- data ------------------------------------------------------------------------------------
def make_data(work: Path, n: int, n_queries: int, seed: int = 0) -> None:
    import faiss

    if (work / "truth.npy").exists():
        return
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(64, n // 200), DIM)).astype(np.float32)

    def draw(m: int, chunk_seed: int) -> np.ndarray:
        r = np.random.default_rng(chunk_seed)
        x = centres[r.integers(0, len(centres), m)] + 0.7 * r.normal(size=(m, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = np.lib.format.open_memmap(work / "x.tmp.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for i, start in enumerate(range(0, n, CHUNK)):
        x[start : start + CHUNK] = draw(min(CHUNK, n - start), seed + 1 + i)
    x.flush()
    del x
    os.replace(work / "x.tmp.npy", work / "x.npy")
    q = draw(n_queries, seed + 10**6).astype(np.float32)
    np.save(work / "q.npy", q)
    x = np.load(work / "x.npy", mmap_mode="r")
    faiss.omp_set_num_threads(2)
    best_s = np.full((n_queries, 10), -np.inf, np.float32)
    best_i = np.full((n_queries, 10), -1, np.int64)
    for start in range(0, n, 200_000):  # exact top-10, merged block by block
        s, i = faiss.knn(q, np.ascontiguousarray(x[start : start + 200_000]), 10, metric=faiss.METRIC_INNER_PRODUCT)
        s_all, i_all = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + start], 1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    np.save(work / "truth.npy", best_i)


# ---- build -----------------------------------------------------------------------------------
def _faiss_train_add(factory: str, x: np.ndarray, train: int = 100_000):
    import faiss

    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    index.train(np.ascontiguousarray(x[np.sort(rng.choice(len(x), min(train, len(x)), replace=False))]))
    for start in range(0, len(x), 100_000):
        index.add(np.ascontiguousarray(x[start : start + 100_000]))
    return index


def build(work: Path, method: str) -> None:
    import faiss

    from index.dense import create_dense_index
    from index.pq import PQConfig
    from index.spann import SpannConfig

    x = np.load(work / "x.npy", mmap_mode="r")
    n = len(x)
    out = work / method
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    if method == "spann":
        # Routing 940k vectors through the HNSW over the heads dominates the build: 32 candidate
        # heads (paper: 64; at most 8 replicas are kept either way) at efSearch 64
        index = create_dense_index("spann", DIM, SpannConfig(head_ratio=0.06, precision="float16",
                                                             candidate_heads=32, hnsw_ef_search=64))
        index.add(np.arange(n), x)
        index.build()
        index.save(out)
    elif method in OUR_PQ:
        # The shipped defaults (IVF-residual, 20 OPQ iterations, a 100k training sample of which
        # faiss's OPQ keeps 65,536, nlist 4,000, nprobe 32): timed on 1 thread at 1M, OPQ training
        # took ~60 s and the coarse k-means ~30 s, so nothing is cut down. (Before the build
        # encoded in batches, it held rotated and residual copies of all rows and faiss's 6 GiB
        # distance tables for M=24: peak RSS 9.1 / 13.5 GiB; see the report.) "rq": the
        # residual quantiser at the same code bytes
        index = create_dense_index("pq", DIM, PQConfig(**OUR_PQ[method]))
        index.add(np.arange(n), x)
        index.build()
        index.save(out)
    elif method == "ivfflat":
        faiss.write_index(_faiss_train_add(f"IVF{nlist_for(n)},Flat", x), str(out / "index.faiss"))
    elif method == "ivfondisk":  # IVF-Flat's quantiser and lists, the lists moved into one mmapped file
        ivf = faiss.read_index(str(work / "ivfflat" / "index.faiss"))
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(out / "lists.ivfdata"))
        lists = faiss.InvertedListsPtrVector()
        lists.push_back(ivf.invlists)
        ondisk.merge_from_multiple(lists.data(), lists.size())
        ivf.ntotal = ondisk.compute_ntotal()
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()
        faiss.write_index(ivf, str(out / "index.faiss"))
    elif method == "ivfpqfs":
        faiss.write_index(_faiss_train_add(f"IVF{nlist_for(n)},PQ48x4fs,RFlat", x), str(out / "index.faiss"))
    elif method == "hnsw":
        faiss.write_index(_faiss_train_add("HNSW32,Flat", x), str(out / "index.faiss"))
    seconds = time.perf_counter() - start
    if method == "ivfondisk":  # it reuses IVF-Flat's training and adds: count those too
        seconds += json.loads((work / "ivfflat" / "build.json").read_text())["build_s"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (out / "build.json").write_text(json.dumps({"build_s": seconds, "peak_rss_bytes": peak}))


# ---- measure ---------------------------------------------------------------------------------
def rss() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def load_average() -> float:
    """The machine's 1-minute load average (other people's jobs included): latencies carry it."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_pages(path: Path) -> int | None:
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return int(out[0]) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class Method:
    """Loads one built method from disk; search(q, k) -> ids; set(params); drop() evicts its
    on-disk data from the page cache (returns the file it evicted)."""

    def __init__(self, work: Path, method: str) -> None:
        self.work, self.method, self.dir = work, method, work / method
        self.ours = method == "spann" or method in OUR_PQ
        self._load()

    def _load(self) -> None:
        import faiss

        if self.ours:
            from index.dense import load_dense_index

            self.index = load_dense_index("spann" if self.method == "spann" else "pq", self.dir)
        elif self.method == "ivfondisk":
            self.index = faiss.read_index(str(self.dir / "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
        else:
            self.index = faiss.read_index(str(self.dir / "index.faiss"))

    def set(self, params: dict) -> None:
        import dataclasses

        import faiss

        self.params = params
        if self.ours:
            self.index.config = dataclasses.replace(self.index.config, **params)
        else:
            space = faiss.ParameterSpace()
            for key, value in params.items():
                space.set_index_parameter(self.index, key, value)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        if not self.ours:
            return self.index.search(q, k)[1]
        out = np.full((len(q), k), -1, dtype=np.int64)
        for row, hits in enumerate(self.index.search(q, k)):
            out[row, : len(hits.ids)] = hits.ids
        return out

    def drop(self) -> Path:
        """Evict the on-disk part from the page cache (unmap first: mapped pages stay cached)."""
        if self.method == "spann":
            self.index._postings.drop_cache()
            return self.index._postings.path
        if self.method == "ivfondisk":
            self.index = None
            gc.collect()
            evict(self.dir / "lists.ivfdata")
            self._load()
            self.set(self.params)
            return self.dir / "lists.ivfdata"
        path = self.dir / "pq_vectors.npy"  # our PQ: the float vectors (read by the re-rank)
        self.index._vectors = None
        gc.collect()
        evict(path)
        self.index._vectors = np.load(path, mmap_mode="r")
        return path


def measure(work: Path, method: str, n_lat: int, n_cold: int) -> None:
    import faiss

    if method == "spann":  # warm numba's JIT (a fixed per-process cost) before the baseline
        from index.spann import SpannConfig, SpannIndex

        tiny = SpannIndex(DIM, SpannConfig(min_build=256))
        r = np.random.default_rng(0).normal(size=(600, DIM)).astype(np.float32)
        tiny.add(np.arange(600), r / np.linalg.norm(r, axis=1, keepdims=True))
        tiny.search(r[:4], 10), tiny.search(r[:1], 10)
        del tiny
    q, truth = np.load(work / "q.npy"), np.load(work / "truth.npy")
    raw = int(np.load(work / "x.npy", mmap_mode="r").nbytes)
    gc.collect()
    base = rss()
    m = Method(work, method)
    loaded = rss()
    disk = sum(p.stat().st_size for p in m.dir.iterdir() if p.is_file() and p.name != "build.json")
    built = json.loads((m.dir / "build.json").read_text())
    rows = []
    for params in SWEEPS[method]:
        load_before = load_average()
        m.set(params)
        faiss.omp_set_num_threads(1)
        found = m.search(q, 10)  # also warms the caches
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        lat = []
        for row in q[:n_lat]:
            start = time.perf_counter()
            m.search(row[None, :], 10)
            lat.append(time.perf_counter() - start)
        faiss.omp_set_num_threads(2)
        start = time.perf_counter()
        m.search(q, 10)
        qps = len(q) / (time.perf_counter() - start)
        faiss.omp_set_num_threads(1)
        warm = rss()
        result = {"method": method, "label": LABELS[method], "params": params, "recall@10": recall,
                  "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
                  "qps_2threads": qps, "rss_anon_MiB": (warm["RssAnon"] - base["RssAnon"]) / 2**20,
                  "rss_file_MiB": (warm["RssFile"] - base["RssFile"]) / 2**20,
                  "rss_after_load_MiB": (loaded["VmRSS"] - base["VmRSS"]) / 2**20,
                  "rss_anon_%raw": 100 * (warm["RssAnon"] - base["RssAnon"]) / raw,
                  "disk_MiB": disk / 2**20, "build_s": built["build_s"],
                  "build_peak_rss_MiB": built["peak_rss_bytes"] / 2**20, "n": len(np.load(work / "x.npy", mmap_mode="r"))}
        if method == "spann":  # the structure: pruning, head count vs target, posting sizes
            index = m.index
            d, h = index._heads.search(q, min(params["search_heads"], len(index._head_rows)))
            counts = index._postings.count
            result.update(pruned_share=float((index.prune(d, h) < 0).mean()), dist_ratio=index.dist_ratio,
                          heads=int(len(index._head_rows)), heads_target=int(np.ceil(index.config.head_ratio * result["n"])),
                          posting_mean=float(counts.mean()), posting_std_over_mean=float(counts.std() / counts.mean()),
                          replicas_per_vector=float(counts.sum() / max(result["n"] - len(index._head_rows), 1)))
        if method in ON_DISK and (method == "spann" or params.get("rerank") or method == "ivfondisk"):
            cold, resident = [], []
            for row in q[:n_cold]:
                path = m.drop()
                resident.append(resident_pages(path))
                start = time.perf_counter()
                m.search(row[None, :], 10)
                cold.append(time.perf_counter() - start)
            result.update(cold_p50_ms=1e3 * float(np.percentile(cold, 50)),
                          cold_p99_ms=1e3 * float(np.percentile(cold, 99)),
                          cold_resident_bytes_before=max((r for r in resident if r is not None), default=None))
        result.update(measured_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                      load_1m=[load_before, load_average()])
        rows.append(result)
        print(json.dumps(result), flush=True)
    (m.dir / "measure.json").write_text(json.dumps(rows))


# ---- report ---------------------------------------------------------------------------------
def _ivf_reference(spann_row: dict, ivf_rows: list[dict]) -> dict | None:
    """IVF-Flat's fastest setting at SPANN's recall@10 or better (0.005 tolerance), or None."""
    match = [i for i in ivf_rows if i["recall@10"] >= spann_row["recall@10"] - 0.005]
    return min(match, key=lambda i: i["p50_ms"]) if match else None


def _rounds(work: Path) -> tuple[list[dict], list[str]]:
    """SPANN / IVF-Flat p50 ratios over the alternating rounds `measure --rounds N` kept
    (measure.round<i>.json): one round's ratio carries that minute's load, the spread shows it."""
    rounds = []
    for i in range(1, 1000):
        paths = [work / m / f"measure.round{i}.json" for m in ("spann", "ivfflat")]
        if not all(path.exists() for path in paths):
            break
        spann, ivf = (json.loads(path.read_text()) for path in paths)
        rounds.append({"round": i, "spann": [{k: r.get(k) for k in ("params", "recall@10", "p50_ms", "load_1m", "measured_utc")}
                                             for r in spann],
                       "ivfflat": [{k: r.get(k) for k in ("params", "recall@10", "p50_ms", "load_1m", "measured_utc")}
                                   for r in ivf]})
    if not rounds:
        return [], []
    loads = [x for rnd in rounds for r in rnd["spann"] + rnd["ivfflat"] for x in (r["load_1m"] or [])]
    lines = [f"### SPANN vs faiss IVF-Flat over {len(rounds)} alternating rounds (SPANN, then IVF-Flat, "
             f"each in a fresh process; 1-min load {min(loads):.1f}-{max(loads):.1f})", "",
             "| SPANN params | recall@10 | SPANN p50 ms per round | IVF-Flat reference p50 ms per round "
             "| ratio min / median / max | rounds within 2x |", "|---|---|---|---|---|---|"]
    for j, first in enumerate(rounds[0]["spann"]):
        pairs = []
        for rnd in rounds:
            r = rnd["spann"][j]
            ref = _ivf_reference(r, rnd["ivfflat"])
            pairs.append((r["p50_ms"], ref["p50_ms"] if ref else None))
        ratios = [a / b for a, b in pairs if b]
        lines.append(f"| {first['params']} | {first['recall@10']:.3f} | {', '.join(f'{a:.3f}' for a, _ in pairs)} "
                     f"| {', '.join(f'{b:.3f}' if b else '-' for _, b in pairs)} "
                     f"| {min(ratios):.2f} / {float(np.median(ratios)):.2f} / {max(ratios):.2f} "
                     f"| {sum(x <= 2.0 for x in ratios)} of {len(ratios)} |" if ratios else
                     f"| {first['params']} | {first['recall@10']:.3f} | - | - | no IVF-Flat point reaches this recall | - |")
    return rounds, lines + [""]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _pq_goal(r: dict) -> str:
    """One PQ goal line: codes alone or re-ranked, the loss with its 95% CI, and whether the CI
    settles the 1-point goal. E.g. loss 0.84 [-0.11, 1.85] -> "CI contains 1: not settled"."""
    mode = "with exact re-rank" if r.get("reranked", r["params"].get("rerank")) else "codes alone"
    loss, ci = r["ndcg_loss_pts"], r.get("loss_ci95")
    if not ci:
        verdict = "MET" if loss <= 1.0 else "MISSED"
    elif ci[1] <= 1.0:
        verdict = "MET (whole CI <= 1)"
    elif ci[0] > 1.0:
        verdict = "MISSED (whole CI > 1)"
    else:
        verdict = f"CI contains 1: not settled (point {'below' if loss <= 1.0 else 'above'})"
    ci_text = f" [95% CI {ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    seed = f", seed {r['seed']}" if r.get("seed") else ""
    return f"- {r['method']} {r['params']}{seed}, {mode}: NDCG@10 loss {loss:.2f} points{ci_text} -> {verdict} (goal <= 1)"


def _devdocs_section(d: dict) -> list[str]:
    """The real-text PQ table and goal lines of one devdocs_pq*.json (static or MiniLM run)."""
    corpus = f"{d['chunks']:,} chunks"
    if "pages" in d:
        corpus += f" of {d['pages']:,} pages (first {d['chunks_per_page']} x 1,000 chars per page)"
    embedder = d.get("collection", "static embedder")
    text = [f"### Real text: full devdocs corpus, {corpus}, {embedder} {d['dim']}-d, "
            f"{d['questions']} DS-1000/ODEX questions; exact NDCG@10 = {d['exact_ndcg@10']:.4f}", "",
            "| method | params | code bytes | compression | NDCG@10 | loss (points) | recall@10 vs exact "
            "| batch ms/query | memory MiB | memory % raw | disk MiB | build s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        seed = f" (seed {r['seed']})" if r.get("seed") else ""
        text.append(f"| {r['method']}{seed} | {r['params']} | {_fmt(r['bytes_per_vector'])} | {_fmt(r['compression'])} "
                    f"| {r['ndcg@10']:.4f} | {r['ndcg_loss_pts']:.2f} | {r['recall@10']:.3f} "
                    f"| {_fmt(r.get('batch_ms_per_query'))} | {_fmt(r.get('memory_MiB'))} | {_fmt(r.get('memory_%raw'))} "
                    f"| {_fmt(r.get('disk_MiB'))} | {_fmt(r.get('build_s'))} |")
    # ours only (not the exact reference, not faiss's fastscan row)
    text += ["", "### Goals (PQ)", ""] + [_pq_goal(r) for r in d["rows"]
                                         if r["method"] != "exact" and not r["method"].startswith("faiss")]
    return text + [""]


def report(work: Path, out: Path, devdocs: list[Path] = ()) -> str:
    """Tables + goal checks (markdown) from every measure.json under `work` and each devdocs_pq*.json
    in `devdocs`; results_scale.json (each devdocs file under its stem) beside."""
    rows = []
    for method in METHODS:
        path = work / method / "measure.json"
        if path.exists():
            rows += json.loads(path.read_text())
    n = rows[0]["n"] if rows else 0
    lines = ["| method | params | recall@10 | warm p50 ms | warm p99 ms | cold p50 ms | cold p99 ms | QPS (2 thr) "
             "| RSS anon MiB | RSS anon % raw | RSS file MiB | disk MiB | build s | build peak RSS MiB "
             "| measured UTC (load 1-min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # rows measured before the load was recorded come from an earlier round (see the report)
        when = (f"{r['measured_utc']} ({r['load_1m'][0]:.1f}-{r['load_1m'][1]:.1f})" if "measured_utc" in r
                else "earlier round")
        lines.append(f"| {r['label']} | {r['params']} | {r['recall@10']:.3f} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
                     f"| {_fmt(r.get('cold_p50_ms'))} | {_fmt(r.get('cold_p99_ms'))} | {_fmt(r['qps_2threads'])} "
                     f"| {_fmt(r['rss_anon_MiB'])} | {_fmt(r['rss_anon_%raw'])} | {_fmt(r['rss_file_MiB'])} "
                     f"| {_fmt(r['disk_MiB'])} | {_fmt(r['build_s'])} | {_fmt(r['build_peak_rss_MiB'])} | {when} |")
    goals = []
    ivf = [r for r in rows if r["method"] == "ivfflat"]
    for r in (r for r in rows if r["method"] == "spann"):
        ok = r["recall@10"] >= 0.90 and r["p50_ms"] <= 2.0 and r["rss_anon_%raw"] <= 10.0
        ref = _ivf_reference(r, ivf)
        ratio = f"{r['p50_ms'] / ref['p50_ms']:.2f}x faiss IVF-Flat {ref['params']} (recall {ref['recall@10']:.3f}, " \
                f"p50 {ref['p50_ms']:.3f} ms)" if ref else "no IVF-Flat point reaches this recall"
        goals.append(f"- SPANN {r['params']}: recall@10 {r['recall@10']:.3f}, warm p50 {r['p50_ms']:.2f} ms, "
                     f"cold p50 {_fmt(r.get('cold_p50_ms'))} ms, RSS anon {r['rss_anon_%raw']:.1f}% of raw -> "
                     f"{'MET' if ok else 'MISSED'} (>= 0.90 at <= 2 ms with <= 10% RAM); latency {ratio} "
                     f"(goal <= 2x: {'MET' if ref and r['p50_ms'] <= 2 * ref['p50_ms'] else 'MISSED'})")
    rounds, round_lines = _rounds(work)
    text = [f"### Synthetic, N = {n:,} x {DIM} (float32 raw = {n * DIM * 4 / 2**20:,.0f} MiB)", "", *lines, "",
            "### Goals (synthetic)", "", *goals, "", *round_lines]
    results = {"synthetic": rows}
    if rounds:
        results["spann_vs_ivfflat_rounds"] = rounds
    for path in devdocs:
        d = json.loads(path.read_text())
        results[path.stem] = d
        text += _devdocs_section(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_scale.json").write_text(json.dumps(results, indent=1))
    return "\n".join(text) + "\n"


# ---- driver ----------------------------------------------------------------------------------
def _child(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-m", "eval_suites.ann_bench.scale", *args], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites.ann_bench.scale")
    parser.add_argument("phase", choices=("all", "data", "build", "measure", "report"))
    parser.add_argument("methods", nargs="*", default=list(METHODS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/codehop-annscale"))
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--n-lat", type=int, default=200)
    parser.add_argument("--n-cold", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure: repeat the methods alternately; each round kept as measure.round<i>.json")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/ann_bench"))
    parser.add_argument("--devdocs", type=Path, action="append", default=[],
                        help="a devdocs_pq*.json to include in the report (repeatable)")
    args = parser.parse_args(argv)
    if args.phase == "report":
        (args.out / "scale_tables.md").write_text(report(args.work, args.out, args.devdocs))
        return 0
    if args.phase == "data":
        make_data(args.work, args.n, args.n_queries)
    elif args.phase == "build":
        for method in args.methods:
            if not (args.work / method / "build.json").exists():
                build(args.work, method)
    elif args.phase == "measure" and len(args.methods) == 1 and args.rounds == 1:
        measure(args.work, args.methods[0], args.n_lat, args.n_cold)
    elif args.phase == "measure":  # each method in a fresh process, alternating within each round
        for i in range(1, args.rounds + 1):
            for method in args.methods:
                _child(["measure", method, "--work", str(args.work), "--n-lat", str(args.n_lat), "--n-cold", str(args.n_cold)])
                if args.rounds > 1:
                    shutil.copyfile(args.work / method / "measure.json", args.work / method / f"measure.round{i}.json")
    else:
        _child(["data", "--work", str(args.work), "--n", str(args.n), "--n-queries", str(args.n_queries)])
        for method in args.methods:
            if not (args.work / method / "build.json").exists():
                _child(["build", method, "--work", str(args.work)])
            _child(["measure", method, "--work", str(args.work), "--n-lat", str(args.n_lat), "--n-cold", str(args.n_cold)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
