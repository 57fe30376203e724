"""The REST server's lanes: generation apart from everything cheap.

Generation (ask, chat, completions, agent) takes seconds to minutes on a CPU model; search,
embeddings, /health and /metrics take milliseconds. Served from one thread pool, the cheap
requests queued behind the expensive ones (issue 32: one search waited 34 s behind 48 asks).
So:

- `GenerationLane`: every generation request is admitted into a bounded lane or refused at
  once with 429 and a `Retry-After` computed from measured service times. An admitted request
  runs on the lane's own threads and holds one of `concurrency` model slots (FIFO) only while
  it generates: a stream's producer writes into a buffer the client drains at its own pace,
  and an agent gives its slot back while its tools run. A request whose client disconnects
  leaves the queue, or stops at its next token (runtime.cancel).
- `FastLane`: search, embeddings and /health run on a small executor of their own, so they
  never wait for a generation slot, for the lane's threads, or for Starlette's shared pool.

Example: concurrency 1, queue 2. Asks A, B, C arrive: A generates, B and C wait (queue depth
2); D gets 429 with Retry-After = ceil(EWMA(service s) x 3 / 1); A's client hangs up -> A
stops at its next token, B starts.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

from fastapi import Request

from codehop.rest_metrics import BUCKETS
from runtime.cancel import cancellable
from runtime.errors import ClientGoneError, OverloadedError

T = TypeVar("T")
# Before any generation has finished, Retry-After assumes this many seconds per request.
PRIOR_SERVICE_S = 1.0
EWMA_ALPHA = 0.3  # weight of the newest service time: recent load matters most


class GenerationCancelled(Exception):
    """Internal: the ticket was cancelled (client gone) while it waited or between generations."""


@dataclass(frozen=True)
class LaneStatus:
    """What /health shows of the generation lane."""

    concurrency: int
    queue_size: int
    running: int  # requests holding a model slot now
    queued: int  # requests waiting for a slot now
    admitted: int  # requests in the lane now (running, queued, or an agent between steps)
    admitted_total: int
    rejected_total: int
    cancelled_total: int
    completed_total: int
    wait_s_mean: float
    wait_s_last: float
    service_s_ewma: float | None
    retry_after_s: int


class Ticket:
    """One admitted generation request: its place in the queue, its cancel event, its times."""

    def __init__(self, lane: "GenerationLane") -> None:
        self.lane = lane
        self.cancelled = threading.Event()
        self.admitted_at = lane.clock()
        self.waited_s: float | None = None  # until the first slot
        self.held_s = 0.0
        self.finished = False
        self._depth = 0  # re-entrant holds on one thread (an agent's chat inside a held run)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold a model slot for the block (waits in FIFO order; re-entrant)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.lane._acquire(self)
        self._depth, started = 1, self.lane.clock()
        try:
            yield
        finally:
            self._depth = 0
            self.held_s += self.lane.clock() - started
            self.lane._release()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise GenerationCancelled()

    def cancel(self) -> None:
        """The client went away: leave the queue, stop at the next token."""
        self.lane._cancel(self)


class GenerationLane:
    """Bounded admission and FIFO model slots for generation requests.

    Args:
        concurrency: requests generating at once (1 for a local CPU model: its forwards do
            not run in parallel; more for a model server that batches).
        queue_size: requests that may wait for a slot; one more is refused with 429.
        clock: seconds, monotonic (tests pass a fake one to check Retry-After).
    """

    def __init__(self, concurrency: int, queue_size: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.concurrency, self.queue_size, self.clock = concurrency, queue_size, clock
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._admitted = 0
        # One thread per admitted request: a request waiting for its slot blocks its own
        # thread, never Starlette's pool; admission bounds their number.
        self._threads = ThreadPoolExecutor(concurrency + queue_size, thread_name_prefix="codehop-generation")
        self.admitted_total = self.rejected_total = self.cancelled_total = self.completed_total = 0
        self._wait_sum, self._wait_count, self._wait_last = 0.0, 0, 0.0
        self._wait_buckets = [0] * (len(BUCKETS) + 1)
        self._ewma: float | None = None

    def close(self) -> None:
        with self._cond:
            for ticket in list(self._waiting):
                ticket.cancelled.set()
            self._cond.notify_all()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # ---- admission and slots (any thread)

    def admit(self) -> Ticket:
        """A ticket for one request, or OverloadedError (429) when the lane is full."""
        with self._cond:
            if self._admitted >= self.concurrency + self.queue_size:
                self.rejected_total += 1
                retry = self._retry_after()
                raise OverloadedError(
                    f"the generation queue is full ({self._running} generating, {len(self._waiting)} "
                    f"waiting, [server] generation_queue = {self.queue_size}): retry after {retry} s",
                    retry_after=retry)
            self._admitted += 1
            self.admitted_total += 1
            return Ticket(self)

    def _retry_after(self) -> int:
        """Seconds until a new request would reach a slot: the measured service time (EWMA)
        times its queue position, over the slots that serve the queue."""
        service = self._ewma if self._ewma is not None else PRIOR_SERVICE_S
        return max(1, math.ceil(service * (len(self._waiting) + 1) / self.concurrency))

    def _acquire(self, ticket: Ticket) -> None:
        with self._cond:
            self._waiting.append(ticket)
            self._cond.notify_all()  # the queue depth changed (wait_until watchers)
            self._cond.wait_for(lambda: ticket.cancelled.is_set() or (
                self._running < self.concurrency and self._waiting[0] is ticket))
            self._waiting.remove(ticket)
            self._cond.notify_all()  # the next in line may be at the head now
            if ticket.cancelled.is_set():
                raise GenerationCancelled()
            self._running += 1
            if ticket.waited_s is None:
                self._record_wait(ticket, self.clock() - ticket.admitted_at)

    def _record_wait(self, ticket: Ticket, seconds: float) -> None:
        ticket.waited_s = seconds
        self._wait_sum += seconds
        self._wait_count += 1
        self._wait_last = seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self._wait_buckets[i] += 1
        self._wait_buckets[-1] += 1

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _cancel(self, ticket: Ticket) -> None:
        with self._cond:
            if not ticket.finished and not ticket.cancelled.is_set():
                self.cancelled_total += 1
            ticket.cancelled.set()
            self._cond.notify_all()

    def _finish(self, ticket: Ticket) -> None:
        with self._cond:
            ticket.finished = True
            self._admitted -= 1
            if ticket.held_s and not ticket.cancelled.is_set():
                self.completed_total += 1
                self._ewma = ticket.held_s if self._ewma is None else (
                    EWMA_ALPHA * ticket.held_s + (1 - EWMA_ALPHA) * self._ewma)
            self._cond.notify_all()

    def wait_until(self, predicate: Callable[[LaneStatus], bool], timeout: float) -> bool:
        """Block until `predicate(status())` holds (True) or `timeout` passes (False): tests and
        benchmarks synchronise on the lane's state instead of sleeping."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._status()), timeout)

    # ---- running requests (event loop)

    def _job(self, ticket: Ticket, work: Callable[[Ticket], T]) -> T:
        try:
            with cancellable(ticket.cancelled):
                ticket.check()
                return work(ticket)
        finally:
            self._finish(ticket)

    async def call(self, request: Request, work: Callable[[Ticket], T]) -> T:
        """Admit the request (429 when full), run `work(ticket)` on the lane's threads and
        return its result; `work` takes `with ticket.hold():` around what uses the model. A
        client that disconnects first gets ClientGoneError (499) and its work is cancelled."""
        ticket = self.admit()
        future = self._submit(ticket, work)
        return await _unless_gone(request, future, ticket)

    def _submit(self, ticket: Ticket, work: Callable[[Ticket], Any]) -> asyncio.Future:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, self._job, ticket, work)
        except BaseException:
            self._finish(ticket)
            raise
        # A cancelled request's work ends with GenerationCancelled that nobody awaits.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    async def stream(self, request: Request, produce: Callable[[Ticket], Iterator[str]],
                     capacity: int) -> AsyncIterator[str]:
        """Admit the request and run `produce(ticket)` on the lane's threads into a buffer of
        `capacity` pieces that the response drains at the client's pace.

        The producer holds the model (ticket.hold inside `produce`) only while it generates:
        `capacity` must be at least what one request can produce (max_tokens plus its events),
        so it never waits for a slow client. The first piece is awaited here, before any
        header is sent: errors up to then (404, 422, 499) keep their status.
        """
        ticket = self.admit()
        loop = asyncio.get_running_loop()
        buffer: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(capacity)

        def put(item: Any) -> None:
            room.acquire()  # by the capacity contract this never waits
            loop.call_soon_threadsafe(buffer.put_nowait, item)

        def run(ticket: Ticket) -> None:
            pieces = produce(ticket)
            try:
                for piece in pieces:
                    ticket.check()  # the client is gone: stop producing
                    put(piece)
            except BaseException as error:  # handed to the response, raised there
                put(_Failed(error))
                return
            finally:
                # Closing the generator now (not at garbage collection) leaves its
                # `ticket.hold()` and the model's own lock at once.
                getattr(pieces, "close", lambda: None)()
            put(_END)

        self._submit(ticket, run)
        first = await _unless_gone(request, asyncio.ensure_future(buffer.get()), ticket)
        if isinstance(first, _Failed):
            raise first.error
        return _drain(first, buffer, room, ticket)

    # ---- reports

    def status(self) -> LaneStatus:
        with self._cond:
            return self._status()

    def _status(self) -> LaneStatus:
        mean = self._wait_sum / self._wait_count if self._wait_count else 0.0
        return LaneStatus(self.concurrency, self.queue_size, self._running, len(self._waiting),
                          self._admitted, self.admitted_total, self.rejected_total,
                          self.cancelled_total, self.completed_total, round(mean, 6),
                          round(self._wait_last, 6),
                          None if self._ewma is None else round(self._ewma, 6), self._retry_after())

    def render_metrics(self) -> str:
        """The lane in the Prometheus text format, appended to /metrics."""
        s = self.status()
        lines = [
            "# HELP codehop_generation_queue_depth Generation requests waiting for a model slot.",
            "# TYPE codehop_generation_queue_depth gauge",
            f"codehop_generation_queue_depth {s.queued}",
            "# HELP codehop_generation_running Generation requests holding a model slot.",
            "# TYPE codehop_generation_running gauge",
            f"codehop_generation_running {s.running}",
            "# HELP codehop_generation_rejected_total Generation requests refused with 429 (queue full).",
            "# TYPE codehop_generation_rejected_total counter",
            f"codehop_generation_rejected_total {s.rejected_total}",
            "# HELP codehop_generation_cancelled_total Generation requests dropped because the client went away.",
            "# TYPE codehop_generation_cancelled_total counter",
            f"codehop_generation_cancelled_total {s.cancelled_total}",
            "# HELP codehop_generation_service_seconds_ewma Recent time a request holds the model (EWMA).",
            "# TYPE codehop_generation_service_seconds_ewma gauge",
            f"codehop_generation_service_seconds_ewma {s.service_s_ewma or 0.0:.6f}",
            "# HELP codehop_generation_wait_seconds Time from admission to the first model slot.",
            "# TYPE codehop_generation_wait_seconds histogram",
        ]
        with self._cond:
            counts, total, n = list(self._wait_buckets), self._wait_sum, self._wait_count
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
            lines.append(f'codehop_generation_wait_seconds_bucket{{le="{bound}"}} {count}')
        lines += [f"codehop_generation_wait_seconds_sum {total:.6f}",
                  f"codehop_generation_wait_seconds_count {n}"]
        return "\n".join(lines) + "\n"


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


