"""codehop.rest through the real app (TestClient) over a small real collection (MiniLM)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from codehop.config import ServerSettings, Settings
from codehop.rest import create_app, get_generator, get_treehop
from rag.treehop import TreeHopConfig, TreeHopModel, TreeHopRetriever

pytestmark = pytest.mark.slow  # loads MiniLM

SOURCE = '''"""Geometry helpers."""


def area_of_circle(radius):
    """Area of a circle of the given radius."""
    return 3.14159 * radius * radius


def perimeter_of_square(side):
    return 4 * side
'''

NOTES = "# Deployment notes\n\nThe zebra service listens on port 9000 behind nginx.\n"


def wait(client: TestClient, job: dict, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = client.get(f"/v1/jobs/{job['id']}").json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("rest")
    root = base / "root"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "geometry.py").write_text(SOURCE)
    (root / "notes.md").write_text(NOTES)
    (base / "secret.txt").write_text("outside the roots")
    (root / "escape.txt").symlink_to(base / "secret.txt")
    app = create_app(Settings(), workspace=base / "ws", roots=[root], repo_root=root)
    with TestClient(app) as client:
        assert client.post("/v1/collections", json={"name": "default"}).status_code == 201
        job = client.post("/v1/collections/default/documents", json={
            "files": ["pkg", str(root / "notes.md")],
            "texts": [{"text": "Penguins live in Antarctica and eat krill.", "path": "penguins",
                       "metadata": {"source": "wiki"}}],
        }).json()
        state = wait(client, job)
        assert state["status"] == "done", state
        yield client, root, base


def test_health_and_openapi(env):
    client, _, base = env
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["collections"] == ["default"]
    schema = client.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/collections", "/v1/collections/{name}/documents",
                 "/v1/jobs/{job_id}", "/v1/embeddings", "/v1/completions", "/v1/chat/completions"):
        assert path in schema["paths"], path
    # request models carry their limits into the schema
    search = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert search["k"]["maximum"] == 100 and search["query"]["maxLength"] == 4000


def test_health_shows_the_scan_phase(tmp_path):
    from index import Collection
    from index.background import DenseFiller

    tree = tmp_path / "tree"
    tree.mkdir()
    for name in "abcd":
        (tree / f"{name}.txt").write_text(f"File {name}.\n\nSecond paragraph of {name}.")
    reached, release = threading.Event(), threading.Event()

    def chunker(path, text):  # the built-in chunkers, but b.txt waits until /health was read
        if path.endswith("b.txt"):
            reached.set()
            assert release.wait(30)
        return None

    def start(resources):  # what codehop serve's background start does, with that chunker
        Collection.open(tmp_path / "ws").close()
        collection = resources.collection("default")
        resources.indexing["default"] = DenseFiller(
            collection, write_lock=resources.lock("default").write,
            scan=lambda report: collection.add_paths([tree], chunker=chunker, progress=False,
                                                     defer_dense=True, on_scan=report)).start()

    with TestClient(create_app(Settings(), workspace=tmp_path / "ws", roots=[tree], background=start)) as client:
        assert reached.wait(30)
        status = client.get("/health").json()["indexing"]["default"]
        assert status["state"] == "scanning" and (status["files_done"], status["files_total"]) == (1, 4)
        assert status["files_chunks"] == 1 and status["chunks_total"] == 0  # a.txt: one passage, not committed yet
        client.app.state.resources.indexing["default"].stop(wait=False)  # ends the scan at the next file
        release.set()
    assert client.app.state.resources.indexing["default"].status()["state"] == "stopped"


def test_search_finds_files_and_texts(env):
    client, root, _ = env
    for mode in ("hybrid", "bm25", "dense"):
        body = client.post("/v1/search", json={"query": "area of a circle radius", "mode": mode,
                                               "k": 3}).json()
        assert body["results"], mode
        assert body["results"][0]["path"].endswith("geometry.py"), (mode, body)
    text = client.post("/v1/search", json={"query": "penguins krill"}).json()["results"][0]
    assert text["path"] == "penguins" and text["metadata"]["source"] == "wiki"


def test_search_group_by_document(env):
    client, root, _ = env
    query = {"query": "circle area radius zebra penguins", "k": 20, "mode": "bm25"}
    chunks = [r["path"] for r in client.post("/v1/search", json=query).json()["results"]]
    grouped = client.post("/v1/search", json={**query, "group_by": "document"}).json()["results"]
    firsts = list(dict.fromkeys(chunks))  # each document where its best chunk ranks
    paths = [r["path"] for r in grouped]
    assert len(paths) == len(set(paths)) and paths[: len(firsts)] == firsts
    bad = client.post("/v1/search", json={**query, "group_by": "file"})
    assert bad.status_code == 422


def test_search_filters(env):
    client, root, _ = env
    prefix = str(root / "notes")
    body = client.post("/v1/search", json={"query": "circle zebra penguins", "k": 5,
                                           "filters": {"path_prefix": prefix}}).json()
    assert body["results"] and all(r["path"].startswith(prefix) for r in body["results"])
    body = client.post("/v1/search", json={"query": "area circle", "k": 5,
                                           "filters": {"kind": "text"}}).json()
    assert body["results"] and all(r["metadata"]["kind"] == "text" for r in body["results"])


def test_collection_lifecycle(env):
    client, _, _ = env
    assert client.post("/v1/collections", json={"name": "tmp1"}).status_code == 201
    again = client.post("/v1/collections", json={"name": "tmp1"})
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    names = [c["name"] for c in client.get("/v1/collections").json()]
    assert {"default", "tmp1"} <= set(names)
    info = client.get("/v1/collections/default").json()  # how search ranks, and why
    assert info["context"] is True and info["fusion"]["method"] == "convex"
    assert 0 <= info["fusion"]["dense_weight"] <= 1 and info["fusion"]["source"] in ("prior", "pseudo-queries")
    assert client.delete("/v1/collections/tmp1").status_code == 204
    missing = client.get("/v1/collections/tmp1")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
    assert client.post("/v1/collections", json={"name": "../x"}).status_code == 422


def test_update_and_delete_document(env):
    client, _, _ = env
    job = client.post("/v1/collections/default/documents",
                      json={"texts": [{"text": "The quokka is a small marsupial.", "path": "q"}]})
    assert wait(client, job.json())["status"] == "done"
    docs = client.get("/v1/collections/default/documents", params={"limit": 1000}).json()
    doc = next(d for d in docs["documents"] if d["path"] == "q")
    job = client.put(f"/v1/collections/default/documents/{doc['id']}",
                     json={"text": "The axolotl regrows its limbs."})
    assert job.status_code == 202 and wait(client, job.json())["status"] == "done"
    hits = client.post("/v1/search", json={"query": "axolotl limbs", "mode": "bm25"}).json()
    assert hits["results"][0]["path"] == "q"
    assert not client.post("/v1/search", json={"query": "quokka", "mode": "bm25"}).json()["results"]
    job = client.delete(f"/v1/collections/default/documents/{doc['id']}")
    assert wait(client, job.json())["status"] == "done"
    assert not client.post("/v1/search", json={"query": "axolotl", "mode": "bm25"}).json()["results"]
    assert client.delete(f"/v1/collections/default/documents/{doc['id']}").status_code == 404


def test_reindex_picks_up_changed_file(env):
    client, root, _ = env
    path = root / "notes.md"
    original = path.read_text()
    try:
        path.write_text(original + "\nThe walrus cache expires hourly.\n")
        job = client.post("/v1/collections/default/reindex", json={})
        state = wait(client, job.json())
        assert state["status"] == "done" and state["result"]["updated"] == 1, state
        hits = client.post("/v1/search", json={"query": "walrus cache", "mode": "bm25"}).json()
        assert hits["results"][0]["path"] == str(path)
    finally:
        path.write_text(original)


@pytest.mark.parametrize("given, status", [
    ("../secret.txt", 403), ("/etc/passwd", 403), ("escape.txt", 403), ("pkg/../../secret.txt", 403),
    ("missing.py", 404),
])
def test_paths_outside_roots_are_refused(env, given, status):
    client, _, _ = env
    response = client.post("/v1/collections/default/documents", json={"files": [given]})
    assert response.status_code == status, response.json()
    if status == 403:
        assert "outside the configured roots" in response.json()["error"]["message"]


@pytest.mark.parametrize("body, status", [
    ({"query": "   "}, 422),
    ({"query": "x", "k": 0}, 422),
    ({"query": "x", "k": 101}, 422),
    ({"query": "x", "mode": "fuzzy"}, 422),
    ({"query": "x", "colour": "red"}, 422),
    ({"query": "x" * 4001}, 422),
    ({"query": "a\x00b"}, 422),
    ({"query": "x", "collection": "nope"}, 404),
])
def test_bad_search_requests(env, body, status):
    client, _, _ = env
    response = client.post("/v1/search", json=body)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_oversize_body_is_413(env):
    client, _, _ = env
    response = client.post("/v1/search", content=b'{"query": "' + b"x" * (11 << 20) + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_job_and_empty_add(env):
    client, _, _ = env
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.post("/v1/collections/default/documents", json={}).status_code == 422


def test_embeddings_are_normalised(env):
    client, _, _ = env
    body = client.post("/v1/embeddings", json={"input": ["hello world", "bonjour"]}).json()
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert client.post("/v1/embeddings", json={"input": "x", "model": "ada"}).status_code == 404
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 422


def test_metrics_count_requests_by_route(env):
    client, _, _ = env
    client.post("/v1/search", json={"query": "zebra port"})
    text = client.get("/metrics").text
    assert 'codehop_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'codehop_request_duration_seconds_bucket{method="POST",route="/v1/search",le="+Inf"}' in text
    # raw paths never become labels
    client.get("/v1/collections/nope-123")
    assert "nope-123" not in client.get("/metrics").text


def test_readers_run_while_one_writer_indexes(env):
    """Searches keep answering (200, consistent) while a job adds documents; nothing is lost."""
    client, _, _ = env
    texts = [{"text": f"Record number {i} about the lighthouse keeper.", "path": f"rec{i}"}
             for i in range(40)]
    job = client.post("/v1/collections/default/documents", json={"texts": texts}).json()
    failures: list = []
    counts: list[int] = []
    after: list[int] = []  # the results of searches that began once the job was done
    done = threading.Event()
    readers = 4

    def reader() -> None:  # reads until one of its searches began after the job was done
        while True:
            began_after = done.is_set()
            r = client.post("/v1/search", json={"query": "lighthouse keeper record", "k": 50,
                                                "mode": "bm25"})
            if r.status_code != 200:
                failures.append(r.json())
            else:
                found = len(r.json()["results"])
                counts.append(found)
                if began_after:
                    after.append(found)
            if began_after:
                return

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    for t in threads:
        t.start()
    state = wait(client, job)
    done.set()
    for t in threads:
        t.join(timeout=60)
    assert state["status"] == "done" and not failures
    # every snapshot is a whole generation: 0 records before the commit, 40 after; a search
    # that begins after the job is done sees all 40
    assert set(counts) <= {0, 40} and after == [40] * readers
    paths = {d["path"] for d in client.get("/v1/collections/default/documents",
                                           params={"limit": 1000}).json()["documents"]}
    assert {f"rec{i}" for i in range(40)} <= paths


def test_api_key(tmp_path):
    settings = Settings(server=ServerSettings(api_key="s3cret"))
    with TestClient(create_app(settings, workspace=tmp_path / "ws")) as client:
        assert client.get("/health").status_code == 200
        denied = client.get("/v1/collections")
        assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
        assert client.get("/v1/collections", headers={"x-api-key": "wrong"}).status_code == 401
        assert client.get("/v1/collections", headers={"authorization": "Bearer s3cret"}).json() == []
        assert client.get("/v1/collections", headers={"x-api-key": "s3cret"}).status_code == 200


def test_no_roots_means_no_files(tmp_path):
    with TestClient(create_app(Settings(), workspace=tmp_path / "ws", roots=[])) as client:
        client.post("/v1/collections", json={"name": "default"})
        response = client.post("/v1/collections/default/documents", json={"files": ["x.py"]})
        assert response.status_code == 403 and "no roots configured" in response.json()["error"]["message"]


# ---------------------------------------------------------------- generation (tiny model)


@pytest.fixture(scope="module")
def gen(env, tiny_llama):
    from rag.llm import TransformersGenerator

    client, root, _ = env
    generator = TransformersGenerator.from_model(*tiny_llama, name="tiny")
    client.app.dependency_overrides[get_generator] = lambda: generator
    yield client, generator, root
    client.app.dependency_overrides.clear()


def _events(response) -> list:
    lines = [line for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_openai_completion_matches_generator(gen):
    from rag.llm import GenerationConfig

    client, generator, _ = gen
    expected = generator.complete("def fib(n):", GenerationConfig(max_new_tokens=6)).text
    body = client.post("/v1/completions", json={"prompt": "def fib(n):", "max_tokens": 6}).json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert body["choices"][0]["text"] == expected
    assert body["usage"]["prompt_tokens"] == generator.count_tokens("def fib(n):")
    # no fill-in-the-middle format in this vocabulary: the prefix is completed, and we say so
    fim = client.post("/v1/completions", json={"prompt": "def fib(n):", "suffix": "\n  return",
                                               "max_tokens": 6})
    assert fim.headers["x-codehop-fim"] == "false" and fim.json()["choices"][0]["text"] == expected
    streamed = client.post("/v1/completions", json={"prompt": "def fib(n):", "max_tokens": 6,
                                                    "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed)
    assert "".join(e["choices"][0]["text"] for e in events) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert client.post("/v1/completions", json={"prompt": "x", "model": "gpt-4"}).status_code == 404
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 0}).status_code == 422
    too_long = client.post("/v1/completions", json={"prompt": "hello " * 5000})
    assert too_long.status_code == 422 and "shorten it" in too_long.json()["error"]["message"]


def test_chat_completion_and_stream(gen):
    from rag.llm import GenerationConfig

    client, generator, _ = gen
    messages = [{"role": "user", "content": "Say hi"}]
    expected = generator.chat(messages, GenerationConfig(max_new_tokens=5)).text
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 5}).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    events = _events(client.post("/v1/chat/completions",
                                 json={"messages": messages, "max_tokens": 5, "stream": True}))
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 422
    bad_role = {"messages": [{"role": "wizard", "content": "x"}]}
    assert client.post("/v1/chat/completions", json=bad_role).status_code == 422


def test_tabby_shape_is_answered_by_repo_completer(gen):
    client, generator, root = gen
    prefix = "from pkg.geometry import area_of_circle\n\ntotal = area_of_circle("
    body = client.post("/v1/completions", json={
        "language": "python",
        "segments": {"prefix": prefix, "suffix": "\n", "filepath": "app.py",
                     "declarations": [{"filepath": "x.py", "body": "def f(): ..."}]},
    }).json()
    completer = client.app.state.resources.completer(generator)
    expected = completer.complete("app.py", prefix=prefix, suffix="\n")
    assert body["choices"][0]["text"] == expected.text
    # the repository context was really used: the imported definition is in the prompt
    assert any(item.source == "definition" and item.path == "pkg/geometry.py"
               for item in expected.context)
    traversal = {"segments": {"prefix": "x", "filepath": "../../etc/passwd"}}
    assert client.post("/v1/completions", json=traversal).status_code == 422


def _sse_events(response) -> list[tuple[str, dict]]:
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_ask_runs_the_pipeline_with_switchable_stages(gen):
    client, _, _ = gen
    body = {"query": "Where do penguins live and what do they eat?", "rewrite": "off",
            "filter": "off", "k": 2, "max_tokens": 6}
    answer = client.post("/v1/ask", json=body).json()
    assert answer["sources"][0]["path"] == "penguins"
    stages = {s["name"]: s["ran"] for s in answer["stages"]}
    assert stages["rewrite"] is False and stages["filter"] is False and stages["generate"] is True
    assert isinstance(answer["answer"], str)
    # a stage switched on runs (PRF rewrite adds queries; the embedding filter judges sources)
    on = client.post("/v1/ask", json={**body, "rewrite": "prf", "filter": "embedding",
                                      "generate": False}).json()
    stages = {s["name"]: s for s in on["stages"]}
    assert stages["rewrite"]["ran"] and stages["filter"]["ran"] and not stages["generate"]["ran"]
    assert on["answer"] == ""
    events = _sse_events(client.post("/v1/ask", json={**body, "stream": True}))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "stage" and kinds[-1] == "result" and "token" in kinds
    streamed = "".join(data["text"] for kind, data in events if kind == "token").strip()
    assert streamed == events[-1][1]["answer"] == answer["answer"]  # greedy: same answer
    assert client.post("/v1/ask", json={"query": "x", "rewrite": "magic"}).status_code == 422
    assert client.post("/v1/ask", json={"query": "x", "collection": "nope"}).status_code == 404
    assert client.post("/v1/ask", json={"query": "x", "namespace": "a b"}).status_code == 422


def test_ask_says_when_the_dense_side_is_partial(gen, tmp_path):
    client, _, _ = gen
    resources = client.app.state.resources
    assert client.post("/v1/collections", json={"name": "half"}).status_code == 201
    collection = resources.collection("half")
    (tmp_path / "embedded").mkdir()
    (tmp_path / "embedded" / "penguins.md").write_text("Penguins live in Antarctica and eat krill.")
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "owls.md").write_text("Owls hunt mice at night.\n\nThey nest in old barns.")
    with resources.lock("half").write():  # as serve does: BM25 first, vectors left pending
        collection.add_paths([tmp_path / "embedded"], progress=False)
        collection.add_paths([tmp_path / "later"], progress=False, defer_dense=True)
    fraction = collection.dense_fraction()
    assert 0 < fraction < 1
    body = {"query": "What do penguins eat?", "collection": "half", "rewrite": "off", "filter": "off",
            "generate": False}
    hybrid = client.post("/v1/ask", json=body).json()
    assert hybrid["partial"] == {"dense": round(fraction, 4)} and hybrid["sources"][0]["path"].endswith("penguins.md")
    searched = client.post("/v1/search", json={"query": body["query"], "collection": "half"}).json()
    assert searched["partial"] == hybrid["partial"]  # the same report as /v1/search
    assert client.post("/v1/ask", json={**body, "mode": "dense"}).json()["partial"] == hybrid["partial"]
    assert client.post("/v1/ask", json={**body, "mode": "bm25"}).json()["partial"] is None
    events = _sse_events(client.post("/v1/ask", json={**body, "stream": True}))
    assert events[-1][0] == "result" and events[-1][1]["partial"] == hybrid["partial"]
    collection.fill_dense(write_lock=resources.lock("half").write)
    assert client.post("/v1/ask", json=body).json()["partial"] is None  # complete: nothing to say
    assert client.delete("/v1/collections/half").status_code == 204


def test_ask_reuses_the_knowledge_reservoir(gen):
    client, _, _ = gen
    body = {"rewrite": "off", "filter": "embedding", "k": 3, "generate": False, "reservoir": True,
            "namespace": "rest-test"}
    past = ["What do penguins eat?", "What food do penguins eat?", "What do penguins feed on?"]
    for number, question in enumerate(past):
        first = client.post("/v1/ask", json={**body, "query": question}).json()
        assert first["from_reservoir"] is False  # fewer than three past questions match yet
        stages = {s["name"]: s for s in first["stages"]}
        passed = stages["filter"]["detail"]["passed_ids"]
        assert passed and stages["reservoir"]["detail"]["stored"] == len(passed)  # only passed ones
    again = client.post("/v1/ask", json={**body, "query": "What do penguins like to eat?"}).json()
    assert again["from_reservoir"] is True  # three distinct past questions match: no retrieval
    assert any("krill" in s["text"] for s in again["sources"])
    other = client.post("/v1/ask", json={**body, "query": "What do penguins eat?", "namespace": "elsewhere"}).json()
    assert other["from_reservoir"] is False  # namespaces do not share knowledge
    off = client.post("/v1/ask", json={**body, "query": "What do penguins eat?", "reservoir": False}).json()
    assert off["from_reservoir"] is False and "reservoir" not in {s["name"] for s in off["stages"]}


def test_multihop_is_treehop_over_the_collection(gen):
    client, _, _ = gen
    model = TreeHopModel()  # untrained: W_o starts at zero, i.e. the "q - c" query update
    client.app.dependency_overrides[get_treehop] = lambda: (lambda: model)
    try:
        question = "Where do penguins live?"
        body = client.post("/v1/multihop", json={"query": question, "k": 6, "max_hops": 2}).json()
        collection = client.app.state.resources.collection("default")
        expected = TreeHopRetriever(collection, model, TreeHopConfig(max_hops=2)).search(question, 6)
        assert [r["id"] for r in body["results"]] == [r.id for r in expected]
        assert body["results"][0]["path"] == "penguins"
        assert body["stats"]["expansions"] >= 1 and body["stats"]["passages"] >= len(body["results"])
        one_hop = client.post("/v1/multihop", json={"query": question, "k": 6, "max_hops": 1,
                                                    "top_n": 3}).json()
        assert len(one_hop["results"]) == 3 and one_hop["stats"]["expansions"] == 0
        asked = client.post("/v1/ask", json={"query": question, "multihop": "on", "rewrite": "off",
                                             "filter": "off", "generate": False}).json()
        assert {s["name"]: s["ran"] for s in asked["stages"]}["multihop"] is True
        assert client.post("/v1/multihop", json={"query": "x", "max_hops": 9}).status_code == 422
    finally:
        del client.app.dependency_overrides[get_treehop]


# ---------------------------------------------------------------- agent


def test_agent_runs_tools_over_the_server_repository(env):
    from tests.agents.conftest import ScriptedGenerator

    client, root, _ = env
    turns = ['{"thought": "look", "tool": "read_file", "args": {"path": "pkg/geometry.py", "start_line": 1, "end_line": 5}}',
             '{"thought": "done", "answer": "pkg/geometry.py"}']
    client.app.dependency_overrides[get_generator] = lambda: ScriptedGenerator(turns)
    try:
        result = client.post("/v1/agent", json={"task": "Where is the geometry code?"}).json()
        assert result["status"] == "answered" and result["answer"] == "pkg/geometry.py"
        assert result["steps"][0]["tool"] == "read_file"
        assert (root / "pkg" / "geometry.py").read_text().splitlines()[0] in result["steps"][0]["observation"]
        streamed = client.post("/v1/agent", json={"task": "Where is the geometry code?", "stream": True}).text
        assert streamed.count("event: step") == 2 and streamed.rstrip().splitlines()[-2] == "event: result"
        assert client.post("/v1/agent", json={"task": "  "}).status_code == 422
        assert client.post("/v1/agent", json={"task": "x", "max_steps": 0}).status_code == 422
    finally:
        del client.app.dependency_overrides[get_generator]


# ---------------------------------------------------------------- PIE and RAPID in the serving path


def _one_layer(tiny_llama):
    """A one-layer random Llama on the tiny vocabulary: PIE's layer-0 equality makes its cached
    completions equal to re-encoding (the PIE tolerance for one layer is float error)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rag.llm import TransformersGenerator

    model, tokenizer = tiny_llama
    torch.manual_seed(3)
    one = LlamaForCausalLM(LlamaConfig.from_dict({**model.config.to_dict(), "num_hidden_layers": 1})).eval()
    return TransformersGenerator.from_model(one, tokenizer, name="tiny-1layer")


