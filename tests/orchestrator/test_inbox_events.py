"""Events mode's own behaviour (DISCOVERY_MODE=events): reconciliation, gaps, a dead NATS server,
a pass spread over ticks, a restarted code server. Real SeaweedFS, real NATS; the bridge runs
where a test needs events, and does not where a test needs objects no event announced (a
producer that lost them: what reconciliation is for).

The decisions themselves (marker, quiescence, uploads, late files, run keys) are
tests/orchestrator/test_inbox_sensor.py's, which runs in both modes.
"""

from collections.abc import Iterator

import dagster as dg
import pytest

from orchestrator.defs.intake import watch
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from tests.events_services import events_environment, running_bridge
from tests.orchestrator.test_inbox_sensor import Inbox, Ticks, grouping_keys
from tests.services import migrate, platform_environment
from workers import events
from workers.discovery import load_cursor
from workers.inbox import group_id

DROP = "inbox/acme/unknown/drop-001/"


@pytest.fixture
def setup(monkeypatch, tmp_path, s3_server, bucket, event_settings):
    db_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    migrate(db_url)
    environment = {**platform_environment(db_url, s3_server, bucket), **events_environment(event_settings)}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(watch, "_memory", None)
    return s3_server, bucket, event_settings


@pytest.fixture
def ticks(setup, clock) -> Iterator[Ticks]:
    """A sensor that has ticked once over the empty inbox: it has a stream position and a finished
    reconciliation, so later ticks go by events alone until RECONCILE_MINUTES pass."""
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(instance)
        ticks.tick()
        yield ticks


def without_events(setup) -> Inbox:
    """The bucket with no bridge: what is put here reaches no stream."""
    s3_server, bucket, _ = setup
    return Inbox(s3_server.client(), bucket)


def observations(result) -> list[dg.AssetObservation]:
    return [e for e in result.asset_events if isinstance(e, dg.AssetObservation)]


def test_objects_no_event_announced_are_found_by_the_next_reconciliation_and_counted(setup, clock, ticks):
    inbox = without_events(setup)
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS", "inbox/beta/lab/d2/b.csv")

    assert ticks.tick().run_requests == []  # no event: the sensor has not looked

    clock.advance(minutes=15)  # RECONCILE_MINUTES
    result = ticks.tick()

    assert grouping_keys(result) == [DROP]
    (observation,) = observations(result)
    assert observation.asset_key == dg.AssetKey("inbox")
    assert observation.metadata["missed_event_objects"].value == 3
    assert observation.metadata["missed_event_groups"].value == 2
    assert observation.metadata["missed_event_objects_total"].value == 3
    assert "drop-001" not in dg.serialize_value(observation)
    cursor = load_cursor(ticks.cursor)
    assert cursor.missed == 3 and cursor.reconciled_at == clock.now
    assert ticks.log.warnings("no event had announced")


def test_with_the_bridge_running_a_reconciliation_finds_nothing_missed(setup, clock, ticks, tmp_path):
    s3_server, bucket, event_settings = setup
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        inbox = Inbox(s3_server.client(), bucket, event_settings)
        inbox.put(DROP + "a.csv", DROP + "_SUCCESS")
        assert grouping_keys(ticks.tick()) == [DROP]

        clock.advance(minutes=15)
        result = ticks.tick()

    assert result.run_requests == [] and observations(result) == []
    assert load_cursor(ticks.cursor).missed == 0
    assert any("reconciliation done" in r.getMessage() for r in ticks.log.records)


def test_a_stream_created_anew_is_a_gap_that_starts_a_reconciliation(setup, clock, ticks):
    inbox = without_events(setup)
    inbox.put(DROP + "_SUCCESS")
    _, _, event_settings = setup
    delete_stream(event_settings)

    result = ticks.tick()

    assert grouping_keys(result) == [DROP]
    assert any("created anew" in r.getMessage() for r in ticks.log.records)
    assert observations(result)[0].metadata["reconciliation_reason"].value == "the event stream was created anew"


