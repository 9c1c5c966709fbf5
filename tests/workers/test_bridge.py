"""workers.bridge: SeaweedFS's filer metadata log to the JetStream stream, against a real `weed mini`
(the suite's S3 server) and a real nats-server; the event mapping itself as a pure function."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections import Counter

import pytest

from tests.events_services import NatsServer, running_bridge, stream_messages
from workers import filer_pb
from workers.bridge import CHECKPOINT_HEADER, load_bridge_settings, object_changes
from workers.events import connect, parse_document
from workers.settings import EventSettings

INBOX = "inbox/acme/claims/drop-001/"


def events_in(settings: EventSettings, bucket: str) -> list[tuple[str, str]]:
    return [(kind, key) for m in stream_messages(settings) for kind, b, key in parse_document(m.body) if b == bucket]


def wait_for_events(settings: EventSettings, bucket: str, count: int, timeout: float = 60) -> list[tuple[str, str]]:
    """The stream's events once there are `count`, after a short settle, so a surplus shows."""
    deadline = time.monotonic() + timeout
    while len(found := events_in(settings, bucket)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} events"
        time.sleep(0.2)
    time.sleep(1.5)
    return events_in(settings, bucket)


def put(s3, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"member_id,amount\n1,2\n")


def keys(names: range, prefix: str = INBOX) -> list[str]:
    return [f"{prefix}part-{n:04d}.csv" for n in names]


def test_puts_of_200_objects_give_200_put_events_with_their_keys(s3_server, bucket, event_settings, tmp_path):
    s3 = s3_server.client()
    wanted = keys(range(200))
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log") as bridge:
        put(s3, bucket, wanted)
        put(s3, bucket, ["outside/the-inbox.csv"])
        found = wait_for_events(event_settings, bucket, 200)
    assert bridge.proc.returncode == 0
    assert sorted(found) == sorted(("put", key) for key in wanted)
    messages = stream_messages(event_settings)
    assert all({"Nats-Msg-Id", CHECKPOINT_HEADER} <= set(m.headers) for m in messages)
    assert not any(INBOX in value for m in messages for value in m.headers.values()), "a key in a header"
    assert "part-0" not in bridge.output() and "drop-001" not in bridge.output(), "a key in the log"


def test_deletes_give_delete_events(s3_server, bucket, event_settings, tmp_path):
    s3 = s3_server.client()
    wanted = keys(range(5))
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        put(s3, bucket, wanted)
        for key in wanted:
            s3.delete_object(Bucket=bucket, Key=key)  # a delete marker: the bucket is versioned (Object Lock)
        found = wait_for_events(event_settings, bucket, 10)
    assert sorted(found) == sorted([("put", key) for key in wanted] + [("delete", key) for key in wanted])
    assert found.index(("delete", wanted[0])) > found.index(("put", wanted[0]))


def test_multipart_upload_gives_one_put_and_no_part_events(s3_server, bucket, event_settings, tmp_path):
    s3 = s3_server.client()
    key = INBOX + "large.csv"
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, body in ((1, b"a" * 5 * 1024 * 1024), (2, b"b" * 10)):
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        found = wait_for_events(event_settings, bucket, 1)
    assert found == [("put", key)]
    assert len(stream_messages(event_settings)) == 1


def test_restarted_bridge_publishes_no_duplicate_and_misses_nothing(s3_server, bucket, event_settings, tmp_path):
    s3 = s3_server.client()
    log = tmp_path / "bridge.log"
    with running_bridge(s3_server, bucket, event_settings, log):
        put(s3, bucket, keys(range(20)))
        wait_for_events(event_settings, bucket, 20)
    put(s3, bucket, keys(range(20, 40)))  # while the bridge is down
    with running_bridge(s3_server, bucket, event_settings, log):
        found = wait_for_events(event_settings, bucket, 40)
        put(s3, bucket, keys(range(40, 45)))
        found = wait_for_events(event_settings, bucket, 45)
    assert sorted(found) == sorted(("put", key) for key in keys(range(45)))
    assert log.read_text().count("subscribed from the checkpoint") == 1