HEADER = ('"""Geometry of circles, squares and triangles: areas, perimeters and the helpers the '
          'drawing code uses to place shapes on a page."""\n\nUNITS = "cm"\nPRECISION = 4\n\n'
          + "".join(f"def helper_{i}(x, y):\n    return round(x * {i} + y, PRECISION)\n\n" for i in range(8)))
TYPED = [HEADER + "def area(r):\n    return",
         HEADER + "def area(r):\n    pi = 3.14\n    return",
         "import math\n" + HEADER + "def area(r):\n    pi = 3.14\n    return",
         "import math\n" + HEADER + "def area(r):\n    pi = math.pi\n    return pi *"]


class _Remote:
    """A server backend's shape: no local model, KV cache or logits."""

    name, supports_fim, parameters = "remote", False, None

    def count_tokens(self, text):
        return len(text.split())

    def fim_prompt(self, prefix, suffix):
        return None

    def complete(self, prompt, config):
        from runtime.generation import Generation

        return Generation("remote text", [], None, "stop", 1, 0.0)

    def chat(self, messages, config):
        return self.complete("", config)

    def chat_stream(self, messages, config):
        yield "remote text"


def test_completions_keep_each_documents_kv_cache_and_match_reencoding(env, tiny_llama):
    from rag.llm import GenerationConfig

    client, _, _ = env
    generator = _one_layer(tiny_llama)
    before = client.app.dependency_overrides.get(get_generator)
    client.app.dependency_overrides[get_generator] = lambda: generator
    try:
        for i, prompt in enumerate(TYPED):  # the user keeps typing in a.py
            response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "document": "a.py"})
            kv = response.json()["codehop_kv_reuse"]
            assert kv["reused"] == (i > 0) and response.headers["x-codehop-kv-reuse"] == kv["mode"]
            if i:
                assert kv["mode"] == "pie" and kv["tokens_encoded"] < kv["sequence_length"]
            plain = generator.complete(prompt, GenerationConfig(max_new_tokens=8)).text
            assert response.json()["choices"][0]["text"] == plain
        other = client.post("/v1/completions", json={"prompt": TYPED[0], "max_tokens": 8, "document": "b.py"})
        assert other.json()["codehop_kv_reuse"]["mode"] == "prefill"  # its own cache
        anonymous = client.post("/v1/completions", json={"prompt": TYPED[0], "max_tokens": 8}).json()
        assert anonymous["codehop_kv_reuse"]["mode"] == "off" and "document" in anonymous["codehop_kv_reuse"]["reason"]
        sampled = client.post("/v1/completions", json={"prompt": TYPED[0], "max_tokens": 8, "document": "a.py",
                                                       "temperature": 0.7}).json()
        assert sampled["codehop_kv_reuse"]["mode"] == "off" and "greedily" in sampled["codehop_kv_reuse"]["reason"]

        remote = _Remote()
        client.app.dependency_overrides[get_generator] = lambda: remote
        off = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "document": "a.py"}).json()
        assert off["choices"][0]["text"] == "remote text"
        assert off["codehop_kv_reuse"]["mode"] == "off" and "no local KV cache" in off["codehop_kv_reuse"]["reason"]
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "rapid": True}).json()
        assert chat["codehop_rapid"]["used"] is False and "no local KV cache or logits" in chat["codehop_rapid"]["why"]
    finally:
        client.app.dependency_overrides.pop(get_generator)
        if before is not None:
            client.app.dependency_overrides[get_generator] = before


