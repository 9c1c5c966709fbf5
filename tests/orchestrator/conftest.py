"""The inbox sensor's clock, shared by its tests in both discovery modes (test_inbox_sensor.py,
test_inbox_events.py)."""

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.defs.intake import sensors


class Clock:
    def __init__(self):
        self.now = datetime.now(UTC)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The sensor reads its clock through `sensors.utc_now`: a quiet window, an abandoned upload's
    age or RECONCILE_MINUTES passes without waiting. It starts at the real time because the S3
    server stamps multipart uploads' Initiated with the real time."""
    clock = Clock()
    monkeypatch.setattr(sensors, "utc_now", lambda: clock.now)
    return clock
