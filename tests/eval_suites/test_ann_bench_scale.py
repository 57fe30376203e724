"""ann_bench.scale report: the synthetic rows stay, each devdocs file gets its section, and the PQ
goal lines say codes alone or re-ranked and whether the loss's CI settles the 1-point goal."""

from __future__ import annotations

import json

from eval_suites.ann_bench.scale import report


def _row(method: str, params: dict, **extra) -> dict:
    return {"method": method, "label": method, "params": params, "recall@10": 0.5, "p50_ms": 0.3, "p99_ms": 0.6,
            "qps_2threads": 1000.0, "rss_anon_MiB": 100.0, "rss_anon_%raw": 7.0, "rss_file_MiB": 5.0,
            "disk_MiB": 1500.0, "build_s": 200.0, "build_peak_rss_MiB": 7000.0, "n": 1000, **extra}


def _pq(method: str, params: dict, loss: float, ci: list[float] | None, reranked: bool) -> dict:
    row = {"method": method, "params": params, "bytes_per_vector": 48, "compression": 32.0, "ndcg@10": 0.2,
           "ndcg_loss_pts": loss, "recall@10": 0.7, "reranked": reranked}
    return {**row, "loss_ci95": ci} if ci is not None else row


def test_report_keeps_rows_and_qualifies_pq_goals(tmp_path):
    work = tmp_path / "work"
    for method, rows in {"spann": [_row("spann", {"search_heads": 8})], "ivfflat": [_row("ivfflat", {"nprobe": 1})],
                         "opq48": [_row("opq48", {"nprobe": 32, "rerank": True}, cold_p50_ms=2.0)]}.items():
        (work / method).mkdir(parents=True)
        (work / method / "measure.json").write_text(json.dumps(rows))
    devdocs = tmp_path / "devdocs_pq_minilm.json"
    devdocs.write_text(json.dumps({"chunks": 100, "dim": 384, "questions": 10, "exact_ndcg@10": 0.2, "rows": [
        _pq("exact", {}, 0.0, [0.0, 0.0], False),
        _pq("OPQ 32x", {"nprobe": 32}, 1.27, [0.24, 2.35], False),
        _pq("OPQ 32x", {"nprobe": 32, "rerank": True}, 0.44, [0.07, 0.89], True),
        _pq("OPQ 64x", {"nprobe": 32}, 5.39, [3.91, 6.85], False),
        _pq("OPQ 64x old", {"nprobe": 32}, 0.9, None, False),
        _pq("faiss OPQ fastscan", {"nprobe": 32}, 2.6, [1.3, 4.1], False)]}))
    text = report(work, tmp_path / "out", [devdocs])
    assert text.count("| spann |") == text.count("| ivfflat |") == text.count("| opq48 |") == 1
    goals = text.split("### Goals (PQ)")[1].strip().splitlines()
    assert goals == [
        "- OPQ 32x {'nprobe': 32}, codes alone: NDCG@10 loss 1.27 points [95% CI 0.24, 2.35] -> "
        "CI contains 1: not settled (point above) (goal <= 1)",
        "- OPQ 32x {'nprobe': 32, 'rerank': True}, with exact re-rank: NDCG@10 loss 0.44 points "
        "[95% CI 0.07, 0.89] -> MET (whole CI <= 1) (goal <= 1)",
        "- OPQ 64x {'nprobe': 32}, codes alone: NDCG@10 loss 5.39 points [95% CI 3.91, 6.85] -> "
        "MISSED (whole CI > 1) (goal <= 1)",
        "- OPQ 64x old {'nprobe': 32}, codes alone: NDCG@10 loss 0.90 points -> MET (goal <= 1)"]
    results = json.loads((tmp_path / "out" / "results_scale.json").read_text())
    assert len(results["synthetic"]) == 3 and results["devdocs_pq_minilm"]["chunks"] == 100
