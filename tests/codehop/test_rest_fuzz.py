"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis).

Every operation gets a bounded number of generated requests (valid and invalid); none may
answer 5xx and every documented response must match its schema. The app runs for real: a
small MiniLM collection, and the tiny random Llama (via rag.llm) as the generator.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from codehop.config import Settings
from codehop.rest import create_app, get_generator, get_treehop
from rag.llm import TransformersGenerator
from rag.treehop import TreeHopModel

pytestmark = pytest.mark.slow  # loads MiniLM

GENERATION = ("/v1/completions", "/v1/chat/completions", "/v1/ask")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "root"
    root.mkdir()
    (root / "a.py").write_text("def hello(name):\n    return f'hello {name}'\n")
    app = create_app(Settings(), workspace=base / "ws", roots=[root], repo_root=root)
    model, tokenizer = request.getfixturevalue("tiny_llama")
    generator = TransformersGenerator.from_model(model, tokenizer)
    app.dependency_overrides[get_generator] = lambda: generator
    treehop = TreeHopModel()  # untrained (the "q - c" update): no shipped checkpoint needed
    app.dependency_overrides[get_treehop] = lambda: (lambda: treehop)
    # The TestClient runs the lifespan (resources on app.state); schemathesis' own ASGI client
    # then calls the same app object.
    with TestClient(app) as client:
        client.post("/v1/collections", json={"name": "default"})
        job = client.post("/v1/collections/default/documents",
                          json={"texts": [{"text": "hello world"}], "files": ["a.py"]}).json()
        for _ in range(1200):  # let the job load MiniLM before the clock of each request starts
            if client.get(f"/v1/jobs/{job['id']}").json()["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def _bounded(case) -> None:
    """Bound generation time, not validation: valid values are swapped for cheaper valid ones
    (fewer tokens; no LLM-driven rewrite/filter, which generate their own long outputs)."""
    if not isinstance(case.body, dict):
        return
    value = case.body.get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024:
        case.body["max_tokens"] = min(value, 4)
    if case.body.get("rewrite") == "llm" or (case.path == "/v1/ask" and "rewrite" not in case.body):
        case.body["rewrite"] = "prf"
    if case.body.get("filter") == "llm" or (case.path == "/v1/ask" and "filter" not in case.body):
        case.body["filter"] = "embedding"
    if case.path == "/v1/ask" and "max_tokens" not in case.body:
        case.body["max_tokens"] = 4


def test_no_server_errors(api_schema):
    # schemathesis' pytest plugin does not run under pytest 9: drive hypothesis directly.
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            _bounded(case)
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance],
                                   timeout=60)

        t = time.perf_counter()
        run()
        print(operation.label, round(time.perf_counter() - t, 2))
    assert "POST /v1/search" in labels and len(labels) >= 15
    # the generation and multi-hop operations were fuzzed too, not only the cheap ones
    assert {f"POST {path}" for path in (*GENERATION, "/v1/multihop")} <= set(labels), labels