def test_bridge_restarted_after_the_duplicate_window_skips_what_it_published(
    s3_server, bucket, event_settings, tmp_path
):
    """A stream with a 1 s duplicate window stands in for a bridge down longer than 10 minutes: the
    overlap's events are skipped, not stored again (at most the checkpoint's own event repeats)."""
    asyncio.run(create_stream(event_settings, duplicate_window=1.0))
    s3, log = s3_server.client(), tmp_path / "bridge.log"
    with running_bridge(s3_server, bucket, event_settings, log):
        put(s3, bucket, keys(range(5)))
        wait_for_events(event_settings, bucket, 5)
    time.sleep(1.5)
    with running_bridge(s3_server, bucket, event_settings, log):
        put(s3, bucket, keys(range(5, 7)))
        found = wait_for_events(event_settings, bucket, 7)
    assert set(found) == {("put", key) for key in keys(range(7))}
    assert len(found) <= 8, Counter(found)


async def create_stream(settings: EventSettings, duplicate_window: float) -> None:
    from nats.js import api

    nc = await connect(settings)
    try:
        config = api.StreamConfig(name=settings.stream, subjects=[settings.subject], duplicate_window=duplicate_window)
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()


def test_nats_killed_while_objects_are_put_loses_nothing(s3_server, bucket, event_settings, nats_server, tmp_path):
    s3 = s3_server.client()
    log = tmp_path / "bridge.log"
    with running_bridge(s3_server, bucket, event_settings, log) as bridge:
        put(s3, bucket, keys(range(10)))
        wait_for_events(event_settings, bucket, 10)
        nats_server.kill()
        put(s3, bucket, keys(range(10, 30)))
        time.sleep(3)  # the bridge finds NATS gone and retries
        nats_server.start()
        put(s3, bucket, keys(range(30, 35)))
        found = wait_for_events(event_settings, bucket, 35)
    counts = Counter(found)
    assert sorted(counts) == sorted(("put", key) for key in keys(range(35)))
    assert set(counts.values()) == {1}, "a duplicate event"
    output = bridge.output()
    assert output.count("retrying every") == 1 and output.count("reconnected after") == 1, output
    assert bridge.proc.returncode == 0


def test_filer_restart_is_one_outage_and_loses_nothing(tmp_path, event_settings):
    """A server of the test's own, stopped and started while the bridge follows it."""
    from tests.services import S3_KEYS, S3Server, start_s3_server, stop_process_group, wait_for_s3
    from workers.store import ensure_bucket

    proc, port = start_s3_server(tmp_path / "s3", tmp_path / "s3.log")
    server = S3Server(f"http://127.0.0.1:{port}", *S3_KEYS)
    try:
        wait_for_s3(server, proc, tmp_path / "s3.log")
        ensure_bucket(server.client(), "filer-restart")
        with running_bridge(server, "filer-restart", event_settings, tmp_path / "bridge.log") as bridge:
            put(server.client(), "filer-restart", keys(range(5)))
            wait_for_events(event_settings, "filer-restart", 5)
            stop_process_group(proc)
            proc, _ = start_s3_server(tmp_path / "s3", tmp_path / "s3.log", port=port)
            wait_for_s3(server, proc, tmp_path / "s3.log")
            put(server.client(), "filer-restart", keys(range(5, 10)))
            found = wait_for_events(event_settings, "filer-restart", 10, timeout=90)
        assert sorted(found) == sorted(("put", key) for key in keys(range(10)))
        assert bridge.output().count("retrying every") == 1, bridge.output()
    finally:
        stop_process_group(proc)


def test_put_reaches_the_stream_within_a_second(s3_server, bucket, event_settings, tmp_path):
    """Latency from a PUT's request to its event on the subject (a core NATS subscriber sees what
    JetStream stores); printed for the report. The filer logs the entry before S3 answers, so the
    event often arrives before the PUT's answer."""
    s3 = s3_server.client()
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log"):
        latencies = asyncio.run(measure_latency(event_settings, lambda key: put(s3, bucket, [key]), 50))
    from_request = [arrived - issued for issued, _, arrived in latencies]
    from_answer = [arrived - answered for _, answered, arrived in latencies]
    print(
        f"put -> event, from the request: median {statistics.median(from_request) * 1000:.1f} ms, "
        f"max {max(from_request) * 1000:.1f} ms; from the answer: median "
        f"{statistics.median(from_answer) * 1000:.1f} ms, max {max(from_answer) * 1000:.1f} ms"
    )
    assert statistics.median(from_request) < 1.0


async def measure_latency(settings: EventSettings, put_one, count: int) -> list[tuple[float, float, float]]:
    """(request issued, answer received, event arrived) of `count` puts, one after another."""
    nc = await connect(settings)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(_msg) -> None:
        await arrived.put(time.monotonic())

    await nc.subscribe(settings.subject, cb=on_message)
    times = []
    try:
        for n in range(count):
            issued = time.monotonic()
            await asyncio.to_thread(put_one, f"{INBOX}latency-{n}.csv")
            answered = time.monotonic()
            times.append((issued, answered, await asyncio.wait_for(arrived.get(), timeout=10)))
    finally:
        await nc.close()
    return times


