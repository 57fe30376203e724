"""A real HTTP server on 127.0.0.1 that answers from a script: the fault injector for the
OpenAI-compatible clients (429 then success, a stream cut mid-way, a body that is not JSON).

Each path has a queue of replies; a reply is (status, headers, body) where body is bytes, a
dict (sent as JSON) or a list of SSE lines. With `cut=True` the connection is closed after the
body without finishing it. Every request's path and JSON body is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False
    delay_s: float = 0.0  # wait this long before answering (a slow server)


class ScriptedServer:
    def __init__(self) -> None:
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.requests: list[tuple[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                server.requests.append((self.path, body))
                queue = server.replies.get(self.path)
                reply = queue.popleft() if queue else Reply(404, {"error": {"message": "no such route"}})
                time.sleep(reply.delay_s)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, list):  # SSE lines
                    payload = "".join(f"{line}\n\n" for line in reply.body).encode()
                    content_type = "text/event-stream"
                elif isinstance(reply.body, (dict, type(None))):
                    payload = json.dumps(reply.body or {}).encode()
                    content_type = "application/json"
                else:
                    payload = reply.body if isinstance(reply.body, bytes) else str(reply.body).encode()
                    content_type = "text/plain"
                self.send_response(reply.status)
                self.send_header("content-type", content_type)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.cut:
                    self.send_header("content-length", str(len(payload) + 1000))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def script(self, path: str, *replies: Reply) -> None:
        self.replies[path].extend(replies)

    def bodies(self, path: str) -> list[Any]:
        return [body for seen, body in self.requests if seen == path]

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
