"""Long runs that stop cleanly and resume: Ctrl-C ends the current step, the caller saves, then it
stops; `read_checkpoint` reads what it saved.

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
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Interrupted", "read_checkpoint", "stop_requests"]


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


def read_checkpoint(path: str | os.PathLike, writer: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (no pickled code runs); a truncated or
    foreign file is one ValueError naming it and ``writer``, the function that writes such files.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError):
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, or not written by {writer}); "
            "delete it to start over"
        ) from None
