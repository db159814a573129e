"""Progress: a redrawing bar on a terminal, a plain line every ~10% in a log file.

A tqdm bar redraws itself with carriage returns, which a log file keeps as one long
garbled line; off a terminal :func:`bar` prints a short line at each tenth of the work
(or every ``every_s`` seconds, whichever comes first) instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class _Lines:
    """The part of tqdm's interface the commands use, as plain lines on stderr."""

    def __init__(self, total: int, desc: str, unit: str, every_s: float) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.postfix = 0, ""
        self.t0 = self.last_t = time.perf_counter()
        self.next_tenth = 1

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        tenth = self.n * 10 // max(self.total, 1)
        if tenth >= self.next_tenth or now - self.last_t >= self.every_s:
            self.next_tenth = tenth + 1
            self.last_t = now
            self._line(now)

    def _line(self, now: float) -> None:
        rate = self.n / max(now - self.t0, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{pct}, "
            f"{rate:,.0f} {self.unit}/s{extra}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        pass


def bar(
    total: int, desc: str, unit: str = "img", enabled: bool = True, every_s: float = 60.0
) -> Any:
    """A tqdm bar on stderr when it is a terminal; progress lines when it is not; nothing
    when not ``enabled``."""
    if enabled and not sys.stderr.isatty():
        return _Lines(total, desc, unit, every_s)
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
        disable=not enabled,
    )  # fmt: skip
