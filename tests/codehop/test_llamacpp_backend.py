"""Bring your own model against llama.cpp's real server (xllamacpp serving the shipped SmolLM2
GGUF; a second instance embeds): what a user runs (`codehop index/search/ask/complete/agent`,
the REST API) with `[generator]` and `[embedding]` pointed at it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
DOCS = {
    "atomic.md": "# Atomic writes\nEvery index file is written to a temporary name, fsynced and renamed "
                 "into place, so a crash never leaves a half-written index.\n",
    "bm25.md": "# BM25\nBM25 scores a document by term frequency saturated by k1 and length-normalised "
               "by b; deleted documents lose their postings.\n",
    "fusion.md": "# Hybrid search\nReciprocal rank fusion adds 1 / (60 + rank) over the BM25 and the "
                 "dense ranking of every chunk.\n",
    "reservoir.md": "# Reservoir\nAnswers whose passages pass the knowledge filter are kept in a "
                    "reservoir and reused for the same question later.\n",
    "walk.md": "# Walking a directory\nHidden, ignored, vendored and build entries are left out when "
               "a directory is indexed.\n",
}
QUESTIONS = ["How are index writes made atomic?", "How does BM25 score a document?",
             "What does reciprocal rank fusion add?", "What is kept in the reservoir?",
             "Which entries are left out when a directory is indexed?"]
CODE = "def add(a, b):\n    return a + b\n\n\ndef total(values):\n    result = 0\n    return result\n"


def codehop(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codehop", *args], cwd=cwd, env=ENV, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory, llamacpp_url, llamacpp_embedding_url):
    """Docs, a small repository and a codehop.toml pointing both models at llama.cpp; the
    docs are indexed (embedded by the llama.cpp embedding server) once for the module."""
    root = tmp_path_factory.mktemp("llamacpp-client")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    (root / "repo").mkdir()
    (root / "repo" / "calc.py").write_text(CODE)
    (root / "codehop.toml").write_text(f"""
[generator]
backend = "openai"
base_url = "{llamacpp_url}"
model = "smollm2"
max_new_tokens = 96

[embedding]
backend = "openai"
base_url = "{llamacpp_embedding_url}"
model = "smollm2-embed"
""")
    indexed = codehop("--config", "codehop.toml", "index", "docs", "--no-progress", cwd=root)
    assert indexed.returncode == 0, indexed.stderr
    return root


def test_embeddings_from_llamacpp_fill_a_collection(client_dir):
    found = codehop("--config", "codehop.toml", "search", "atomic rename fsync", "--mode", "dense", "--json",
                    cwd=client_dir)
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert len(results) == len(DOCS) and {Path(r["path"]).name for r in results} == set(DOCS)


def test_another_embedder_in_the_settings_is_refused_for_dense_search_only(client_dir):
    # No codehop.toml in the working folder: the settings name the shipped MiniLM, the collection holds llama.cpp's vectors.
    for command in (["search", "atomic", "--mode", "dense"], ["ask", "atomic?", "--retrieval-only"]):
        refused = codehop(*command, "--workspace", str(client_dir / ".codehop"), cwd=client_dir / "repo")
        assert refused.returncode == 8, refused.stderr
        assert "openai:smollm2-embed" in refused.stderr and "codehop index --rebuild" in refused.stderr
        assert "[embedding] model = 'smollm2-embed'" in refused.stderr
    lexical = codehop("search", "atomic", "--mode", "bm25", "--workspace", str(client_dir / ".codehop"), "--json",
                      cwd=client_dir / "repo")
    assert lexical.returncode == 0 and json.loads(lexical.stdout)["results"], lexical.stderr


def test_ask_streams_and_answers_as_json_with_small_model_stages(client_dir):
    streamed = codehop("--config", "codehop.toml", "ask", QUESTIONS[0], "--no-reservoir", cwd=client_dir)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.split("Sources:")[0].strip() not in ("", "(empty answer)")
    # The 135M model failed the capability probe: the small-model stages ran, not the LLM ones.
    assert "failed the instruction probe" in streamed.stderr and "rewrite (llm)" not in streamed.stderr
    assert "filter (embedding-threshold)" in streamed.stderr
    answered = codehop("--config", "codehop.toml", "ask", QUESTIONS[1], "--no-reservoir", "--json", cwd=client_dir)
    assert answered.returncode == 0, answered.stderr
    result = json.loads(answered.stdout)
    stages = {s["name"]: s for s in result["stages"]}
    assert result["answer"].strip() and stages["filter"]["detail"]["method"] != "llm-nli"


def test_complete_falls_back_to_the_prefix_with_the_servers_reason(client_dir):
    done = codehop("--config", "codehop.toml", "complete", "repo/calc.py", "--line", "6", "--col", "15",
                   "--repo", "repo", "--no-rerank", "--json", cwd=client_dir)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["fim"] is False and "/infill answered 501" in result["note"]


def test_agent_turns_are_schema_constrained_and_counted_by_the_server(client_dir):
    ran = codehop("--config", "codehop.toml", "agent", "Where is the function add defined?", "--repo", "repo",
                  "--max-steps", "1", "--json", cwd=client_dir)
    assert ran.returncode == 0, ran.stderr
    step = json.loads(ran.stdout)["steps"][0]
    assert isinstance(json.loads(step["raw_output"]), dict)  # the schema held: one JSON object
    assert step["generated_tokens"] > 0 and step["prompt_tokens"] > 100  # server usage, llama.cpp counts


def test_rest_relays_the_servers_usage(client_dir, llamacpp_url):
    from fastapi.testclient import TestClient

    from codehop.config import load_settings
    from codehop.rest import create_app

    settings = load_settings(client_dir / "codehop.toml")
    with TestClient(create_app(settings, workspace=client_dir / "rest-ws", roots=[])) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": "smollm2", "max_tokens": 5, "messages": [{"role": "user", "content": "Name a fruit."}]})
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["completion_tokens"] == 5 and usage["total_tokens"] == usage["prompt_tokens"] + 5
        done = client.post("/v1/completions", json={"model": "smollm2", "prompt": "def add(a, b):\n    return",
                                                    "suffix": "\n\nprint(add(1, 2))", "max_tokens": 6})
        assert done.status_code == 200, done.text
        assert done.headers["x-codehop-fim"] == "false" and "501" in done.json()["codehop_note"]
    # The REST API checks the embedder too: default settings on the llama.cpp-embedded workspace.
    with TestClient(create_app(workspace=client_dir / ".codehop", roots=[])) as client:
        searched = client.post("/v1/search", json={"query": "atomic", "mode": "dense"})
        assert searched.status_code == 409 and "--rebuild" in searched.json()["error"]["message"]


def repeated_ngrams(text: str, n: int = 8, times: int = 3) -> list[tuple[str, ...]]:
    """Word n-grams that occur at least `times` times. "a b a b a b", n=2, times=3 -> [("a", "b")]"""
    words = text.split()
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return [gram for gram, count in counts.items() if count >= times]


def test_answers_do_not_loop_with_llamacpps_repetition_control(client_dir):
    from codehop.config import load_settings
    from codehop.model_setup import load_configured_generator, open_collection
    from rag.pipeline import PipelineConfig, RagPipeline

    settings = load_settings(client_dir / "codehop.toml")
    collection = open_collection(settings, client_dir / ".codehop", "default")
    generator = load_configured_generator(settings)
    pipeline = RagPipeline(collection, generator, PipelineConfig(k=3, reservoir=False, max_new_tokens=256))
    for question in QUESTIONS:
        answer = pipeline.run(question).answer
        assert answer.strip() and not repeated_ngrams(answer), (question, answer)
