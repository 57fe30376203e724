"""The native posting scan against numpy on the decoded stored vectors, for every precision."""

from __future__ import annotations

import mmap
import platform
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import index.postings as postings_module
from index.postings import PostingFile, advise_huge_pages, decode, encode

DIM = 40


def awkward_vectors(n: int, seed: int) -> np.ndarray:
    """Random vectors plus values float16 stores in unusual ways: subnormals (< 6.1e-5), the
    smallest subnormal, signed zeros, the largest normal, exact powers of two."""
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    x[0, :8] = [3e-6, -3e-6, 6e-8, -0.0, 0.0, 65504.0, -2.0**-14, 1.0]
    x[1] = 2.0 ** -(np.arange(DIM) % 24)
    return x


@pytest.mark.parametrize("precision", ["float32", "float16", "int8"])
def test_scan_scores_equal_numpy_on_the_stored_vectors(precision):
    n, k = 300, 10
    x = awkward_vectors(n + 3, 0)
    if precision == "int8":  # int8 stores unit-scale values (x * 127, clipped)
        x = np.clip(x / 4, -1, 1)
    stored = decode(encode(x[:n], precision), precision)
    postings = PostingFile(DIM, precision)
    groups = [np.arange(0, 150), np.arange(100, 260), np.arange(250, n)]  # overlaps = replicas
    postings.write_all(groups, x[:n])
    head_rows, head_vecs = np.arange(n, n + 3), x[n:]  # each posting's head, in memory (float32)
    alive = np.ones(n + 3, dtype=bool)
    alive[[5, 120, n + 1]] = False  # tombstones, one of them a head
    queries = awkward_vectors(6, 1)
    probes = np.array([[0, 1, 2], [2, -1, 0], [1, 1, -1], [-1, -1, -1], [0, 1, 2], [2, 1, 0]])

    everything = np.concatenate([stored, head_vecs])
    for single in (False, True):  # a batch (parallel kernel) and one query at a time (serial)
        if single:
            found = [postings.scan(q[None], p[None], head_rows, head_vecs, alive, k) for q, p in zip(queries, probes)]
            rows, scores = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
        else:
            rows, scores = postings.scan(queries, probes, head_rows, head_vecs, alive, k)
        for q, probe, r, s in zip(queries, probes, rows, scores):
            members = np.unique(np.concatenate([[n + p] + list(groups[p]) for p in set(probe[probe >= 0])] or [[]]))
            members = members[alive[members.astype(np.int64)]].astype(np.int64)
            exact = everything[members].astype(np.float64) @ q.astype(np.float64)
            order = np.argsort(-exact, kind="stable")[:k]
            want = min(k, len(members))
            assert (r[want:] == -1).all() and np.isneginf(s[want:]).all()
            assert len(set(r[:want])) == want  # replicas de-duplicated
            assert np.allclose(s[:want], exact[order], rtol=1e-5, atol=1e-4 * np.abs(q).sum())
            got = dict(zip(r[:want].tolist(), s[:want].tolist()))
            for row in r[:want]:  # every reported score is that row's exact score
                assert np.isclose(got[row], everything[row].astype(np.float64) @ q, rtol=1e-5, atol=1e-4 * np.abs(q).sum())


def test_prefetch_accepts_skips_and_repeats():
    x = awkward_vectors(50, 2)
    postings = PostingFile(DIM, "float16")
    postings.write_all([np.arange(20), np.arange(0), np.arange(20, 50)], x)
    postings.prefetch(np.array([0, -1, 1, 2, 2]))  # -1 = pruned, posting 1 is empty
    postings.prefetch(np.zeros(0, dtype=np.int64))


def _mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping (VMA) that holds `address`."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head, _, rest = line.partition(" ")
        low, dash, high = head.partition("-")
        if dash and all(c in "0123456789abcdef" for c in low + high):  # a mapping's header line
            if inside:
                break
            inside = int(low, 16) <= address < int(high, 16)
        elif inside:
            fields[head.rstrip(":")] = rest.strip()
    return fields


