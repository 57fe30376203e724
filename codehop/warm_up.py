"""Warm start of `codehop serve`: load what the first completion needs before it is asked for.

Without it, the first completion an editor sends pays for loading (or converting) the
generator and indexing the repository: 25.8 s measured with SmolLM2 on a fresh machine, which
Tabby's agent flags as `slowCompletionResponseTime` and most editors give up on.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WarmUpStatus:
    """How far the warm start got, for /health and the web page.

    state: "loading" (percentage and message say which step), "ready" or "failed" (error).
    """

    state: str = "loading"
    percentage: int = 0
    message: str = ""
    seconds: float | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # set when ready or failed

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "percentage": self.percentage, "message": self.message,
                "seconds": self.seconds, "error": self.error}


def warm_up_completions(resources: Any, status: WarmUpStatus | None = None) -> float:
    """Load the generator, the repository index and its completer into `resources` (a
    codehop.rest_resources.Resources), exactly as the first completion request would: the
    shipped GGUF converted once per machine into the model cache when due, the model loaded,
    two tokens decoded (torch's first call is slow), then the completer. Each step updates
    `status` and prints "codehop: loading model N%: step" on stderr.

    Returns:
        The seconds it took.
    """
    from codehop.model_setup import generator_load_steps

    status = status if status is not None else WarmUpStatus()
    started = time.perf_counter()
    done = 0
    for message, weight in generator_load_steps(resources.settings):
        status.percentage, status.message = done, message
        print(f"codehop: loading model {done}%: {message}", file=sys.stderr, flush=True)
        if message.startswith("converting"):
            from rag.llm import model_source

            model_source(resources.settings.generator.model)
        elif message.startswith("loading"):
            resources.generator()
        else:
            from runtime.generation import GenerationConfig

            resources.generator().complete("def main():", GenerationConfig(max_new_tokens=2))
        done += weight
    generator = resources.generator()
    if resources.repo_root is not None:  # no repository: completions are refused anyway
        status.percentage, status.message = 95, "indexing the repository for completions"
        resources.completer(generator)
    seconds = time.perf_counter() - started
    status.state, status.percentage, status.message, status.seconds = "ready", 100, "", round(seconds, 1)
    return seconds


def start_warm_up(resources: Any) -> threading.Thread:
    """Run warm_up_completions on a daemon thread; the server answers meanwhile (a request
    that needs the generator waits on the same lock and gets the loaded model). A failure is
    printed, not raised: the first request then meets, and reports, the same error."""

    status = WarmUpStatus()
    resources.warm_up = status  # shown in /health while it runs and after

    def run() -> None:
        try:
            seconds = warm_up_completions(resources, status)
        except Exception as error:  # noqa: BLE001 - reported once here, again by the request
            status.state, status.error = "failed", f"{type(error).__name__}: {error}"
            status.done.set()
            print(f"codehop: warm-up failed ({type(error).__name__}: {error}); the first "
                  "completion will try again and answer with the error", file=sys.stderr, flush=True)
            return
        print(f"codehop: generator and repository ready for completions ({seconds:.1f} s)",
              file=sys.stderr, flush=True)
        status.done.set()

    thread = threading.Thread(target=run, name="codehop-warm-up", daemon=True)
    thread.start()
    return thread
