"""The "onnx-int8" embedding backend: a sentence-transformers model run by ONNX Runtime.

At first use the model's transformer is exported with `torch.onnx.export` (the TorchScript
exporter: no optimum, whose transformers pin conflicts with ours) and quantised with
`onnxruntime.quantization.quantize_dynamic` (int8 weights with per-channel scales,
activations quantised per call; Jacob et al. 2018), once per machine, into the model cache
(runtime.model_cache: ``~/.cache/codehop/models/onnx-int8-<model>-<hash>``, written to a temp dir
and renamed under a lock, so a killed export never leaves half a model). Later runs, in any
workspace, load the file in well under a second and never import torch.

Pooling and normalisation are the sentence-transformers ones of MiniLM (mean over the
tokens, then L2). Each text runs alone: no padding (length bucketing taken to its limit, which
measured cheaper than padded batches on this CPU), and deterministic vectors: dynamic
quantisation scales activations per tensor, so in a batch a text's vector moved with its batch
mates (cosine down to 0.977 to the same text alone).

Example: OnnxEncoder(dir, threads=2, max_length=256).encode(["def f(): pass", "x"]) -> (2, 384)
float32, rows of unit length, cosine ~0.99 to the torch model's vectors.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from runtime.errors import InvalidInputError, MissingDependencyError
from runtime.model_cache import build_once, cache_entry, conversion_source, package_versions

FORMAT = "codehop-onnx-int8 v1"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Architectures whose export was checked against the torch vectors (tests/runtime/test_embed_onnx.py).
SUPPORTED_TYPES = ("bert",)


def _require() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            "the onnx-int8 embedding backend needs onnxruntime and onnx: pip install "
            "onnxruntime==1.32.0 onnx==1.23.2 (scripts/setup.sh installs them)") from error


def export_int8(model_dir: Path, out_dir: Path) -> Path:
    """Export + quantise the transformer of the sentence-transformers model in `model_dir`.

    Returns `out_dir` holding model.onnx (int8), tokenizer.json and meta.json, built once
    (temp dir + rename under a lock: runtime.model_cache.build_once), so concurrent callers (two
    workspaces, two test workers) export once and the second finds it done.

    Raises:
        InvalidInputError: the model is not one this exporter reproduces faithfully
            (`unsupported_reason`).
    """
    _require()
    reason = unsupported_reason(Path(model_dir))
    if reason:
        raise InvalidInputError(f"the onnx-int8 embedding backend cannot run {model_dir}: {reason}; "
                                "use [embedding] backend = \"sentence-transformers\"")

    def build(temp: Path) -> None:
        started = time.perf_counter()
        _export(Path(model_dir), temp / "model-fp32.onnx")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel scales: per-tensor int8 weights cost MiniLM ~6% cosine to the float
        # model (0.937 mean on paragraphs of this repo's code), per-channel ~0.7% (0.993).
        # MatMul only: quantising the embedding Gather and friends too was no more accurate
        # and ~2x slower here (dequantisation on every lookup).
        quantize_dynamic(str(temp / "model-fp32.onnx"), str(temp / "model.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        (temp / "model-fp32.onnx").unlink()
        shutil.copy(Path(model_dir) / "tokenizer.json", temp / "tokenizer.json")
        (temp / "meta.json").write_text(json.dumps({
            "format": FORMAT, "source": str(model_dir), "pooling": "mean", "normalize": True,
            "export_s": round(time.perf_counter() - started, 1)}))

    return build_once(Path(out_dir), build, ready=lambda d: (d / "meta.json").is_file())


def unsupported_reason(model_dir: Path) -> str | None:
    """Why the exporter cannot stand in for sentence-transformers on `model_dir` (None: it can).

    The ONNX encoder implements one pipeline: a BERT-style transformer (input_ids,
    attention_mask, token_type_ids), mean pooling, L2 normalisation, a fast tokenizer file.
    MiniLM (the shipped default) is exactly that; a CLS-pooled model (bge, e5 variants) would
    get wrong vectors without an error, so it is refused here and never chosen by default.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return "not a model directory"
    if not (model_dir / "tokenizer.json").is_file():
        return "no tokenizer.json (a fast tokenizer) beside the model"
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "no readable config.json"
    if config.get("model_type") not in SUPPORTED_TYPES:
        return f"model_type {config.get('model_type')!r} is not one of {SUPPORTED_TYPES}"
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        try:
            modes = json.loads(pooling.read_text())
        except ValueError:
            return "unreadable 1_Pooling/config.json"
        # sentence-transformers < 6 writes one flag per mode, 6.x one "pooling_mode" string
        if "pooling_mode" in modes:
            used = [f"pooling_mode_{modes['pooling_mode']}_tokens"] if modes["pooling_mode"] == "mean" \
                else [str(modes["pooling_mode"])]
        else:
            used = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v)
        if used != ["pooling_mode_mean_tokens"]:
            return f"pooling {used or 'none'} (only mean pooling is implemented)"
    return None


def _export(model_dir: Path, path: Path) -> None:
    import warnings

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar in a server's log says nothing
    # eager attention traces without the data-dependent branches of the SDPA mask code
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):  # the last hidden state only: pooling is done in numpy
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tuple(torch.ones((2, 16), dtype=torch.long) for _ in _INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "hidden")}
    # The tracer warns about a Python branch of the mask code and about aten::index: noise to a
    # user; the exported graph's vectors are checked against torch's on texts of many lengths
    # (tests/runtime/test_embed_onnx.py).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(model), sample, str(path), input_names=list(_INPUTS),
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)


class OnnxEncoder:
    """An exported model directory (see `export_int8`) as an encoder of texts."""

    def __init__(self, directory: Path, threads: int, max_length: int, slice_size: int = 256) -> None:
        _require()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        meta = json.loads((Path(directory) / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise MissingDependencyError(f"{directory} holds {meta.get('format')!r}, not {FORMAT!r}: delete it to export again")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores
        self.session = ort.InferenceSession(str(Path(directory) / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 384)
        self._names = {i.name for i in self.session.get_inputs()}
        self.slice_size = slice_size  # texts per cache commit of `Embedder.encode`
        self.loaded = True

    @classmethod
    def create(cls, config, resolved) -> "OnnxEncoder":
        """From an `EmbedderConfig` and its resolved model: exported at first use, once per
        machine, into `config.models_dir` (default: the machine's model cache)."""
        source = conversion_source("onnx-int8", resolved)
        versions = {"format": FORMAT, **package_versions("torch", "transformers", "onnx", "onnxruntime")}
        directory = export_int8(source, cache_entry(config.models_dir, "onnx-int8", config.model, source, versions))
        return cls(directory, config.threads or min(4, os.cpu_count() or 1), config.max_seq_length or 512,
                   config.batch_size * 8)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """L2-normalised mean-pooled vectors, in the order of `texts`.

        One text per run: no padding at all (the limit of length bucketing), and a text's vector
        never depends on the other texts of a call. `batch_size` is accepted for the Embedder
        interface; batching bought nothing here (300 code paragraphs, 1 thread: 3.3 CPU-s one
        at a time vs 4.6 in length-sorted batches of 32, whose padding is computed too).
        """
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self._names})[0]
            pooled = hidden[0].mean(axis=0)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out

    def close(self) -> None:
        """Nothing to release beyond the session, which goes with the object."""
