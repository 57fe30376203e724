"""The "static" embedding backend: a model2vec static embedder (token vectors, averaged).

Model2Vec (Tulkens & van Dongen 2024) distils a sentence transformer into one vector per
vocabulary token: every token is passed through the model alone, the outputs are reduced by
PCA to `pca_dims` and weighted by an estimate of token frequency (Zipf, SIF-like); a text's
vector is the mean of its tokens' vectors. Embedding is then a table lookup: ~100x faster
than MiniLM on a CPU, at a measured quality loss (docs/benchmarks/index_bench), which is why
this backend is opt-in, for corpora too large to embed.

The distillation runs offline from the shipped MiniLM at first use (about a minute on 2
cores), once per machine, into the model cache (runtime.model_cache:
``~/.cache/codehop/models/static-<model>-<hash>``, temp dir + rename under a lock). A `model` that is
already a model2vec directory (a local path with model2vec's config) is loaded as it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime.errors import MissingDependencyError
from runtime.model_cache import build_once, cache_entry, conversion_source, package_versions

PCA_DIMS = 256


def _require() -> None:
    try:
        import model2vec  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            "the static embedding backend needs model2vec: pip install model2vec==0.10.0 "
            "skeletoken==0.6.1 (scripts/setup.sh installs them)") from error


def is_static_model(directory: Path) -> bool:
    """Whether `directory` holds a model2vec model (its own config + embeddings file)."""
    directory = Path(directory)
    config = directory / "config.json"
    if not (config.is_file() and (directory / "model.safetensors").is_file()):
        return False
    try:
        # model2vec writes model_type "model2vec" when distilling, none when saving a model
        # built from vectors; a transformer's config names its architecture ("bert").
        return json.loads(config.read_text()).get("model_type", "model2vec") == "model2vec"
    except (OSError, ValueError):
        return False


def distill_static(model_dir: Path, out_dir: Path, pca_dims: int = PCA_DIMS) -> Path:
    """Distil the sentence-transformers model in `model_dir` into `out_dir` (once: temp dir +
    rename under a lock, runtime.model_cache.build_once)."""
    _require()

    def build(temp: Path) -> None:
        from model2vec.distill import distill

        started = time.perf_counter()
        model = distill(model_name=str(model_dir), pca_dims=pca_dims, device="cpu")
        model.save_pretrained(str(temp))
        (temp / "codehop.json").write_text(json.dumps({
            "source": str(model_dir), "pca_dims": pca_dims,
            "distill_s": round(time.perf_counter() - started, 1)}))

    return build_once(Path(out_dir), build, ready=is_static_model)


class StaticEncoder:
    """A model2vec model directory as an encoder of texts (rows L2-normalised)."""

    def __init__(self, directory: Path, max_length: int | None, slice_size: int = 256) -> None:
        _require()
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(directory))
        self.max_length = max_length
        self.dim = int(self.model.dim)
        self.slice_size = slice_size  # texts per cache commit of `Embedder.encode`
        self.loaded = True

    @classmethod
    def create(cls, config, resolved) -> "StaticEncoder":
        """From an `EmbedderConfig` and its resolved model: a model2vec directory is loaded as
        it is; any other local model is distilled at first use, once per machine, into
        `config.models_dir` (default: the machine's model cache)."""
        source = conversion_source("static", resolved)
        if is_static_model(source):
            return cls(source, config.max_seq_length, config.batch_size * 8)
        versions = {"pca_dims": str(PCA_DIMS), **package_versions("model2vec", "skeletoken", "transformers", "torch")}
        directory = distill_static(source, cache_entry(config.models_dir, "static", config.model, source, versions))
        return cls(directory, config.max_seq_length, config.batch_size * 8)

    def encode(self, texts: list[str], batch_size: int = 1024) -> np.ndarray:
        vectors = np.asarray(self.model.encode(texts, max_length=self.max_length,
                                               batch_size=batch_size, show_progress_bar=False,
                                               use_multiprocessing=False),
                             dtype=np.float32).reshape(len(texts), -1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def close(self) -> None:
        """Nothing to release: the table goes with the object."""
