"""Warm start of `codehop serve`: load what the first completion needs before it is asked for.

Without it, the first completion an editor sends pays for loading (or converting) the
generator and indexing the repository: 25.8 s measured with SmolLM2 on a fresh machine, which
Tabby's agent flags as `slowCompletionResponseTime` and most editors give up on.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


def warm_up_completions(resources: Any) -> float:
    """Load the generator, the repository index and its completer into `resources` (a
    codehop.rest_resources.Resources), exactly as the first completion request would.

    Returns:
        The seconds it took.
    """
    started = time.perf_counter()
    generator = resources.generator()
    if resources.repo_root is not None:  # no repository: completions are refused anyway
        resources.completer(generator)
    return time.perf_counter() - started


def start_warm_up(resources: Any) -> threading.Thread:
    """Run warm_up_completions on a daemon thread; the server answers meanwhile (a request
    that needs the generator waits on the same lock and gets the loaded model). A failure is
    printed, not raised: the first request then meets, and reports, the same error."""

    def run() -> None:
        try:
            seconds = warm_up_completions(resources)
        except Exception as error:  # noqa: BLE001 - reported once here, again by the request
            print(f"codehop: warm-up failed ({type(error).__name__}: {error}); the first "
                  "completion will try again and answer with the error", file=sys.stderr, flush=True)
            return
        print(f"codehop: generator and repository ready for completions ({seconds:.1f} s)",
              file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="codehop-warm-up", daemon=True)
    thread.start()
    return thread
