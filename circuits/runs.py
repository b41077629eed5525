"""Long runs that stop cleanly: Ctrl-C ends the current step, the caller saves, then it stops.

    with stop_requests() as requested:
        for step in range(start, steps):
            ...                                   # one whole step
            if requested():
                save(step + 1)
                raise Interrupted(f"stopped after step {step + 1}; saved to {path}")

Inside the block the first SIGINT only sets the flag that ``requested()`` reads; a second one
raises ``KeyboardInterrupt`` at once. Outside the main thread (where Python delivers no signals)
``requested()`` is always False. The previous handler is restored when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["Interrupted", "stop_requests"]


class Interrupted(KeyboardInterrupt):
    """A run stopped at a step boundary after Ctrl-C, its state saved (the message says where)."""


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Defer Ctrl-C to the end of the current step; yields ``requested() -> bool``."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    seen: list[bool] = []

    def handler(signum, frame):
        if seen:
            raise KeyboardInterrupt
        seen.append(True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)