def test_with_nats_down_every_tick_lists_the_whole_inbox_and_warns(setup, clock, ticks, nats_server):
    inbox = without_events(setup)
    position = load_cursor(ticks.cursor).position
    nats_server.stop()
    try:
        inbox.put(DROP + "a.csv", DROP + "_SUCCESS")
        first = ticks.tick()
        inbox.put("inbox/beta/lab/d2/_SUCCESS")
        second = ticks.tick()
    finally:
        nats_server.start()

    assert grouping_keys(first) == [DROP] and grouping_keys(second) == ["inbox/beta/lab/d2/"]
    warnings = ticks.log.warnings("the event stream cannot be read")
    assert len(warnings) == 2 and f"127.0.0.1:{nats_server.port}" in warnings[0]
    assert load_cursor(ticks.cursor).position == position  # read on from there once NATS is back


def test_a_reconciliation_is_spread_over_ticks_and_never_splits_a_group(setup, clock, ticks, monkeypatch):
    inbox = without_events(setup)
    drops = [f"inbox/p{i}/claims/d{i}/" for i in range(4)]
    inbox.put(*[drop + name for drop in drops for name in ("a.csv", "b.csv", "_SUCCESS")])
    monkeypatch.setattr(watch, "SLICE_SECONDS", 0.0)  # each slice ends at its first group's end
    clock.advance(minutes=15)

    requested = [grouping_keys(ticks.tick()) for _ in range(4)]

    assert requested == [[drop] for drop in drops]  # one whole group a tick, in key order
    assert watch._memory is not None and watch._memory.reconcile is None  # the pass is done
    assert load_cursor(ticks.cursor).reconciled_at == clock.now


def test_a_restarted_code_server_finds_its_pending_groups_again(setup, clock, ticks, tmp_path, monkeypatch):
    s3_server, bucket, event_settings = setup
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        inbox = Inbox(s3_server.client(), bucket, event_settings)
        inbox.put(DROP + "a.csv")
        assert ticks.tick().run_requests == []  # pending: waits out its quiet period
        monkeypatch.setattr(watch, "_memory", None)  # a new process: the group's key is not in memory

        clock.advance(minutes=10)
        result = ticks.tick()

    assert grouping_keys(result) == [DROP]
    assert any("code server restarted" in r.getMessage() for r in ticks.log.records)
    assert load_cursor(ticks.cursor).groups[group_id(DROP)].requested


def test_the_cursor_holds_no_key(setup, clock, ticks, tmp_path):
    s3_server, bucket, event_settings = setup
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        Inbox(s3_server.client(), bucket, event_settings).put(DROP + "a.csv")
        ticks.tick()

    assert "drop-001" not in ticks.cursor and "acme" not in ticks.cursor
    assert load_cursor(ticks.cursor).position["seq"] == 1


def test_an_events_mode_tick_through_the_sensor_reads_only_new_events(setup, clock, ticks, tmp_path):
    """Two ticks over the same stream: the second reads from where the first stopped."""
    s3_server, bucket, event_settings = setup
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        inbox = Inbox(s3_server.client(), bucket, event_settings)
        inbox.put(DROP + "_SUCCESS")
        first = inbox_discovery_sensor.evaluate_tick(ticks.context(ticks.cursor))
        inbox.put("inbox/beta/lab/d2/_SUCCESS")
        second = inbox_discovery_sensor.evaluate_tick(ticks.context(first.cursor))

    assert grouping_keys(first) == [DROP] and grouping_keys(second) == ["inbox/beta/lab/d2/"]
    assert load_cursor(second.cursor).position["seq"] == 2


def delete_stream(settings) -> None:
    async def delete():
        nc = await events.connect(settings)
        try:
            await nc.jetstream().delete_stream(settings.stream)
        finally:
            await nc.close()

    events.run(delete())