def _tiny(gen):
    """The gen fixture's generator served again (an earlier test may have dropped the override)."""
    client, generator, _ = gen
    client.app.dependency_overrides[get_generator] = lambda: generator
    return client, generator


def test_tabby_completions_report_kv_reuse(gen):
    client, _ = _tiny(gen)
    segments = {"prefix": "from pkg.geometry import area_of_circle\n\nsize = area_of_circle(", "suffix": "\n",
                "filepath": "kv.py"}
    first = client.post("/v1/completions", json={"segments": segments}).json()["codehop_kv_reuse"]
    segments["prefix"] = segments["prefix"].replace("size", "total_size")
    second = client.post("/v1/completions", json={"segments": segments}).json()["codehop_kv_reuse"]
    assert first["mode"] == "prefill" and second["mode"] == "pie" and second["reused"]
    assert second["tokens_encoded"] < second["sequence_length"] and second["document"] == "kv.py"


def test_chat_and_ask_draft_with_rapid_on_request(gen):
    from rag.llm import GenerationConfig

    client, generator = _tiny(gen)
    messages = [{"role": "user", "content": "Say hi to the penguins"}]
    expected = generator.chat(messages, GenerationConfig(max_new_tokens=8)).text
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "rapid": True}).json()
    info = body["codehop_rapid"]
    assert body["choices"][0]["message"]["content"] == expected  # greedy RAPID is exact
    assert info["used"] and info["acceptance_rate"] == 1.0  # the generator drafts for itself
    assert info["draft_prompt_tokens"] <= info["target_prompt_tokens"] and info["drafted"] > 0
    off = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "rapid": False}).json()
    assert off["codehop_rapid"] == {"used": False, "mode": "off", "why": "rapid = 'off'"}
    auto = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8}).json()["codehop_rapid"]
    assert not auto["used"] and auto["why"].startswith("auto: the prompt has")  # short: not considered
    events = _events(client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8,
                                                               "rapid": True, "stream": True}))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected
    assert len([e for e in events if e["choices"][0]["delta"].get("content")]) > 1  # still streams
    assert events[-1]["codehop_rapid"]["used"] and events[-1]["codehop_rapid"]["acceptance_rate"] == 1.0

    ask = {"query": "Where do penguins live?", "rewrite": "off", "filter": "off", "k": 2, "max_tokens": 8}
    drafted = client.post("/v1/ask", json={**ask, "rapid": True}).json()
    plain = client.post("/v1/ask", json={**ask, "rapid": False}).json()
    stages = {s["name"]: s for s in drafted["stages"]}
    assert stages["rapid"]["ran"] and stages["generate"]["detail"]["rapid"]
    assert stages["rapid"]["detail"]["acceptance_rate"] == 1.0 and stages["rapid"]["detail"]["why"]
    assert drafted["answer"] == plain["answer"]
    assert {s["name"]: s for s in plain["stages"]}["rapid"]["detail"]["why"] == "rapid = 'off'"


