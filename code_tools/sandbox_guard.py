"""Host-side guards of the jail: its uid, its seccomp filter, its keyring, its writable dirs.

- **Who runs the jail.** A user namespace created by root maps the jail's users back to host
  root, and the kernel checks "is this root" for /proc/sys writes, keyrings and per-user
  counters. So when codehop is root, each run gets a fresh unprivileged host uid/gid from
  JAIL_UID_RANGE (no supplementary groups) before bwrap starts; as a user, the jail runs as
  that user (the kernel allows nothing else).
- **seccomp.** A filter (libseccomp through `pyseccomp`, exported as BPF for bwrap's
  `--seccomp`) refuses with EPERM the calls in REFUSED_CALLS, and chmod/open/mknod modes with
  the setuid or setgid bit; AF_VSOCK sockets answer EAFNOSUPPORT. Syscalls of another ABI (i386, x32) kill the process.
- **Writable directories.** WritableDirs snapshots them before the run (owner, mode per inode),
  hands them to the jail uid, measures their growth against the disk quota while the run goes
  on, and afterwards gives pre-existing files back their owners, strips every setuid/setgid bit,
  and, when the quota was exceeded, removes every file the run created.

Example::

    >>> check_writable(["/usr/lib"], ["/usr"])
    Traceback (most recent call last):
    runtime.errors.InvalidInputError: writable path '/usr/lib' overlaps ...
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import platform
import secrets
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from runtime.errors import InvalidInputError, MissingDependencyError

# Host uids handed to jails when codehop is root: far above /etc/subuid's usual 100000+65536*n
# ranges and below 2**31 (some tools mishandle larger uids). One per run, never two runs at once
# in this process, so no two concurrent jails share per-user kernel counters.
JAIL_UID_RANGE = (1_879_048_192, 1_879_048_192 + 2**20)
REFUSED_CALLS = (
    # kernel keyrings: no reading or planting keys
    "keyctl", "add_key", "request_key",
    # large kernel attack surface with a history of escapes
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "userfaultfd",
    "perf_event_open",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "setns", "unshare",
    # the machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon",
    "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup", "iopl", "ioperm",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "fanotify_init",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)
# Calls whose mode argument (index) may carry setuid/setgid bits; openat2 and fchmodat2 pass
# it in a struct or are too new to inspect, so they answer ENOSYS (glibc falls back).
MODE_ARGUMENT = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "open": 2, "openat": 3, "creat": 1,
                 "mknod": 1, "mknodat": 2}
UNINSPECTABLE = ("openat2", "fchmodat2")
_SUID_BITS = stat.S_ISUID | stat.S_ISGID
_AF_VSOCK = 40
# keyctl(2) numbers and KEYCTL_JOIN_SESSION_KEYRING.
_KEYCTL = {"x86_64": 250, "aarch64": 219}
_JOIN_SESSION_KEYRING = 1
# Each file counts at least one block, so a million empty files cannot dodge the quota.
_MIN_FILE_BYTES = 4096
# Directories deeper than this inside a writable directory count as over the quota, and new
# ones are removed: os.fwalk recurses per level, and 1,000 nested directories made by the jail
# raised RecursionError out of run_python.
MAX_DEPTH = 128


# ------------------------------------------------------------------------------ seccomp

@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The jail's seccomp filter as a BPF program for `bwrap --seccomp FD`.

    Raises:
        MissingDependencyError: pyseccomp or libseccomp is not installed.
    """
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as error:  # OSError: libseccomp.so.2 missing
        raise MissingDependencyError(
            f"the sandbox needs libseccomp's Python bindings ({error}): pip install "
            "pyseccomp==0.1.2 and apt-get install libseccomp2") from error
    refused = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in REFUSED_CALLS:
        _refuse(seccomp, refused, name, seccomp.ERRNO(1))
    for name in UNINSPECTABLE:
        _refuse(seccomp, refused, name, seccomp.ERRNO(38))
    # vsock is not network-namespaced: in a VM it reaches the hypervisor's host (CID 2).
    _refuse(seccomp, refused, "socket", seccomp.ERRNO(97), seccomp.Arg(0, seccomp.EQ, _AF_VSOCK))
    for name, index in MODE_ARGUMENT.items():
        for bit in (stat.S_ISUID, stat.S_ISGID):
            _refuse(seccomp, refused, name, seccomp.ERRNO(1), seccomp.Arg(index, seccomp.MASKED_EQ, bit, bit))
    fd = os.memfd_create("codehop-seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            refused.export_bpf(handle)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _refuse(seccomp, refused, name: str, action: int, *args) -> None:
    try:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    except (ValueError, OSError, RuntimeError):
        return  # not a syscall of this architecture (e.g. ioperm on arm64)
    if number < 0:
        return
    refused.add_rule(action, number, *args)


def seccomp_fd() -> int:
    """A fresh memfd holding the BPF program, positioned at 0 (bwrap reads and closes it)."""
    fd = os.memfd_create("codehop-seccomp")
    os.write(fd, seccomp_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ------------------------------------------------------------------------------ the jail's user

class JailUids:
    """Hands out a fresh host uid per concurrent run when root; None (the caller) otherwise."""

    _lock = threading.Lock()
    _in_use: set[int] = set()

    @classmethod
    def claim(cls) -> int | None:
        if os.geteuid() != 0:
            return None
        with cls._lock:
            while True:
                uid = JAIL_UID_RANGE[0] + secrets.randbelow(JAIL_UID_RANGE[1] - JAIL_UID_RANGE[0])
                if uid not in cls._in_use:
                    cls._in_use.add(uid)
                    return uid

    @classmethod
    def release(cls, uid: int | None) -> None:
        with cls._lock:
            cls._in_use.discard(uid)


def drop_to(uid: int | None) -> None:
    """In the child before exec: become `uid` (gid = uid, no groups); then a new session keyring.

    The keyring comes after the uid change so that it belongs to the jail's user; the seccomp
    filter then refuses every keyctl, so the program finds it empty and cannot fill it.
    """
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    number = _KEYCTL.get(platform.machine())
    if number is not None:
        _libc().syscall(number, _JOIN_SESSION_KEYRING, None)


# mount(2) flags and unshare(2)'s CLONE_NEWNS.
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_CLONE_NEWNS = 0x00020000


_stage_lock = threading.Lock()
_stage: list[str] = []  # the process's stage directory, made once


def stage_dir() -> str:
    """An empty directory, traversable by anyone, that the jail's private mounts cover.

    Made once per process under a lock: two runs starting at once in threads each made one
    (functools.lru_cache does not stop a second call while the first runs), and a run whose
    bwrap named its own directory while its child mounted in the other's failed to start.
    """
    with _stage_lock:
        if not _stage:
            # In /tmp whatever TMPDIR says: bwrap, already the jail's uid, must traverse to it.
            path = tempfile.mkdtemp(prefix="codehop-jail-stage-", dir="/tmp")
            os.chmod(path, 0o755)
            atexit.register(_remove_stage, path)
            _stage.append(path)
        return _stage[0]


def _remove_stage(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def staged_paths(count: int) -> list[str]:
    """Where `stage_mounts` puts each of `count` sources, in order (call it in the parent)."""
    root = stage_dir()
    return [os.path.join(root, str(index)) for index in range(count)]


def stage_mounts(sources: Sequence[str], targets: Sequence[str]) -> None:
    """In the child, as root, before drop_to: make `sources` reachable to the jail's uid.

    bwrap opens its bind sources as the unprivileged user it runs as, and an interpreter under
    /root (pyenv), or a scratch directory under a private /tmp/pytest-of-root, is out of that
    user's reach (bwrap's --bind-fd resolves the path again). So the child takes a private
    mount namespace (the host's mounts are untouched, and it dies with the run), covers the
    stage directory with a small tmpfs and bind-mounts each source at its target, the paths
    `staged_paths` gave the parent (a forked child takes no locks: another thread may hold one).
    """
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) for the jail's mounts")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)
    _mount(b"tmpfs", os.path.dirname(targets[0]), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=755,size=64k")
    for source, target in zip(sources, targets, strict=True):
        os.mkdir(target)
        _mount(source.encode(), target, None, _MS_BIND | _MS_REC, None)


def _mount(source: bytes | None, target: str, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    if _libc().mount(source, target.encode(), fstype, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target} for the jail")


@functools.lru_cache(maxsize=1)
def _libc():
    # Loaded before any fork: dlopen in a forked child of a threaded parent can deadlock.
    return ctypes.CDLL(None, use_errno=True)


_libc()


# ------------------------------------------------------------------------------ writable dirs

def check_writable(writable: Sequence[str], readonly: Sequence[str]) -> None:
    """Refuse a writable path that is, contains or lies inside a read-only path of the jail.

    A writable bind over the interpreter or its site-packages would let the program plant a
    `.pth` file or a module that the host's next Python runs.
    """
    for path in writable:
        real = os.path.realpath(path)
        for ro in readonly:
            ro_real = os.path.realpath(ro)
            if _inside(real, ro_real) or _inside(ro_real, real):
                raise InvalidInputError(
                    f"writable path {path!r} overlaps {ro!r}, which the jail mounts read-only "
                    "(the interpreter, its packages or the system): give run_python a scratch "
                    "directory outside them, e.g. tempfile.mkdtemp()")


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@dataclass(frozen=True)
class _Entry:
    uid: int
    gid: int
    mode: int


class WritableDirs:
    """The run's writable directories: ownership for the run and back, quota, clean-up."""

    def __init__(self, paths: Sequence[str], jail_uid: int | None, quota_bytes: int) -> None:
        self.paths = list(paths)
        self.jail_uid = jail_uid
        self.quota_bytes = quota_bytes
        self.before: dict[tuple[int, int], _Entry] = {}
        self.usage_before = 0
        self.exceeded = False
        self.prepared = self.restored = False
        self.too_deep = False

    def prepare(self) -> None:
        """Snapshot owners and modes; as root, give every entry to the jail's uid."""
        self.prepared = True
        devices = {os.lstat(path).st_dev for path in self.paths}
        for dir_fd, name, st in self._entries():
            self.before[(st.st_dev, st.st_ino)] = _Entry(st.st_uid, st.st_gid, st.st_mode)
            self.usage_before += _usage(st)
            if self.jail_uid is not None and _may_hand_over(st, devices):
                os.chown(name, self.jail_uid, self.jail_uid, dir_fd=dir_fd, follow_symlinks=False)

    def over_quota(self) -> bool:
        """True (and remembered) when the run grew these directories past the quota."""
        if self.paths and not self.exceeded:
            grown = sum(_usage(st) for _, _, st in self._entries()) - self.usage_before
            self.exceeded = grown > self.quota_bytes or self.too_deep
        return self.exceeded

    def restore(self) -> None:
        """After the run (every jail process dead): owners back, no setuid/setgid, quota.

        Runs once; the caller also calls it when starting the jail failed half-way.
        """
        if not self.prepared or self.restored:
            return
        self.restored = True
        self.over_quota()
        if self.too_deep:
            self._remove_deep()  # bounds the bottom-up walk below
        owner = self._new_file_owner()
        for dir_fd, name, st in self._entries(bottom_up=True):
            before = self.before.get((st.st_dev, st.st_ino))
            if before is None and self.exceeded and name != ".":
                _remove(dir_fd, name, st)
                continue
            if self.jail_uid is not None:
                uid, gid = (before.uid, before.gid) if before else owner
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_mode & _SUID_BITS and not stat.S_ISLNK(st.st_mode):
                _chmod(dir_fd, name, stat.S_IMODE(st.st_mode) & ~_SUID_BITS)

    def _new_file_owner(self) -> tuple[int, int]:
        """Files the jail created keep a non-root owner: the directory's owner, else the jail's."""
        for path in self.paths:
            st = os.lstat(path)
            if st.st_uid != 0:
                return st.st_uid, st.st_gid
        uid = self.jail_uid if self.jail_uid is not None else os.getuid()
        return uid, uid

    def _remove_deep(self) -> None:
        """Remove the new directories below MAX_DEPTH (with `rm -rf`, which does not recurse)."""
        for top in self.paths:
            for dirpath, dirnames, _, dir_fd in os.fwalk(top, follow_symlinks=False):
                if _depth(dirpath, top) < MAX_DEPTH - 1:
                    continue
                for name in dirnames:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in self.before:
                        subprocess.run(["rm", "-rf", "--one-file-system", "--", name], check=False,
                                       pass_fds=(dir_fd,), preexec_fn=functools.partial(os.fchdir, dir_fd))
                dirnames[:] = []

    def _entries(self, bottom_up: bool = False) -> Iterator[tuple[int, str, os.stat_result]]:
        """(directory fd, name, lstat) of every entry, symlinks never followed; the top as '.'.

        Top-down walks stop MAX_DEPTH levels down and set `too_deep` when there was more.
        """
        for top in self.paths:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(top, topdown=not bottom_up, follow_symlinks=False):
                if not bottom_up:
                    yield dir_fd, ".", os.stat(".", dir_fd=dir_fd, follow_symlinks=False)
                for name in dirnames + filenames:
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode) and not bottom_up:
                        _open_to_owner(dir_fd, name, st)
                    yield dir_fd, name, st
                if bottom_up:
                    yield dir_fd, ".", os.stat(".", dir_fd=dir_fd, follow_symlinks=False)
                elif dirnames and _depth(dirpath, top) >= MAX_DEPTH - 1:
                    self.too_deep = True
                    dirnames[:] = []  # fwalk descends only into what is left here


def _depth(dirpath: str, top: str) -> int:
    return dirpath.count("/") - top.rstrip("/").count("/")


def _may_hand_over(st: os.stat_result, devices: set[int]) -> bool:
    """Whether the jail's uid may own this entry for the run.

    Not a file with other hard links (one may be a host file outside the directory, e.g. in
    a `cp -al` copy), nor anything on another file system mounted inside the directory.
    """
    if st.st_dev not in devices:
        return False
    return stat.S_ISDIR(st.st_mode) or st.st_nlink == 1


def _open_to_owner(dir_fd: int, name: str, st: os.stat_result) -> None:
    """As a user, give the owner back rwx on a directory the jail shut (chmod 000).

    Root walks any directory; a user could not, and what the jail hid in there would escape
    the quota and the sweep. The mode is changed through an O_PATH descriptor opened without
    following links, so a directory swapped for a symlink meanwhile changes nothing else.
    """
    if os.geteuid() == 0 or st.st_uid != os.geteuid() or st.st_mode & stat.S_IRWXU == stat.S_IRWXU:
        return
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError:
        return
    try:
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)
    except OSError:
        pass
    finally:
        os.close(fd)


def _usage(st: os.stat_result) -> int:
    return max(st.st_blocks * 512, _MIN_FILE_BYTES)


def _remove(dir_fd: int, name: str, st: os.stat_result) -> None:
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=dir_fd)  # bottom-up: its new entries went first
        else:
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # a pre-existing file still inside it keeps the directory


def _chmod(dir_fd: int, name: str, mode: int) -> None:
    # Opened without following a link and changed through the descriptor: no path is
    # resolved twice. Sockets cannot be opened and carry no meaningful setuid bit anyway.
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
