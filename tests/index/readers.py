"""Readers in threads while the test writes: `with searching_in_threads(read): ...commits...`."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def searching_in_threads(read: Callable[[], None], threads: int = 2,
                         join_timeout: float = 120) -> Iterator[None]:
    """Call `read()` over and over in `threads` threads for as long as the block runs; the
    first exception a reader raised is re-raised when the block ends."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                read()
            except Exception as error:  # noqa: BLE001 - surfaced below
                errors.append(error)
                return

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=join_timeout)
    assert not errors, errors[0]
