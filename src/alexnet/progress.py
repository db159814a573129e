"""Progress bars for a terminal, nothing for a log file.

A tqdm bar redraws itself with carriage returns, which a log file keeps as one long
garbled line; the commands print their own summary lines, so off a terminal the bar is
simply off (training logs plain lines every ``run.log_every`` steps instead).
"""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int, desc: str, unit: str = "img", enabled: bool = True) -> Any:
    """A tqdm bar on stderr when it is a terminal and ``enabled``; else a silent one."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
        disable=not (enabled and sys.stderr.isatty()),
    )  # fmt: skip
