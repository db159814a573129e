"""Ctrl-C and SIGTERM for the commands that stop by unwinding (``prepare``, ``experiment``,
and the inference commands: ``evaluate``, ``predict``, ``features``, ``neighbors``).

The handler raises KeyboardInterrupt, as Python's own Ctrl-C handler does, and also
remembers the signal: Python prints and drops an exception raised inside a finalizer (a
``__del__``, such as zipfile's, which runs as ``np.savez`` returns), so a signal handled
there would be lost and the job would run to the end. Long jobs call :func:`check` at
safe points to raise it again. (Training stops differently: it finishes the step and
saves a checkpoint, :class:`alexnet.engine.rundir.StopFlag`.)
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

_received: list[str] = []


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


@contextlib.contextmanager
def raising(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block each of ``signals`` raises KeyboardInterrupt (main thread only),
    and a dropped one prints no "Exception ignored" traceback: :func:`check` raises it."""
    old = {s: signal.signal(s, _raise) for s in signals}
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (unraisable.exc_type is KeyboardInterrupt and _received):
            previous_hook(unraisable)

    sys.unraisablehook = hook
    _received.clear()
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.unraisablehook = previous_hook
        _received.clear()


def check() -> None:
    """Raise KeyboardInterrupt if a signal came whose exception was dropped."""
    if _received:
        raise KeyboardInterrupt(f"stopped by {_received[0]}")
