"""inbox_discovery_sensor against the real S3 server, one tick at a time through evaluate_tick.

Time: the sensor reads its clock through `sensors.utc_now`; the `clock` fixture replaces that
function, so a quiet window or an abandoned upload's age passes without waiting. It starts at
the real time because the S3 server stamps multipart uploads' Initiated with the real time.
"""

import logging
import os
import re
import time
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from botocore.exceptions import EndpointConnectionError
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon import get_default_daemon_logger
from dagster._daemon.sensor import execute_sensor_iteration

from orchestrator.definitions import defs
from orchestrator.defs.intake import sensors
from orchestrator.defs.intake.sensors import (
    inbox_discovery_sensor,
    minimum_interval_seconds,
    sensor_interval_seconds,
)
from tests.events_services import events_environment, running_bridge, stream_messages
from tests.orchestrator.conftest import Clock
from tests.services import free_port_block, migrate, platform_environment
from workers.discovery import load_cursor, load_state
from workers.inbox import file_id, group_id
from workers.settings import EventSettings, SettingsError, load_event_settings

DROP = "inbox/acme/unknown/drop-001/"
STRICT_TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")


class Inbox:
    """The test's bucket. In events mode (`events` set) each change waits until the bridge has put
    its event into the stream, as a partner's next tick would find it."""

    def __init__(self, s3, bucket: str, events: EventSettings | None = None):
        self.s3, self.bucket, self.events = s3, bucket, events
        self.expected_events = 0

    def put(self, *keys: str, body: bytes = b"id,value\n1,2\n") -> None:
        for key in keys:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            self.expected_events += not key.endswith("/")  # a folder placeholder is a directory: no event
        self.settle()

    def placeholders_found(self, clock: "Clock") -> None:
        """A folder placeholder ("key/") is a directory to SeaweedFS, which logs no object event for
        it: in events mode the reconciliation pass finds it, RECONCILE_MINUTES after the last."""
        if self.events is not None:
            clock.advance(minutes=self.events.reconcile_minutes)

    def settle(self) -> None:
        if self.events is not None:
            wait_for_messages(self.events, self.expected_events)

    def start_upload(self, key: str) -> str:
        """A multipart upload with one part sent and never completed: a partner still uploading."""
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
        return upload_id

    def complete_upload(self, key: str, upload_id: str) -> None:
        parts = self.s3.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)["Parts"]
        done = {"Parts": [{"ETag": p["ETag"], "PartNumber": p["PartNumber"]} for p in parts]}
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=done)
        self.expected_events += 1
        self.settle()

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
            self.expected_events += 1
        self.settle()


class RecordedLog(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self, containing: str) -> list[str]:
        messages = [r.getMessage() for r in self.records if r.levelno == logging.WARNING]
        return [m for m in messages if containing in m]


class Ticks:
    """Evaluates ticks the way the daemon does, each with the cursor the previous one left.

    Each context's logger also writes to `self.log`, so tests read what an operator would see.
    """

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None
        self.log = RecordedLog()

    def context(self, cursor: str | None = None) -> dg.SensorEvaluationContext:
        context = dg.build_sensor_context(cursor=cursor, instance=self.instance, definitions=defs)
        context.log.addHandler(self.log)
        return context

    def tick(self):
        result = inbox_discovery_sensor.evaluate_tick(self.context(self.cursor))
        self.cursor = result.cursor
        return result


@pytest.fixture(params=["listing", "events"])
def discovery_mode(request) -> str:
    """Each sensor test runs in both modes: listing the inbox, and bucket events through the real
    SeaweedFS bridge and a real NATS server (the decisions must not depend on how objects are found)."""
    return request.param


@pytest.fixture
def inbox(request, discovery_mode, monkeypatch, tmp_path, s3_server, bucket) -> Iterator[Inbox]:
    """The environment the sensor reads, pointed at this test's bucket and a migrated SQLite DB
    (the sensor records keys that form no group in inbox_rejection)."""
    db_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    migrate(db_url)
    for name, value in platform_environment(db_url, s3_server, bucket).items():
        monkeypatch.setenv(name, value)
    if discovery_mode == "listing":
        monkeypatch.setenv("DISCOVERY_MODE", "listing")
        yield Inbox(s3_server.client(), bucket)
        return
    events = request.getfixturevalue("event_settings")
    for name, value in events_environment(events).items():
        monkeypatch.setenv(name, value)
    with running_bridge(s3_server, bucket, events, tmp_path / "bridge.log"):
        yield Inbox(s3_server.client(), bucket, events)