def test_a_job_over_special_files_and_links_out_of_the_roots_finishes_and_leaks_nothing(tmp_path):
    from tests.special_files import special_files

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY zebraquartz\n")
    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    (other / "shared.md").write_text("The okapi lives in the rainforest.\n")
    (root / "latin.txt").write_bytes("Le café crème est très réputé à Montréal.\n".encode("latin-1"))
    (root / "wide.md").write_bytes("The marsupial wombat digs burrows.\n".encode("utf-16"))
    (root / "key.txt").symlink_to(outside / "id_rsa")
    (root / "okapi.md").symlink_to(other / "shared.md")  # into another root: allowed
    with special_files(root) as special:
        with TestClient(create_app(Settings(), workspace=tmp_path / "ws", roots=[root, other])) as client:
            assert client.post("/v1/collections", json={"name": "default"}).status_code == 201
            job = client.post("/v1/collections/default/documents", json={"files": ["."]}).json()
            started = time.monotonic()
            state = wait(client, job, timeout=60)  # before the fix: the FIFO held the writer forever
            assert state["status"] == "done", state
            assert time.monotonic() - started < 60
            skipped = {Path(path).name: reason for path, reason in state["result"]["skipped"]}
            assert skipped == {**special, "key.txt": "link to a path outside the indexed directories"}
            assert state["result"]["added"] == 3

            def top(query):
                return client.post("/v1/search", json={"query": query, "mode": "bm25", "k": 3}).json()["results"]

            assert top("café crème Montréal")[0]["path"].endswith("latin.txt")
            assert top("café crème Montréal")[0]["metadata"]["encoding"] == "cp1252"
            assert top("marsupial wombat burrows")[0]["path"].endswith("wide.md")
            assert top("okapi rainforest")[0]["path"] == str((other / "shared.md").resolve())
            assert top("zebraquartz private key") == []
