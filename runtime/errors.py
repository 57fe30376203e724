"""The one exception hierarchy of codehop.

Every layer raises these; the faces map them once: to one line and an exit code in the CLI,
to HTTP status codes in rest.py, to JSON-RPC errors in lsp.py. Messages say how to fix it.
"""


class CodehopError(Exception):
    """Base of every error a user may see. The message is one line that names the problem."""

    exit_code = 1
    http_status = 500


class InvalidInputError(CodehopError):
    """The caller gave something unusable: empty query, bad parameter, malformed record."""

    exit_code = 2
    http_status = 422


class NotFoundError(CodehopError):
    """A named thing (path, collection, document, model) does not exist."""

    exit_code = 3
    http_status = 404


class CorruptIndexError(CodehopError):
    """An on-disk index or store is unreadable, truncated, or of an unknown format version."""

    exit_code = 4
    http_status = 500


class ModelNotFoundError(NotFoundError):
    """A model name resolved to no local path, no installed package and no reachable hub."""


class MissingDependencyError(CodehopError):
    """An optional stack (vllm, ray, llama.cpp, faiss-gpu) is needed but not installed."""

    exit_code = 5
    http_status = 501


class ConflictError(CodehopError):
    """The request conflicts with current state (e.g. a collection that already exists)."""

    exit_code = 6
    http_status = 409


class ModelServerError(CodehopError):
    """A model server (an OpenAI-compatible backend) is unreachable, timed out, answered with
    an error status or sent something malformed. The message names the URL and the status."""

    exit_code = 7
    http_status = 502

    def __init__(self, message: str, status: int | None = None, detail: str = "",
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail  # the server's own error message, for callers that act on its cause
        self.timed_out = timed_out  # no answer within timeout_s (a smaller request may fit)


class EmbedderMismatchError(CodehopError):
    """Vectors from one embedding model would be mixed with a collection built by another."""

    exit_code = 8
    http_status = 409


class OverloadedError(CodehopError):
    """The server's generation queue is full: try again after `retry_after` seconds (sent as
    the `Retry-After` header), or raise [server] generation_queue / generation_concurrency."""

    exit_code = 9
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientGoneError(CodehopError):
    """The client disconnected before its answer was ready; its generation was dropped. Nobody
    reads this status: it exists so that logs and /metrics count such requests (499, nginx's
    'client closed request')."""

    exit_code = 10
    http_status = 499