def wait_for_messages(events: EventSettings, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (found := len(stream_messages(events))) < count:
        assert time.monotonic() < deadline, f"{found} of {count} events reached the stream"
        time.sleep(0.05)


@pytest.fixture
def ticks(inbox, clock) -> Iterator[Ticks]:
    """In events mode the sensor has ticked once before the test puts anything (it was running):
    its cursor holds a stream position, so the test's ticks find objects by their events, not by
    the reconciliation pass a first read starts."""
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(instance)
        if inbox.events is not None:
            ticks.tick()
            assert load_cursor(ticks.cursor).position is not None
            ticks.log.records.clear()
        yield ticks


def grouping_keys(result) -> list[str]:
    """The groups a tick asked to register, whether each alone or several in a batch run."""
    return [group["grouping_key"] for r in result.run_requests for group in requested_groups(r)]


def requested_groups(request: dg.RunRequest) -> list[dict]:
    ops = request.run_config["ops"]
    if "register_submissions_from_groups" in ops:
        return ops["register_submissions_from_groups"]["config"]["groups"]
    return [request_config(request)]


def drop_tags(result) -> list[str]:
    """Each requested drop's tag value (its run key in tag form), from single and batch runs."""
    return [v for r in result.run_requests for k, v in r.tags.items() if k.startswith("health-intake/drop")]


def request_config(request: dg.RunRequest) -> dict:
    return request.run_config["ops"]["register_submission_from_group"]["config"]


def test_the_sensor_is_in_the_definitions_and_runs_by_default():
    dg.Definitions.validate_loadable(defs)
    sensor = defs.resolve_sensor_def("inbox_discovery_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sorted(job.name for job in sensor.jobs) == [
        "register_submission_from_group_job",
        "register_submissions_from_groups_job",
    ]
    assert sensor.minimum_interval_seconds == minimum_interval_seconds(sensor_interval_seconds())


def test_the_inbox_is_an_asset_of_the_intake_group():
    (spec,) = [spec for spec in defs.resolve_all_asset_specs() if spec.key == dg.AssetKey("inbox")]
    assert spec.group_name == "intake"


def test_the_minimum_interval_leaves_the_daemon_a_second_so_ticks_come_every_interval():
    """Dagster's daemon loops every 5 s; a minimum of exactly the interval skipped every other loop."""
    assert [minimum_interval_seconds(n) for n in (1, 2, 5, 30)] == [1, 1, 4, 29]


def test_the_interval_comes_from_sensor_interval_seconds():
    assert sensor_interval_seconds({"SENSOR_INTERVAL_SECONDS": "5"}) == 5


def test_the_interval_defaults_to_thirty_seconds():
    assert sensor_interval_seconds({}) == 30


def test_a_malformed_interval_names_the_variable():
    with pytest.raises(SettingsError, match="SENSOR_INTERVAL_SECONDS"):
        sensor_interval_seconds({"SENSOR_INTERVAL_SECONDS": "soon"})


def test_a_marked_group_is_requested_with_its_key_in_the_run_config_only(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS")

    (request,) = ticks.tick().run_requests

    assert request_config(request) == {"grouping_key": DROP, "grouping_method": "MARKER_FILE"}
    dg.validate_run_config(defs.resolve_job_def("register_submission_from_group_job"), request.run_config)
    assert {k: v for k, v in request.tags.items() if k.startswith("health-intake/")} == {
        "health-intake/submitter": "acme",
        "health-intake/group": group_id(DROP),
        "health-intake/drop": request.run_key.replace("@", "_"),
        "health-intake/grouping-method": "MARKER_FILE",
    }
    assert request.run_key.startswith(group_id(DROP) + "@")
    assert "drop-001" not in request.run_key + repr(request.tags)


def test_calling_the_sensor_directly_returns_the_run_requests_and_cursor(inbox, clock, ticks):
    inbox.put(DROP + "_SUCCESS")

    result = inbox_discovery_sensor(ticks.context())

    assert isinstance(result, dg.SensorResult)
    assert [request_config(r)["grouping_key"] for r in result.run_requests] == [DROP]
    assert load_state(result.cursor)[group_id(DROP)].requested
    assert DROP not in result.cursor


def test_a_tick_without_complete_groups_says_what_it_waits_for(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", "inbox/beta/lab/d2/_SUCCESS")
    inbox.start_upload("inbox/beta/lab/d2/big.bin")

    assert ticks.tick().skip_message == "no group complete: 2 pending, 1 waiting for multipart uploads"


def test_a_quiet_group_is_requested_after_the_quiescence_minutes(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", DROP + "b.csv")
    assert ticks.tick().run_requests == []

    clock.advance(minutes=10)
    (request,) = ticks.tick().run_requests

    assert request_config(request) == {"grouping_key": DROP, "grouping_method": "QUIESCENCE"}


def test_a_file_added_during_the_quiet_window_restarts_it(inbox, clock, ticks):
    inbox.put(DROP + "a.csv")
    ticks.tick()
    clock.advance(minutes=6)
    inbox.put(DROP + "b.csv")
    assert ticks.tick().run_requests == []

    clock.advance(minutes=6)
    assert ticks.tick().run_requests == []
    clock.advance(minutes=4)
    assert grouping_keys(ticks.tick()) == [DROP]


def test_an_upload_in_progress_holds_a_marked_group_open(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS")
    inbox.start_upload(DROP + "big.bin")

    assert ticks.tick().run_requests == []
    clock.advance(hours=2)
    assert ticks.tick().run_requests == []


def test_a_completed_upload_releases_its_group(inbox, clock, ticks):
    inbox.put(DROP + "_SUCCESS")
    upload_id = inbox.start_upload(DROP + "big.bin")
    ticks.tick()

    inbox.complete_upload(DROP + "big.bin", upload_id)

    assert grouping_keys(ticks.tick()) == [DROP]


def test_an_upload_older_than_the_abandoned_hours_no_longer_holds_the_group(inbox, clock, ticks):
    inbox.put(DROP + "_SUCCESS")
    upload_id = inbox.start_upload(DROP + "big.bin")
    clock.advance(hours=24, minutes=1)

    result = ticks.tick()

    assert grouping_keys(result) == [DROP]
    (warning,) = ticks.log.warnings("abandoned")
    assert file_id(DROP + "big.bin") in warning and upload_id in warning
    assert "drop-001" not in warning


def test_a_late_file_gets_a_new_run_key(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS")
    (first,) = ticks.tick().run_requests

    inbox.put(DROP + "late.csv")
    (late,) = ticks.tick().run_requests

    assert request_config(late)["grouping_key"] == DROP
    assert late.run_key != first.run_key


def test_the_next_tick_does_not_request_the_same_content_again(inbox, clock, ticks):
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS")
    ticks.tick()
    clock.advance(hours=1)

    assert ticks.tick().run_requests == []


def test_a_re_evaluated_tick_gives_the_same_run_keys(inbox, clock, ticks):
    """The daemon may evaluate a tick again with the same cursor; equal run keys make it register once."""
    inbox.put(DROP + "a.csv", DROP + "_SUCCESS", "inbox/beta/lab/d2/_SUCCESS")
    cursor = ticks.cursor

    first = inbox_discovery_sensor.evaluate_tick(ticks.context(cursor))
    again = inbox_discovery_sensor.evaluate_tick(ticks.context(cursor))

    assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in first.run_requests)
    assert sorted(grouping_keys(first)) == sorted([DROP, "inbox/beta/lab/d2/"])


def test_shallow_keys_are_warned_about_whenever_they_are_seen(inbox, clock, ticks):
    """Listing mode sees such keys at every tick; events mode when their events arrive and again at
    each reconciliation pass (RECONCILE_MINUTES), never in between (no event names them then)."""
    inbox.put("inbox/top.csv", "inbox/acme/x.csv", DROP + "_SUCCESS")

    ticks.tick()
    ticks.tick()
    clock.advance(minutes=load_event_settings().reconcile_minutes)
    ticks.tick()

    shallow = ticks.log.warnings("belong to no group")
    # listing: every tick; events: the tick their events arrive, not the next, then the reconciliation.
    assert len(shallow) == (3 if inbox.events is None else 2)
    for warning in shallow:
        assert warning.startswith("2 inbox object(s)")
        assert file_id("inbox/acme/x.csv") in warning and file_id("inbox/top.csv") in warning
        assert "x.csv" not in warning and "top.csv" not in warning


def test_keys_that_form_no_group_are_recorded_once_with_their_reason(inbox, clock, ticks):
    inbox.put("inbox/top.csv", "inbox/acme/unknown/d/sub/", DROP + "_SUCCESS")
    inbox.placeholders_found(clock)

    ticks.tick()
    ticks.tick()

    engine = sa.create_engine(os.environ["METADATA_DB_URL"])
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT key, reason FROM inbox_rejection")).all())
    engine.dispose()
    assert rows == {
        "inbox/top.csv": "too shallow: a file needs 3 folders under inbox/ (submitter/file type/drop id)",
        "inbox/acme/unknown/d/sub/": "folder placeholder (the key ends with '/'), not a file",
    }


def test_odd_keys_keep_their_grouping_key_and_get_valid_tags(inbox, clock, ticks):
    odd = "inbox/açme corp/+%20/dröp 1+%/"
    inbox.put(odd + "файл name+%.csv", odd + "_SUCCESS", "inbox/x y/~/%2F/_SUCCESS")

    result = ticks.tick()

    assert sorted(grouping_keys(result)) == sorted([odd, "inbox/x y/~/%2F/"])
    for request in result.run_requests:
        for name, value in request.tags.items():
            if name.startswith("health-intake/"):
                assert STRICT_TAG_VALUE.fullmatch(value) and STRICT_TAG_VALUE.fullmatch(name.split("/", 1)[1])
    assert load_state(result.cursor)[group_id(odd)].requested


def test_distinct_odd_ids_get_distinct_tag_values():
    assert sensors.tag_value("açme") != sensors.tag_value("acme") != sensors.tag_value("a_me")
    assert sensors.tag_value("drop-001") == "drop-001"
    assert len(sensors.tag_value("ü" * 200)) <= 63


def test_fifty_groups_at_once_are_each_requested_once(inbox, clock, ticks):
    keys = [f"inbox/partner-{i % 5}/claims/drop-{i:03d}/" for i in range(50)]
    inbox.put(*[key + "_SUCCESS" for key in keys])

    result = ticks.tick()

    assert sorted(grouping_keys(result)) == sorted(keys)
    assert len(set(drop_tags(result))) == 50  # each drop once, whether alone or in a batch run
    assert ticks.tick().run_requests == []


def test_groups_no_longer_in_the_inbox_leave_the_cursor(inbox, clock, ticks):
    inbox.put(DROP + "_SUCCESS", "inbox/beta/lab/d2/a.csv")
    ticks.tick()

    inbox.delete(DROP + "_SUCCESS")
    ticks.tick()

    assert list(load_state(ticks.cursor)) == [group_id("inbox/beta/lab/d2/")]


def test_an_unreadable_cursor_is_warned_about_and_replaced(inbox, clock, ticks):
    inbox.put(DROP + "_SUCCESS")

    result = inbox_discovery_sensor.evaluate_tick(ticks.context("not a cursor"))

    assert grouping_keys(result) == [DROP]
    assert ticks.log.warnings("unreadable cursor")


def test_an_unreachable_object_store_fails_the_tick(inbox, clock, ticks, monkeypatch):
    """A raising evaluation is a failed tick: the daemon keeps the previous cursor and requests nothing."""
    inbox.put(DROP + "_SUCCESS")
    monkeypatch.setenv("MINIO_ENDPOINT", "http://127.0.0.1:1")

    with pytest.raises(EndpointConnectionError):
        ticks.tick()


def test_with_the_metadata_db_down_the_tick_still_requests_and_records_the_rejections_later(
    inbox, clock, ticks, monkeypatch
):
    """A real refused connection (nothing listens on the port), not a mock: the rejection write
    fails, the tick does not."""
    up = os.environ["METADATA_DB_URL"]
    inbox.put("inbox/top.csv", DROP + "x.csv", DROP + "_SUCCESS")
    monkeypatch.setenv(
        "METADATA_DB_URL", f"postgresql+psycopg2://intake:secret-pw@127.0.0.1:{free_port_block()}/metadata"
    )

    result = ticks.tick()

    assert grouping_keys(result) == [DROP]
    assert result.cursor and observations(result) == []
    (warning,) = ticks.log.warnings("not recorded this tick")
    assert warning.startswith("1 rejection(s)") and "secret-pw" not in warning and "top.csv" not in warning

    monkeypatch.setenv("METADATA_DB_URL", up)
    assert [table_rows(o) for o in observations(ticks.tick())] != []
    engine = sa.create_engine(up)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT key FROM inbox_rejection")).scalars().all() == ["inbox/top.csv"]
    engine.dispose()


def observations(result) -> list[dg.AssetObservation]:
    return [event for event in result.asset_events if isinstance(event, dg.AssetObservation)]


def table_rows(observation: dg.AssetObservation) -> list[str]:
    return [line for line in observation.metadata["rejected"].value.splitlines() if line.startswith("| f-")]


def test_new_rejections_are_observed_on_the_inbox_asset_with_file_id_reason_and_size(inbox, clock, ticks):
    inbox.put("inbox/top.csv", body=b"12345")
    inbox.put("inbox/acme/unknown/d/sub/", body=b"")
    inbox.put(DROP + "_SUCCESS")
    inbox.placeholders_found(clock)

    (observation,) = observations(ticks.tick())

    assert observation.asset_key == dg.AssetKey("inbox")
    assert observation.metadata["new_rejections"].value == 2
    assert observation.metadata["rejections_on_record"].value == 2
    assert table_rows(observation) == [
        f"| {file_id('inbox/acme/unknown/d/sub/')} | folder placeholder (the key ends with '/'), not a file | 0 |",
        f"| {file_id('inbox/top.csv')} | too shallow: a file needs 3 folders under inbox/ "
        "(submitter/file type/drop id) | 5 |",
    ]


def test_a_tick_over_the_same_rejected_keys_observes_nothing(inbox, clock, ticks):
    inbox.put("inbox/top.csv", "inbox/acme/x.csv")
    ticks.tick()

    assert observations(ticks.tick()) == []


def test_a_rejected_key_uploaded_again_with_other_content_is_observed_again(inbox, clock, ticks):
    inbox.put("inbox/top.csv", "inbox/acme/x.csv")
    ticks.tick()

    inbox.put("inbox/top.csv", body=b"other bytes\n")
    (observation,) = observations(ticks.tick())

    assert observation.metadata["new_rejections"].value == 1
    assert observation.metadata["rejections_on_record"].value == 3
    assert [row.split(" | ")[0] for row in table_rows(observation)] == ["| " + file_id("inbox/top.csv")]


def test_the_observation_shows_twenty_rejections_and_says_how_many_more(inbox, clock, ticks):
    inbox.put(*[f"inbox/top-{i:02d}.csv" for i in range(25)])

    (observation,) = observations(ticks.tick())

    assert observation.metadata["new_rejections"].value == 25
    assert len(table_rows(observation)) == 20
    assert "and 5 more" in observation.metadata["rejected"].value


def test_a_key_with_control_characters_is_rejected_as_unsafe_and_shown_by_its_id(inbox, clock, ticks):
    key = "inbox/acme/unknown/d/a|b\r\n\x01.csv"
    inbox.put(key)

    (observation,) = observations(ticks.tick())

    assert table_rows(observation) == [
        f"| {file_id(key)} | unsafe key: a control character (refused by the platform, never staged) | 13 |"
    ]


def test_the_observation_holds_neither_file_contents_nor_keys(inbox, clock, ticks):
    sentinel = "SENTINEL-4f1c9e-member-name"
    inbox.put("inbox/top.csv", body=f"member,name\n1,{sentinel}\n".encode())

    (observation,) = observations(ticks.tick())

    serialized = dg.serialize_value(observation)
    assert file_id("inbox/top.csv") in serialized
    assert sentinel not in serialized and "top.csv" not in serialized


def test_the_daemon_stores_the_observation_in_the_event_log_the_ui_reads(inbox, tmp_path):
    """Through the sensor daemon's own iteration, with the code location in a gRPC server of its
    own as in `dagster dev`: what it stores is what the asset page shows. These are Dagster's
    internal test helpers (no public API evaluates a sensor the daemon's way)."""
    inbox.put("inbox/top.csv", "inbox/acme/x.csv")
    target = ModuleTarget("orchestrator.definitions", None, None, "health_intake")
    with (
        dg.instance_for_test(temp_dir=str(tmp_path)) as instance,
        create_test_daemon_workspace_context(target, instance) as workspace,
    ):
        list(execute_sensor_iteration(workspace, get_default_daemon_logger("SensorDaemon"), None, None))
        records = instance.fetch_observations(dg.AssetKey("inbox"), limit=10).records

    (record,) = records
    metadata = record.asset_observation.metadata
    assert metadata["new_rejections"].value == 2
    assert file_id("inbox/acme/x.csv") in metadata["rejected"].value