async def _drain(first: Any, buffer: asyncio.Queue, room: threading.Semaphore,
                 ticket: Ticket) -> AsyncIterator[str]:
    """The buffered pieces; when the response stops early (client gone: Starlette cancels the
    stream), the ticket is cancelled so the producer stops and frees its slot."""
    item = first
    try:
        while item is not _END:
            room.release()
            if isinstance(item, _Failed):
                raise item.error
            yield item
            item = await buffer.get()
    finally:
        if item is not _END:
            ticket.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects. The body has been read, so the next ASGI message
    is the disconnect (uvicorn sends it when the connection closes; no polling)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, pending: asyncio.Future, ticket: Ticket) -> Any:
    """`pending`'s result, unless the client disconnects first: then the ticket is cancelled
    (it leaves the queue or stops at its next token) and ClientGoneError is raised."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({pending, gone}, return_when=asyncio.FIRST_COMPLETED)
        if pending in done:
            return pending.result()
        ticket.cancel()
        pending.cancel()  # a stream's first read must not swallow a later piece
        raise ClientGoneError("the client disconnected before its generation finished")
    except asyncio.CancelledError:  # the server is stopping this request
        ticket.cancel()
        raise
    finally:
        gone.cancel()


class FastLane:
    """A small executor for cheap requests (search, embeddings, /health): they never share
    threads with generation, and never wait for Starlette's shared pool either."""

    def __init__(self, threads: int) -> None:
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="codehop-fast")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def get_lane(request: Request) -> GenerationLane:
    return request.app.state.lane


def get_fast(request: Request) -> FastLane:
    return request.app.state.fast