def _kernel_has_thp() -> bool:
    """Transparent huge pages not turned off, and MADV_COLLAPSE (Linux >= 6.1)."""
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    release = tuple(int(part) for part in re.findall(r"\d+", platform.release())[:2])
    return enabled.exists() and "[never]" not in enabled.read_text() and release >= (6, 1)


@pytest.fixture
def numpy_gives_no_huge_pages():
    """numpy madvises HUGEPAGE on its own large allocations; turned off here so that huge pages
    seen in the test come from advise_huge_pages alone."""
    multiarray = getattr(np, "_core", getattr(np, "core", None)).multiarray
    previous = multiarray._set_madvise_hugepage(False)
    yield
    multiarray._set_madvise_hugepage(previous)


def test_huge_page_advice_backs_the_interior_with_huge_pages_and_keeps_the_contents(
        numpy_gives_no_huge_pages):
    # A mapping of its own: malloc may hand out heap that numpy advised earlier in this process.
    region = mmap.mmap(-1, 6 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # not shmem
    big = np.frombuffer(region, dtype=np.float32)  # 6 MiB
    big[:] = np.random.default_rng(3).normal(size=len(big))
    copy = big.copy()
    huge = 2 << 20
    interior = -(-big.ctypes.data // huge) * huge  # the first 2 MiB boundary inside the array
    assert "hg" not in _mapping_of(interior).get("VmFlags", "").split()  # not advised yet
    advised = advise_huge_pages(big)
    assert np.array_equal(big, copy)
    assert advise_huge_pages(np.zeros(100, np.float32)) is False  # smaller than two huge pages
    if advised is False:  # allowed only where the kernel cannot do it
        assert not (sys.platform == "linux" and _kernel_has_thp())
        return
    mapping = _mapping_of(interior)  # it says it did: the mapping must show it
    # MADV_HUGEPAGE marks the mapping ("hg"); MADV_COLLAPSE backs it with huge pages now.
    assert "hg" in mapping["VmFlags"].split(), mapping
    assert int(mapping["AnonHugePages"].split()[0]) >= 2048, mapping


@pytest.mark.skipif(postings_module._MADVISE is None, reason="no libc madvise on this platform")
def test_prefetch_advises_each_posting_once_per_window_and_again_after_a_drop():
    x = awkward_vectors(50, 4)
    postings = PostingFile(DIM, "float16")
    postings.write_all([np.arange(20), np.arange(20, 50)], x)
    postings.prefetch(np.array([0]))
    first = postings._advised_ms.copy()
    postings.prefetch(np.array([0, 1]))
    assert postings._advised_ms[0] == first[0] and postings._advised_ms[1] > first[1]  # 0 was recent
    postings.prefetch(np.array([0]), recent_s=0.0)
    assert postings._advised_ms[0] >= first[0]
    postings.drop_cache()  # our own eviction: the next prefetch advises everything again
    postings.prefetch(np.array([1]))
    assert postings._advised_ms[0] < first[0] and postings._advised_ms[1] >= first[0]


def test_scan_without_tombstones_skips_the_flags_and_finds_the_same():
    x = awkward_vectors(203, 5)
    postings = PostingFile(DIM, "float16")
    postings.write_all([np.arange(0, 120), np.arange(80, 200)], x[:200])
    queries, probe = awkward_vectors(5, 6), np.tile([0, 1], (5, 1))
    head_rows, head_vecs, alive = np.array([200, 201]), x[200:202], np.ones(203, dtype=bool)
    fast = postings.scan(queries, probe, head_rows, head_vecs, alive, 10, all_alive=True)
    checked = postings.scan(queries, probe, head_rows, head_vecs, alive, 10, all_alive=False)
    assert np.array_equal(fast[0], checked[0]) and np.array_equal(fast[1], checked[1])
    alive[fast[0][0, 0]] = False  # a tombstone: the default (None) notices it
    assert fast[0][0, 0] not in postings.scan(queries, probe, head_rows, head_vecs, alive, 10)[0][0]
