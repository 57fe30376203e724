"""$/cancelRequest of a completion that is generating, end to end: the real `codehop lsp`
server over stdio (the harness of tests/codehop/test_lsp.py), a model that would decode for
minutes, and the two things an editor relies on: the request answers RequestCancelled at once,
and the model is free again (the decode stopped; it was not merely abandoned).

The model is a random Llama whose attention and MLP outputs are zeroed, so each layer passes
the residual stream through and, with tied embeddings, the greedy next token is the current
one: after `slugify(` it writes `(` until the token budget (never a newline, so a single-line
completion never stops early), after a newline a newline (the line ends at once).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from tests.codehop.test_lsp import MAIN, UTILS, _open, start_lsp

BUDGET = 8000  # tokens: minutes of decoding for this model on a shared 2-core machine
OTHER = "from utils import slugify\n\nprint(slugify('Hello World'))\n"  # the cursor after the newline


@pytest.fixture(scope="module")
def echo_model_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
        tie_word_embeddings=True, bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    target = tmp_path_factory.mktemp("echo-model")
    model.save_pretrained(target)
    smollm2_tokenizer.save_pretrained(target)
    return target


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_request_stops_a_running_completion(tmp_path, echo_model_dir):
    project = tmp_path / "project"
    project.mkdir()
    (project / "utils.py").write_text(UTILS)
    (project / "main.py").write_text(MAIN)
    (project / "other.py").write_text(OTHER)
    client, _ = await start_lsp(project, echo_model_dir, tmp_path / "state", "--precision", "float32",
                                "--max-new-tokens", str(BUDGET), "--truncate", "line", "--debounce", "0")
    try:
        main, other = _open(client, project / "main.py", MAIN), _open(client, project / "other.py", OTHER)
        short = types.CompletionParams(types.TextDocumentIdentifier(other), types.Position(line=3, character=0))
        # the model loaded and warm, and the short request's own cost: it ends at its first token
        started = time.perf_counter()
        first = await asyncio.wait_for(client.text_document_completion_async(short), 120)
        short_s = time.perf_counter() - started
        assert not first.items and first.item_defaults.data["kv_reuse"]["tokens"] <= 1

        # the long completion: `(` after `(` for BUDGET tokens, unless cancelled
        long = types.CompletionParams(types.TextDocumentIdentifier(main),
                                      types.Position(line=2, character=len("name = slugify(")))
        pending = asyncio.wrap_future(client.protocol.send_request(
            types.TEXT_DOCUMENT_COMPLETION, long, msg_id="long-completion"))
        await asyncio.sleep(3)  # past the debounce and the context: decoding
        assert not pending.done(), "the long completion ended by itself: the model is not the echo model"
        cancelled_at = time.perf_counter()
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-completion"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wait_for(pending, 10)
        assert time.perf_counter() - cancelled_at < 10

        # the model is free: a completion of another file, which waits for the generation
        # thread, answers in about its own time, not after the rest of the BUDGET-token decode
        started = time.perf_counter()
        again = await asyncio.wait_for(client.text_document_completion_async(short), 30)
        waited = time.perf_counter() - started
        assert not again.items
        assert waited < short_s + 10, f"the next completion waited {waited:.1f} s: the decode went on"
    finally:
        await client.shutdown_session()
