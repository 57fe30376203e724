"""Readers in threads while the test writes: `with searching_in_threads(read): ...commits...`;
`slow_store_commits` holds each commit open so that readers search inside it."""

from __future__ import annotations

import threading
import time
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


def slow_store_commits(monkeypatch, store, seconds: float) -> None:
    """Make every transaction of `store` wait `seconds` after its writes, before its COMMIT:
    a Collection commit has then changed its live in-memory indexes while readers' store
    snapshots still lack the commit's rows, long enough for readers to search in between."""
    transaction = store.transaction

    @contextmanager
    def slow() -> Iterator[None]:
        with transaction():
            yield
            time.sleep(seconds)  # not reached when the block raised: that rolls back at once

    monkeypatch.setattr(store, "transaction", slow)
