"""didOpen warms the document's KV cache (codehop.lsp._warm_document), end to end over stdio
with the tiny model (the harness of tests/codehop/test_lsp.py), and the rule that decides when
a completion request stops a warm-up."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types

from codehop.lsp import _WARM_JOIN_AFTER, _Warming
from tests.codehop.test_lsp import MAIN, _open, project, start_lsp  # noqa: F401 - the fixture


def test_a_request_stops_another_documents_warm_up_and_joins_its_own():
    other, own, idle = _Warming(), _Warming(), _Warming()
    other.stop.set()  # a completion request for another document (or didClose)
    own.joined.set()  # a completion request for this document
    assert other.stop_at_layer(0.0) and other.stop_at_layer(0.9)
    assert own.stop_at_layer(0.0) and own.stop_at_layer(_WARM_JOIN_AFTER / 2)  # barely begun
    assert not own.stop_at_layer(_WARM_JOIN_AFTER) and not own.stop_at_layer(0.9)  # finish it
    assert not any(idle.stop_at_layer(done) for done in (0.0, 0.5, 0.97))


async def _server(project, model, state, *extra: str):
    client, _ = await start_lsp(project, model, state, "--precision", "float32", "--max-new-tokens", "4",
                                "--debounce", "0", *extra)
    return client


async def _log_line(client, start: str) -> str:
    """The first log message of the server that starts with `start`, waited for up to 60 s."""
    for _ in range(600):
        for message in client.log_messages:
            if message.message.startswith(start):
                return message.message
        await asyncio.sleep(0.1)
    raise AssertionError(f"no log message starting {start!r}")


async def _warm_line(client, path: str) -> str:
    return await _log_line(client, f"codehop: KV cache of {path}: ")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_first_completion_after_didopen_edits_the_warmed_cache(project, tiny_model_dir, tmp_path):  # noqa: F811
    client = await _server(project, tiny_model_dir, tmp_path / "state")
    try:
        uri = _open(client, project / "main.py", MAIN)
        line = await _warm_line(client, "main.py")
        assert line.startswith("codehop: KV cache of main.py: warm (") and " 0 of " not in line
        end = types.Position(line=2, character=len("name = slugify("))
        result = await client.text_document_completion_async(types.CompletionParams(
            types.TextDocumentIdentifier(uri), end))
        kv = result.item_defaults.data["kv_reuse"]
        # the cursor at the end of the opened buffer: the warm prompt itself, nothing to encode
        assert kv["warmed"] and kv["mode"] == "prefix" and kv["tokens_encoded"] == 0
        again = await client.text_document_completion_async(types.CompletionParams(
            types.TextDocumentIdentifier(uri), end))
        assert not again.item_defaults.data["kv_reuse"]["warmed"]
    finally:
        await client.shutdown_session()
    # the same first request to a server told not to warm: a prefill of the whole prompt, the same answer
    cold = await _server(project, tiny_model_dir, tmp_path / "state-cold", "--no-warm-on-open")
    try:
        uri = _open(cold, project / "main.py", MAIN)
        first = await cold.text_document_completion_async(types.CompletionParams(
            types.TextDocumentIdentifier(uri), end))
        kv_cold = first.item_defaults.data["kv_reuse"]
        assert kv_cold["mode"] == "prefill" and kv_cold["tokens_encoded"] == kv["sequence_length"]
        assert [i.text_edit.new_text for i in first.items] == [i.text_edit.new_text for i in result.items]
        assert not any("KV cache of" in m.message for m in cold.log_messages)
    finally:
        await cold.shutdown_session()


ALPHA = "def walrus_tally(herd):\n    \"\"\"Count walruses.\"\"\"\n    return len(herd) * 2\n"
BETA = ("def narwhal_census(pod, year):\n    \"\"\"Narwhals per pod and year.\"\"\"\n"
        "    counted = [whale for whale in pod if whale.year == year]\n    return len(counted) + 7\n")


async def _refresh_line(client, path: str) -> str:
    return await _log_line(client, f"codehop: context of {path}: refreshed")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_context_change_over_budget_is_encoded_after_the_response(tmp_path, tiny_model_dir):
    """--context-edit-budget 8: a typed line that makes retrieval add a chunk is answered with
    the context the cache holds (only the typed tokens encoded), the fresh context is encoded in
    the background after the response, and the next request finds it encoded. A budget-0 server
    encodes the chunk on the request path."""
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "alpha.py").write_text(ALPHA)
    (root / "beta.py").write_text(BETA)
    # a buffer long enough that a typed line is a small PIE edit, not a re-prefill; its words
    # retrieve alpha.py only (BM25 matches no digit or name of beta.py), the second line's beta.py too
    first = "zz = None\n" * 12 + "# walrus tally\nw = None\n"
    second = first + "# narwhal census\nv = None\n"
    third = second + "u = None\n"
    (root / "main.py").write_text(first)
    reports = {}
    for budget in ("8", "0"):
        client, _ = await start_lsp(root, tiny_model_dir, tmp_path / f"state-{budget}", "--precision", "float32",
                                    "--max-new-tokens", "4", "--debounce", "0", "--no-warm-on-open",
                                    "--context-edit-budget", budget)
        try:
            uri = _open(client, root / "main.py", first)
            kv = []
            for version, text in enumerate((first, second, third), start=1):
                if version > 1:
                    client.text_document_did_change(types.DidChangeTextDocumentParams(
                        types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                        [types.TextDocumentContentChangeWholeDocument(text=text)]))
                result = await client.text_document_completion_async(types.CompletionParams(
                    types.TextDocumentIdentifier(uri), types.Position(line=text.count("\n"), character=0)))
                kv.append(result.item_defaults.data["kv_reuse"])
                if version == 2 and budget == "8":
                    assert kv[-1].get("context_held")  # else no refresh follows
                    await _refresh_line(client, "main.py")
            reports[budget] = kv
        finally:
            await client.shutdown_session()
    held, refreshed = reports["8"][1], reports["8"][2]
    typed = reports["8"][2]["tokens_encoded"]
    assert reports["8"][0]["mode"] == "prefill"
    assert held["context_held"] and held["context_fresh_cost"] > held["context_held_cost"] + 8
    assert held["mode"] == "pie" and held["tokens_encoded"] < 30
    # after the refresh: the fresh context is in the cache, only the typed line is encoded
    assert not refreshed["context_held"] and refreshed["mode"] == "pie" and 0 < typed < 10
    unbudgeted = reports["0"][1]
    assert "context_held" not in unbudgeted and unbudgeted["tokens_encoded"] > held["tokens_encoded"] + 8
