"""Reading one source file safely: regular files only, no open that can block, any text encoding.

- Only a regular file is opened. Its type is checked with `stat` on the path (which follows a
  link to its target) before any open: opening a FIFO waits for a writer forever, and opening
  a device can have effects of its own (a watchdog, a tape rewind). The open itself is
  non-blocking and the opened file must be the one that was checked (same device and inode),
  so a path swapped for a FIFO in between fails instead of hanging.
- Text is UTF-8 (a BOM is dropped), UTF-16/32 with a BOM, or whatever charset-normalizer
  detects with confidence (Latin-1 / cp1252, cp1251, Shift-JIS, BOM-less UTF-16, ...). A file
  whose encoding stays uncertain is skipped with the candidates named.

Example: b"caf\\xe9 cr\\xe8me" -> FileText("café crème", "cp1252"); b"\\xff\\xfeh\\x00i\\x00" ->
FileText("hi", "utf-16"); a FIFO -> FileText(None, reason="not a regular file (FIFO)").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Among single-byte code pages charset-normalizer often cannot tell cp1250 from cp1252 on a
# few accented words (both decode "é" alike, "où" differently). When the Western code page
# gives the same text as a tied candidate, or is itself tied, it wins: it is by far the most
# common legacy encoding of source code and docs, and latin-1's printable range is a subset.
_PREFERRED = ("cp1252", "latin_1", "iso8859_15")
_MAX_CHAOS = 0.1  # charset-normalizer's mess ratio above which text is not trusted
_TIE = 0.01
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig", "utf-8"), (b"\xff\xfe\x00\x00", "utf-32-le", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32-be", "utf-32"), (b"\xff\xfe", "utf-16-le", "utf-16"),
         (b"\xfe\xff", "utf-16-be", "utf-16"))


@dataclass(frozen=True)
class FileText:
    """A file's decoded text and encoding, or None and the reason it was skipped."""

    text: str | None
    encoding: str = "utf-8"
    reason: str = ""


def special_kind(mode: int) -> str | None:
    """What a non-regular file is ("FIFO", "socket", ...), None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def regular_file_reason(path: Path) -> str:
    """"" when `path` (followed through links) is a regular file, else why it is not readable
    as one. Never opens the path."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling link" if os.path.islink(path) else "unreadable (no such file)"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    kind = special_kind(mode)
    return "" if kind is None else f"not a regular file ({kind})"


def read_bytes(path: Path, max_bytes: int) -> tuple[bytes | None, str]:
    """(contents, "") of a regular file of at most `max_bytes`, else (None, reason).
    No call here can block on a FIFO, socket or device."""
    try:
        before = os.stat(path)
    except OSError:
        return None, regular_file_reason(path)
    kind = special_kind(before.st_mode)
    if kind is not None:
        return None, f"not a regular file ({kind})"
    if before.st_size > max_bytes:
        return None, f"larger than {max_bytes} bytes"
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})"
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(now.st_mode):
            return None, "replaced while being opened"
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})"
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew after the stat
        return None, f"larger than {max_bytes} bytes"
    return data, ""


def decode(data: bytes) -> FileText:
    """Text and encoding of `data`, or the reason it is not text (see the module docstring)."""
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            try:
                return FileText(data[len(bom):].decode(codec), name)
            except UnicodeDecodeError:
                return FileText(None, reason=f"not {name} text despite its byte-order mark")
    has_nul = b"\x00" in data[:8192]
    if not has_nul:
        try:
            return FileText(data.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return _detect(data, has_nul)


def _detect(data: bytes, has_nul: bool) -> FileText:
    """charset-normalizer's verdict, taken only when it is confident (see _PREFERRED)."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if has_nul:  # NUL bytes: binary, unless the detector and the byte pattern say UTF-16
        wide = _bomless_utf16(data[:8192])
        agreed = [m for m in matches if m.encoding == wide and m.chaos <= _MAX_CHAOS]
        return FileText(str(agreed[0]), wide) if agreed else FileText(None, reason="binary file")
    if not matches or matches[0].chaos > _MAX_CHAOS:
        closest = f" (closest: {matches[0].encoding})" if matches else ""
        return FileText(None, reason=f"not text in any encoding detected with confidence{closest}")
    best = matches[0]
    tied = [m for m in matches
            if m.chaos <= best.chaos + _TIE and m.coherence >= best.coherence - _TIE]
    for name in _PREFERRED:
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        if any(m.encoding == name or str(m) == text for m in tied):
            return FileText(text, name)
    texts = {str(m) for m in tied}
    if len(texts) == 1:
        return FileText(str(best), best.encoding)
    names = ", ".join(m.encoding for m in tied[:4])
    return FileText(None, reason=f"text in an uncertain encoding (could be {names})")


def _bomless_utf16(head: bytes) -> str | None:
    """"utf_16_le" / "utf_16_be" when `head` has the byte pattern of mostly-Latin UTF-16
    (the high byte of most characters zero, the low byte almost never), else None. The
    detector alone calls any NUL-bearing binary UTF-16."""
    even, odd = head[0::2], head[1::2]
    if not odd:
        return None
    zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zeros_odd >= 0.5 and zeros_even <= 0.02:
        return "utf_16_le"
    if zeros_even >= 0.5 and zeros_odd <= 0.02:
        return "utf_16_be"
    return None


def read_file(path: Path, max_bytes: int) -> FileText:
    """The decoded text of the regular file `path`, or the reason it is skipped."""
    data, reason = read_bytes(Path(path), max_bytes)
    if data is None:
        return FileText(None, reason=reason)
    return decode(data)
