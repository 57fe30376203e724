"""The "openai" embedding backend (runtime.embed_openai): a server's /v1/embeddings in batches
that adapt to its speed, each committed to the cache as it arrives."""

import pytest

from runtime.embed import Embedder, EmbedderConfig
from runtime.embed_openai import RemoteEmbeddings
from runtime.errors import ModelServerError

pytestmark = pytest.mark.slow


def test_remote_batches_that_time_out_are_split_and_the_smaller_size_kept():
    from runtime.openai_http import OpenAIEndpoint
    from tests.scripted_server import Reply, ScriptedServer

    def vectors(n: int) -> Reply:
        return Reply(200, {"data": [{"index": i, "embedding": [1.0, float(i)]} for i in range(n)]})

    with ScriptedServer() as server:
        # 4 texts in a batch time out; 2 fit; the third batch is sent at 2 straight away.
        server.script("/v1/embeddings", Reply(200, {}, delay_s=1.5), vectors(2), vectors(2), vectors(1))
        remote = RemoteEmbeddings(OpenAIEndpoint(server.base_url, "e", timeout_s=0.5, max_retries=0), 4)
        out = remote.embed(["a", "b", "c", "d", "e"])
        assert out.shape == (5, 2) and remote.batch_size == 2
        assert [len(body["input"]) for _, body in server.requests] == [4, 2, 2, 1]
        # A first batch of 4 that takes 0.8 s (0.2 s a text) against a 2 s timeout: batches of
        # 2 (a quarter of the timeout) from then on, although 32 were configured.
        server.requests.clear()
        server.script("/v1/embeddings", Reply(200, vectors(4).body, delay_s=0.8), vectors(2), vectors(2))
        remote = RemoteEmbeddings(OpenAIEndpoint(server.base_url, "e", timeout_s=2, max_retries=0), 32)
        assert remote.embed(list("abcdefgh")).shape == (8, 2)
        assert [len(body["input"]) for _, body in server.requests] == [4, 2, 2] and remote.batch_size == 2
        server.script("/v1/embeddings", Reply(200, {}, delay_s=1.5), Reply(200, {}, delay_s=1.5))
        with pytest.raises(ModelServerError, match="raise \\[embedding\\] timeout_s"):
            RemoteEmbeddings(OpenAIEndpoint(server.base_url, "e", timeout_s=0.5, max_retries=0), 2).embed(["x"])


def test_llamacpp_vectors_are_kept_as_they_arrive_and_a_rerun_resumes(tmp_path, llamacpp_embedding_url):
    from runtime.openai_http import OpenAIEndpoint

    def embedder() -> Embedder:
        return Embedder(EmbedderConfig(model="smollm2-embed", backend="openai", batch_size=2,
                                       cache_dir=tmp_path / "embeddings",
                                       endpoint=OpenAIEndpoint(llamacpp_embedding_url, "smollm2-embed",
                                                               max_retries=0)))

    texts = [f"chunk {i}: the index writes file {i} atomically" for i in range(6)]
    too_long = "word " * 1500  # beyond llama.cpp's 512-token batch: HTTP 500, after the others
    first = embedder()
    with pytest.raises(ModelServerError, match="too large"):
        first.encode(texts + [too_long])
    assert len(first.cached(texts)) == len(texts)  # every batch that arrived was committed
    first.close()
    done: list[int] = []
    again = embedder()
    vectors = again.encode(texts, progress=done.append)
    assert done == [len(texts)] and vectors.shape == (6, 576)  # all from the cache: nothing re-sent
    again.close()
