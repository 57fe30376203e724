"""Cooperative cancellation of a running generation: part of the generation contract.

A face (the REST server) runs each request's generation on a worker thread; when the client
goes away it sets the request's event. Backends with their own decoding loop (rag.llm's
TransformersGenerator) call `cancel_requested()` once per token and stop there, so a model is
not held for an answer nobody will read. The event travels in a ContextVar, not in
GenerationConfig, because the pipeline and the agent build their own configs deep inside;
the face sets it once around the whole request:

    with cancellable(event):       # on the worker thread
        pipeline.run(question)     # every generate() in here stops once event.is_set()

Backends that hand a whole generation to a server (openai, vllm) cannot stop it midway; the
face still drops the request between generations.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_CANCEL: ContextVar[threading.Event | None] = ContextVar("codehop_generation_cancel", default=None)


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Generations run inside this block stop at their next token once `event` is set."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def cancel_requested() -> bool:
    """True when the generation running in this context should stop now."""
    event = _CANCEL.get()
    return event is not None and event.is_set()
