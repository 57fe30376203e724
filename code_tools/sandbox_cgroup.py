"""The cgroup that holds one jail: memory, process count and CPU share of the whole tree.

cgroup v2 (memory.max, pids.max, cpu.max) when this process sits in a v2 hierarchy whose
subtree_control enables memory and pids; else v1 (memory, pids and, when mounted, cpu
hierarchies: memory.limit_in_bytes, pids.max, cpu.cfs_quota_us). `available()` probes once.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import time
from pathlib import Path

# cpu.max / cpu.cfs_quota_us period: 100 ms, the kernel's default.
CPU_PERIOD_US = 100_000


class Cgroup:
    """One child cgroup holding a jail."""

    _names = itertools.count()

    def __init__(self, kind: str, memory_bytes: int, pids: int, cpu_share: float | None = None) -> None:
        self.kind = kind
        name = f"codehop-sandbox-{os.getpid()}-{next(self._names)}"
        self.dirs = [base / name for base in cgroup_bases(kind)]
        self.cpu_limited = False
        for directory in self.dirs:
            directory.mkdir()
        try:
            if kind == "cgroup2":
                self._write("memory.max", memory_bytes)
                self._write("memory.swap.max", 0, optional=True)
                self._write("memory.oom.group", 1, optional=True)
                self._write("pids.max", pids)
            else:
                self._write("memory.limit_in_bytes", memory_bytes)
                self._write("memory.memsw.limit_in_bytes", memory_bytes, optional=True)
                self._write("pids.max", pids)
            if cpu_share is not None:
                self.cpu_limited = self._limit_cpu(cpu_share)
        except OSError:
            self.remove()
            raise
        self.procs = [str(d / "cgroup.procs") for d in self.dirs]

    def _limit_cpu(self, share: float) -> bool:
        """CPU time per period of the whole tree: `share` CPUs. False where no cpu controller."""
        quota = max(1000, int(share * CPU_PERIOD_US))
        if self.kind == "cgroup2" and (self.dirs[0] / "cpu.max").exists():
            (self.dirs[0] / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            return True
        for directory in self.dirs:
            if (directory / "cpu.cfs_quota_us").exists():
                (directory / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (directory / "cpu.cfs_quota_us").write_text(str(quota))
                return True
        return False

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        for directory in self.dirs:
            if (directory / name).exists():
                (directory / name).write_text(str(value))
                return
        if not optional:
            raise OSError(f"no {name} in {self.dirs}")

    def oom_kills(self) -> int:
        for directory in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    text = (directory / name).read_text()
                except OSError:
                    continue
                match = re.search(r"^oom_kill (\d+)", text, re.M)
                if match:
                    return int(match.group(1))
        return 0

    def kill_all(self) -> None:
        if self.kind == "cgroup2" and (self.dirs[0] / "cgroup.kill").exists():
            (self.dirs[0] / "cgroup.kill").write_text("1")
            return
        for procs in self.procs:
            for pid in Path(procs).read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def empty(self) -> bool:
        """True when no process of the jail is left (so its files can be swept safely)."""
        try:
            return all(not Path(procs).read_text().split() for procs in self.procs)
        except OSError:
            return True

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (a cgroup with tasks cannot be removed)."""
        deadline = time.monotonic() + 5
        for directory in self.dirs:
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    try:
                        self.kill_all()
                    except OSError:
                        pass
                    time.sleep(0.01)

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def available() -> str:
        """"cgroup2" or "cgroup1" when a child cgroup with memory+pids limits works, else ""."""
        for kind in ("cgroup2", "cgroup1"):
            try:
                if not cgroup_bases(kind):
                    continue
                probe = Cgroup(kind, 64 * 2**20, 8)
                probe.remove()
                return kind
            except OSError:
                continue
        return ""

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def cpu_available() -> bool:
        """True when the cgroup kind in use also caps the tree's CPU share."""
        kind = Cgroup.available()
        if not kind:
            return False
        try:
            probe = Cgroup(kind, 64 * 2**20, 8, cpu_share=1.0)
        except OSError:
            return False
        probe.remove()
        return probe.cpu_limited


def cgroup_bases(kind: str) -> list[Path]:
    """This process's cgroup directories: one for v2; memory, pids (and cpu if mounted) for v1."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            mount_point = Path(left.split()[4])
            if fstype == "cgroup2" and kind == "cgroup2":
                mounts.setdefault("", mount_point)
            elif fstype == "cgroup" and kind == "cgroup1":
                for controller in ("memory", "pids", "cpu"):
                    if controller in options.split(","):
                        mounts.setdefault(controller, mount_point)
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in (controllers.split(",") if controllers else [""]):
                paths[controller] = path.lstrip("/")
    wanted = [""] if kind == "cgroup2" else ["memory", "pids"]
    if any(c not in mounts for c in wanted):
        return []
    if kind == "cgroup1" and "cpu" in mounts and mounts["cpu"] not in (mounts["memory"], mounts["pids"]):
        wanted.append("cpu")  # optional: the CPU share falls back to nice without it
    bases = []
    for controller in wanted:
        base = mounts[controller] / paths.get(controller, "")
        bases.append(base if base.is_dir() else mounts[controller])
    if kind == "cgroup2":
        enabled = (bases[0] / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            return []
    return bases
