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


async def _warm_line(client, path: str) -> str:
    for _ in range(600):
        for message in client.log_messages:
            if message.message.startswith(f"codehop: KV cache of {path}: "):
                return message.message
        await asyncio.sleep(0.1)
    raise AssertionError(f"no warm-up report for {path}")


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
