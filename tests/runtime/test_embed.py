import numpy as np
import pytest

from runtime.embed import Embedder, EmbedderConfig, RemoteEmbeddings, content_hash
from runtime.errors import InvalidInputError, ModelNotFoundError, ModelServerError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def embedder(cache_dir):
    return Embedder(EmbedderConfig(batch_size=4, cache_dir=cache_dir))


def test_vectors_are_normalised_float32_and_semantic(embedder):
    texts = ["How do I open a file in Python?", "Reading files with open()",
             "The cat sat on the mat."]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embedder.dim == 384


def test_batching_does_not_change_vectors(embedder, cache_dir):
    texts = [f"sentence number {i} about sorting lists" for i in range(9)]
    one_by_one = np.stack([Embedder(EmbedderConfig(batch_size=1)).encode([t])[0] for t in texts])
    batched = Embedder(EmbedderConfig(batch_size=8)).encode(texts)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_cache_skips_reembedding_and_survives_a_new_embedder(embedder, cache_dir):
    calls = []
    texts = ["alpha beta", "gamma delta"]
    first = embedder.encode(texts, progress=calls.append)
    again = Embedder(EmbedderConfig(batch_size=4, cache_dir=cache_dir))
    seen = []
    original = again._embed
    again._embed = lambda batch: seen.append(list(batch)) or original(batch)
    mixed = again.encode(["gamma delta", "epsilon", "alpha beta"])
    assert seen == [["epsilon"]]  # only the new text reached the model
    np.testing.assert_array_equal(mixed[0], first[1])
    np.testing.assert_array_equal(mixed[2], first[0])
    assert set(again.cached(["alpha beta", "zeta"])) == {content_hash("alpha beta")}
    assert sum(calls) == 2
    query = again.encode_query("a query that is not stored on disk")
    assert not again.cached(["a query that is not stored on disk"])
    np.testing.assert_array_equal(again.encode_query("a query that is not stored on disk"), query)


def test_bad_inputs():
    with pytest.raises(ModelNotFoundError):
        Embedder(EmbedderConfig(model="no-such-model-package"))
    with pytest.raises(InvalidInputError):
        EmbedderConfig(batch_size=0)
    embedder = Embedder(EmbedderConfig())
    with pytest.raises(InvalidInputError):
        embedder.encode("a string, not a list")
    with pytest.raises(InvalidInputError):
        embedder.encode_query("   ")
    assert content_hash("x") == content_hash("x") != content_hash("y")


def test_truncation_is_per_embedder_although_the_model_is_shared(embedder):
    long_text = "sqlite write-ahead logging " * 10 + "but the ending is about bananas " * 20
    plain = Embedder(EmbedderConfig())  # no cache: every call reaches the model
    short = Embedder(EmbedderConfig(max_seq_length=16))
    full_before = plain.encode([long_text])[0]
    truncated = short.encode([long_text])[0]
    full_after = plain.encode([long_text])[0]
    assert short.model is plain.model is embedder.model  # one copy per process
    assert float(truncated @ full_before) < 0.99
    np.testing.assert_allclose(full_after, full_before, atol=1e-5)  # no leaked limit


# ---------------------------------------------------------------- the openai (server) backend

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
