"""Crash and pause points for the reliability suite.

`WORKER_CRASH_AT=<point>:<n>` makes the n-th pass through `checkpoint("<point>")` SIGKILL its
own process: a real crash at an exact place, which an external kill on a timer cannot aim.
`WORKER_PAUSE_AT=<point>:<n>` makes that pass stop there, first writing the worker's pid to the
file `WORKER_PAUSE_FLAG` names, until a file of that name plus `.released` appears (an hour at
most); once it exists no worker pauses again. A test then does what it wants around a worker
held at an exact place (kills the whole orchestrator, stops the S3 server) and knows when to.
Unset (always, outside the tests), a checkpoint costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

ENV = "WORKER_CRASH_AT"
PAUSE_ENV = "WORKER_PAUSE_AT"
PAUSE_FLAG_ENV = "WORKER_PAUSE_FLAG"
PAUSE_SECONDS = 3600
_passes: dict[tuple[str, str], int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    if _reached(ENV, point):
        os.kill(os.getpid(), signal.SIGKILL)
    if _reached(PAUSE_ENV, point):
        _pause(Path(os.environ.get(PAUSE_FLAG_ENV) or "/nonexistent/pause"))


def _pause(flag: Path) -> None:
    released = flag.with_name(flag.name + ".released")
    if released.exists():
        return
    flag.write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_SECONDS
    while not released.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def _reached(env: str, point: str) -> bool:
    spec = os.environ.get(env)
    if not spec or spec.rpartition(":")[0] != point:
        return False
    with _lock:
        _passes[env, point] = _passes.get((env, point), 0) + 1
        return _passes[env, point] == int(spec.rpartition(":")[2])
