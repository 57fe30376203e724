"""index.files: regular files only (no open that can block), text in any confidently detected encoding."""

import os
import threading

import pytest

from index.files import FileText, decode, read_bytes, read_file, regular_file_reason
from tests.special_files import special_files


def test_a_fifo_is_refused_before_any_open_and_never_blocks(tmp_path):
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    result = []
    reader = threading.Thread(target=lambda: result.append(read_file(fifo, 1 << 20)), daemon=True)
    reader.start()
    reader.join(5)  # before the fix this open() waited for a writer forever
    assert not reader.is_alive() and result[0].text is None
    assert result[0].reason == "not a regular file (FIFO)"


def test_sockets_devices_directories_and_dangling_links_say_what_they_are(tmp_path):
    with special_files(tmp_path) as expected:
        for name, reason in expected.items():
            assert regular_file_reason(tmp_path / name) == reason
            assert read_file(tmp_path / name, 1 << 20) == FileText(None, reason=reason)
    assert regular_file_reason(tmp_path) == "not a regular file (directory)"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert regular_file_reason(tmp_path / "dangling") == "dangling link"
    assert read_bytes(tmp_path / "nowhere", 10) == (None, "unreadable (no such file)")
    null = read_file(os.devnull, 1 << 20)  # a character device that every machine has
    assert null.text is None and null.reason == "not a regular file (character device)"


def test_size_limit_and_binary_data(tmp_path):
    (tmp_path / "big.txt").write_text("x" * 100)
    assert read_file(tmp_path / "big.txt", 99).reason == "larger than 99 bytes"
    assert read_file(tmp_path / "big.txt", 100).text == "x" * 100
    assert decode(b"\x7fELF\x00\x01\x02\x03" * 50).reason == "binary file"
    assert decode(b"\x00\x01binary").reason == "binary file"  # the detector alone calls it UTF-16
    noise = bytes(b for b in os.urandom(4000) if b) + b"\x81\x8d\x8f\x90\x9d" * 40
    assert decode(noise).text is None  # random bytes are no text in any encoding


@pytest.mark.parametrize("text,encoding,expected", [
    ("Le café où nous mangeons est très réputé; la crème brûlée coûte cher.\n", "latin-1", "cp1252"),
    ("Résumé\n", "latin-1", "cp1252"),  # too short for language detection: the Western page wins the tie
    ("def prix():\n    # “cher” – 3 €\n    return 3\n", "cp1252", "cp1252"),
    ("Привет мир, это тестовый файл для проверки кодировки.\n", "cp1251", "cp1251"),
    ("Zażółć gęślą jaźń, to jest polski tekst w kodowaniu.\n", "cp1250", "cp1250"),
    ("Hello wörld, grüße\n", "utf-16", "utf-16"),
    ("Hello wörld, grüße\n", "utf-32", "utf-32"),
    ("Hello world, the quick brown fox\n", "utf-16-le", "utf_16_le"),  # no byte-order mark
    ("plain ascii and ünïcode\n", "utf-8", "utf-8"),
    ("with a byte-order mark\n", "utf-8-sig", "utf-8"),
])
def test_text_in_other_encodings_is_decoded_and_its_encoding_named(text, encoding, expected):
    decoded = decode(text.encode(encoding))
    assert (decoded.text, decoded.encoding, decoded.reason) == (text, expected, "")


def test_an_uncertain_encoding_is_skipped_with_the_candidates_named():
    # Three words whose bytes are letters in Cyrillic, Greek and Hebrew code pages alike (and
    # not the Western page's text of any of them): too short to tell which.
    decoded = decode(b"\xc4\xe5\xf0 \xf3\xf4\xe5\n")
    assert decoded.text is None
    assert decoded.reason.startswith("text in an uncertain encoding (could be ")
    assert "cp1251" in decoded.reason and "cp1253" in decoded.reason
    assert decode(bytes(range(0x80, 0x100))).reason == "not text in any encoding detected with confidence"
