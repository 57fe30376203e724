"""The machine-level model cache: keyed by source files and versions, built once, atomically."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.model_cache import build_once, cache_entry, default_cache_root, default_models_dir, fingerprint

REPO = Path(__file__).resolve().parents[2]


def _source(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "sub").mkdir()
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    return root


def test_the_key_follows_the_source_bytes_and_the_versions(tmp_path):
    source = _source(tmp_path / "model")
    versions = {"onnxruntime": "1.32.0", "torch": "2.13.0"}
    first = cache_entry(tmp_path / "cache", "onnx-int8", "org/My Model", source, versions)
    assert first.parent == tmp_path / "cache" and first.name.startswith("onnx-int8-org_My_Model-")
    assert len(first.name.rsplit("-", 1)[1]) == 16
    # the same bytes elsewhere (a reinstalled package) share the entry
    copy = _source(tmp_path / "elsewhere")
    assert cache_entry(tmp_path / "cache", "onnx-int8", "org/My Model", copy, versions) == first
    assert fingerprint(source, {**versions, "onnxruntime": "1.33.0"}) != fingerprint(source, versions)
    weights = source / "sub" / "weights.bin"
    stat = weights.stat()
    weights.write_bytes(b"\x00\x02" * 1000)  # same size, new bytes
    # a process hashes once per (name, size, mtime): make sure the coarse clock moved
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint(source, versions) != fingerprint(copy, versions)
    (copy / "sub" / "weights.bin").rename(copy / "weights.bin")  # a file moved: another model
    assert fingerprint(copy, versions) != fingerprint(_source(tmp_path / "third"), versions)


def test_the_cache_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CODEHOP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine"
    monkeypatch.delenv("CODEHOP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "codehop"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "codehop"


def test_one_rule_places_every_conversion(monkeypatch, tmp_path):
    """<cache root>/models, the root given or the environment's; cache_entry(None, ...) is there."""
    monkeypatch.setenv("CODEHOP_CACHE_DIR", str(tmp_path / "env"))
    source = _source(tmp_path / "src")
    assert default_models_dir() == tmp_path / "env" / "models"
    assert default_models_dir(tmp_path / "given") == tmp_path / "given" / "models"
    entry = cache_entry(None, "static", "m", source, {"v": "1"})
    assert entry.parent == tmp_path / "env" / "models" and entry.name.startswith("static-m-")
    assert cache_entry(tmp_path / "own", "static", "m", source, {"v": "1"}).parent == tmp_path / "own"


_RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from runtime.model_cache import build_once

    target, log = Path(sys.argv[1]), Path(sys.argv[2])
    start = Path(sys.argv[3])
    while not start.exists():  # both racers call build_once at (nearly) the same moment
        time.sleep(0.01)

    def build(temp):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        (temp / "part1").write_text("half")
        time.sleep(1.0)  # a slow export: the other racer must wait, not build too
        (temp / "part2").write_text("done")

    result = build_once(target, build, ready=lambda d: (d / "part2").is_file())
    print(sorted(p.name for p in result.iterdir()))
""")


def test_two_processes_building_at_once_build_once(tmp_path):
    target, log, start = tmp_path / "cache" / "onnx-int8-m-0123", tmp_path / "builds.log", tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(target), str(log), str(start)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    start.touch()
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    assert len(log.read_text().split()) == 1  # one export, the other process waited for it
    assert all(out.strip() == "['part1', 'part2']" for out, _ in outputs)  # both saw it complete
    assert sorted(p.name for p in target.parent.iterdir()) == [".onnx-int8-m-0123.lock", "onnx-int8-m-0123"]


def test_a_failed_or_killed_build_leaves_nothing_half_made(tmp_path):
    target = tmp_path / "cache" / "static-m-0123"
    target.parent.mkdir(parents=True)
    leftover = target.parent / f".tmp-{target.name}-99999-deadbeef"  # a builder killed mid-way
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("half")

    def broken(temp):
        (temp / "model.safetensors").write_text("half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(target, broken)
    assert not target.exists() and not leftover.exists()
    assert [p.name for p in target.parent.iterdir()] == [f".{target.name}.lock"]
    calls = []
    build = lambda temp: (calls.append(temp), (temp / "model.safetensors").write_text("whole"))  # noqa: E731
    assert build_once(target, build) == target and (target / "model.safetensors").read_text() == "whole"
    assert build_once(target, build) == target and len(calls) == 1  # done: not built again
    # a directory that is there but incomplete by `ready` (an older layout) is replaced
    assert build_once(target, build, ready=lambda d: (d / "meta.json").is_file()) == target
    assert len(calls) == 2
