"""Request counts and latency histograms for /metrics, in the Prometheus text format (0.0.4).

A pure ASGI middleware (not BaseHTTPMiddleware, which buffers streaming responses) labels each
request with its route template ("/v1/collections/{name}"), never the raw path, so that label
cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds; search is ~ms, generation ~s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Thread-safe counters: requests by (method, route, status), latency by (method, route),
    editor events (Tabby's POST /v1/events) by type."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.events: dict[str, int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            counts = self.buckets.setdefault((method, route), [0] * (len(BUCKETS) + 1))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1  # +Inf
            self.sums[(method, route)] += seconds

    def count_event(self, kind: str) -> None:
        """One editor event of `kind` (the caller bounds the set of kinds)."""
        with self._lock:
            self.events[kind] += 1

    def render(self) -> str:
        def labels(**kv) -> str:
            return ",".join(f'{k}="{v}"' for k, v in kv.items())

        lines = ["# HELP codehop_requests_total HTTP requests by method, route and status.",
                 "# TYPE codehop_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f"codehop_requests_total{{{labels(method=method, route=route, status=status)}}} {n}")
            lines += ["# HELP codehop_request_duration_seconds Time to the response headers.",
                      "# TYPE codehop_request_duration_seconds histogram"]
            for (method, route), counts in sorted(self.buckets.items()):
                base = labels(method=method, route=route)
                for bound, n in zip([*map(str, BUCKETS), "+Inf"], counts):
                    lines.append(f'codehop_request_duration_seconds_bucket{{{base},le="{bound}"}} {n}')
                lines.append(f"codehop_request_duration_seconds_sum{{{base}}} {self.sums[(method, route)]:.6f}")
                lines.append(f"codehop_request_duration_seconds_count{{{base}}} {counts[-1]}")
            lines += ["# HELP codehop_tabby_events_total Completion events posted by Tabby clients, by type.",
                      "# TYPE codehop_tabby_events_total counter"]
            for kind, n in sorted(self.events.items()):
                lines.append(f"codehop_tabby_events_total{{{labels(type=kind)}}} {n}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.observe(scope["method"], route, status[0],
                                     time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, send_wrapper)
