"""Crash points for the reliability suite.

`WORKER_CRASH_AT=<point>:<n>` makes the n-th pass through `checkpoint("<point>")` SIGKILL its
own process: a real crash at an exact place, which an external kill on a timer cannot aim.
Unset (always, outside the tests), a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "WORKER_CRASH_AT"
_passes: dict[str, int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec or spec.rpartition(":")[0] != point:
        return
    with _lock:
        _passes[point] = _passes.get(point, 0) + 1
        if _passes[point] == int(spec.rpartition(":")[2]):
            os.kill(os.getpid(), signal.SIGKILL)