def test_bridge_stops_cleanly_on_ctrl_c(s3_server, bucket, event_settings, tmp_path):
    with running_bridge(s3_server, bucket, event_settings, tmp_path / "bridge.log") as bridge:
        bridge.proc.send_signal(signal.SIGINT)
        assert bridge.proc.wait(timeout=10) == 0
    assert bridge.output().rstrip().endswith("bridge: stopped")


def test_bridge_settings_derive_the_filer_address_from_the_s3_endpoint():
    env = {"MINIO_ENDPOINT": "http://127.0.0.1:9000", "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}
    settings = load_bridge_settings(env)
    assert (settings.filer_grpc, settings.path_prefix) == ("127.0.0.1:19006", "/buckets/health-raw/inbox/")
    assert load_bridge_settings({**env, "SEAWEEDFS_FILER_GRPC": "filer:18888"}).filer_grpc == "filer:18888"


ROOT = "/buckets/b/"


def event(directory: str, old: str = "", new: str = "", new_parent: str = "", directory_entry: bool = False, **ext):
    response = filer_pb.SubscribeMetadataResponse(directory=directory, ts_ns=7)
    note = response.event_notification
    if old:
        note.old_entry.name = old
        note.old_entry.is_directory = directory_entry
    if new:
        note.new_entry.name = new
        note.new_entry.is_directory = directory_entry
        note.new_entry.attributes.file_size = 3
        note.new_parent_path = new_parent or directory
        for name, value in ext.items():
            note.new_entry.extended[name.replace("_", "-")] = value
    return response


def changes(response) -> list[tuple[str, str]]:
    return [(c.kind, c.key) for c in object_changes(response, ROOT, "inbox/")]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (event("/buckets/b/inbox/a", new="x.csv"), [("put", "inbox/a/x.csv")]),
        (event("/buckets/b/inbox/a", old="x.csv"), [("delete", "inbox/a/x.csv")]),
        (event("/buckets/b/inbox/a", old="x.csv", new="x.csv"), [("put", "inbox/a/x.csv")]),  # overwritten
        (
            event("/buckets/b/inbox/a", old="x.csv", new="y.csv", new_parent="/buckets/b/inbox/c"),
            [("delete", "inbox/a/x.csv"), ("put", "inbox/c/y.csv")],
        ),
        (event("/buckets/b/inbox/a/x.csv.versions", new="v_01"), [("put", "inbox/a/x.csv")]),
        (
            event("/buckets/b/inbox/a/x.csv.versions", new="v_02", Seaweed_X_Amz_Delete_Marker=b"true"),
            [("delete", "inbox/a/x.csv")],
        ),
        (event("/buckets/b/inbox/a/x.csv.versions", old="v_01"), [("delete", "inbox/a/x.csv")]),
        (event("/buckets/b/inbox/a/x.csv.versions", old="v_01", new="v_01"), []),  # no longer the latest
        (event("/buckets/b/inbox/a", new="x.csv.versions", directory_entry=True), []),
        (event("/buckets/b/inbox", old="a", directory_entry=True), []),
        (event("/buckets/b/.uploads/u1", new="0001_x.part"), []),
        (event("/buckets/b/other", new="x.csv"), []),
        (event("/buckets/c/inbox", new="x.csv"), []),
    ],
    ids=[
        "new file",
        "removed file",
        "overwrite",
        "rename",
        "new version",
        "delete marker",
        "version removed",
        "version demoted",
        "directory",
        "directory removed",
        "multipart part",
        "outside the inbox",
        "another bucket",
    ],
)
def test_filer_events_map_to_object_puts_and_deletes(response, expected):
    assert changes(response) == expected


def test_message_ids_differ_by_time_path_and_kind_and_hold_no_key():
    (put_change,) = object_changes(event("/buckets/b/inbox/a", new="x.csv"), ROOT, "inbox/")
    (delete_change,) = object_changes(event("/buckets/b/inbox/a", old="x.csv"), ROOT, "inbox/")
    assert put_change.message_id != delete_change.message_id
    assert "x.csv" not in put_change.message_id and len(put_change.message_id) == 64


def test_nats_server_fixture_restarts_on_the_same_port_and_store(nats_server: NatsServer):
    port = nats_server.port
    nats_server.stop()
    nats_server.start()
    assert nats_server.port == port and nats_server.running
