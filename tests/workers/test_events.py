"""workers.events: the event document, the stream position and its gaps, the settings; reads and
writes against a real NATS server (tests/events_services.py)."""

import json
from pathlib import Path

import pytest

from workers import events
from workers.events import BucketEvent, Position, event_document, find_gap, parse_document, start_seq
from workers.settings import EVENTS_DEFAULTS, SettingsError, load_event_settings

README = (Path(__file__).parents[2] / "README.md").read_text()
SECTION = README[README.index("### Discovery: bucket events or listing") : README.index("### Intake settings")]
KEY = "inbox/açme corp/claims/drop 1+%/файл.csv"


def test_a_document_round_trips_its_kind_bucket_and_key():
    assert list(parse_document(event_document("b", KEY, "put"))) == [("put", "b", KEY)]
    assert list(parse_document(event_document("b", KEY, "delete"))) == [("delete", "b", KEY)]


def test_minio_s_document_is_read_as_minio_sends_it():
    """MinIO URL-encodes the key in the record (spaces as '+'), and names the bucket apart."""
    body = json.dumps(
        {
            "EventName": "s3:ObjectCreated:CompleteMultipartUpload",
            "Key": "health-raw/inbox/a b/c/d/e.csv",
            "Records": [
                {
                    "eventName": "s3:ObjectCreated:CompleteMultipartUpload",
                    "s3": {"bucket": {"name": "health-raw"}, "object": {"key": "inbox%2Fa+b%2Fc%2Fd%2Fe.csv"}},
                }
            ],
        }
    ).encode()

    assert list(parse_document(body)) == [("put", "health-raw", "inbox/a b/c/d/e.csv")]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"Records": [{"eventName": "s3:TestEvent"}]}', b'{"Records": [{"s3": {}}]}'],
)
def test_anything_but_a_put_or_delete_is_no_event(body):
    assert list(parse_document(body)) == []


def test_a_gap_is_named_for_each_way_events_can_be_missing():
    here = Position("2026-01-01T00:00:00+00:00", 10)
    assert find_gap(None, here.stream_created, 1, 10) == "no stream position yet (first read)"
    assert find_gap(here, "2026-02-01T00:00:00+00:00", 1, 10) == "the event stream was created anew"
    assert "purged" in find_gap(here, here.stream_created, 1, 5)
    assert "left the stream" in find_gap(here, here.stream_created, 20, 30)
    assert find_gap(here, here.stream_created, 1, 30) is None
    assert find_gap(here, here.stream_created, 11, 30) is None  # 11 is the next to read


def test_reading_starts_after_the_position_or_where_the_stream_starts():
    here = Position("c1", 10)
    assert start_seq(None, "c1", 1, 50) == 51  # a first read: only what comes next
    assert start_seq(here, "c1", 1, 50) == 11
    assert start_seq(here, "c2", 0, 0) == 1  # a new, empty stream
    assert start_seq(here, "c2", 1, 3) == 1
    assert start_seq(here, "c1", 20, 50) == 20  # aged out: from the oldest still there


def test_the_settings_are_validated_and_named_in_the_readme():
    for name, default in EVENTS_DEFAULTS.items():
        assert f"`{name}`" in SECTION and f"`{default}`" in SECTION, name
    for env, named in [
        ({"DISCOVERY_MODE": "webhook"}, "DISCOVERY_MODE"),
        ({"NATS_URL": "http://x"}, "NATS_URL"),
        ({"EVENTS_STREAM": "a.b"}, "EVENTS_STREAM"),
        ({"EVENTS_SUBJECT": "a.*"}, "EVENTS_SUBJECT"),
        ({"RECONCILE_MINUTES": "0"}, "RECONCILE_MINUTES"),
    ]:
        with pytest.raises(SettingsError, match=named):
            load_event_settings(env)


def test_credentials_in_nats_url_are_never_shown():
    settings = load_event_settings({"NATS_URL": "nats://user:s3cret@nats.internal:4222"})
    assert settings.nats_server == "nats.internal:4222"
    assert "s3cret" not in repr(settings)


def test_a_dead_server_is_events_unavailable_naming_host_and_port_only(nats_server):
    port = nats_server.port + 1
    settings = load_event_settings({"NATS_URL": f"nats://u:s3cret@127.0.0.1:{port}"})
    with pytest.raises(events.EventsUnavailable) as raised:
        events.read_events(settings, "b", "inbox/", None)
    assert f"127.0.0.1:{port}" in str(raised.value) and "s3cret" not in str(raised.value)


def test_events_are_read_once_in_order_and_a_repeated_message_id_is_stored_once(event_settings):
    first = events.read_events(event_settings, "b", "inbox/", None)
    messages = [(f"m{i}", event_document("b", f"inbox/a/b/c/{i}.csv", "put")) for i in range(5)]
    messages += [("other", event_document("another-bucket", "inbox/a/b/c/x.csv", "put"))]

    assert events.publish(event_settings, messages) == 6
    assert events.publish(event_settings, messages[:2]) == 0  # within the duplicate window
    batch = events.read_events(event_settings, "b", "inbox/", first.position)

    assert batch.events == [BucketEvent(i + 1, "put", f"inbox/a/b/c/{i}.csv") for i in range(5)]
    assert batch.foreign == 1 and batch.gap is None and batch.backlog == 0
    assert batch.position.seq == 6
    assert events.read_events(event_settings, "b", "inbox/", batch.position).events == []


def test_a_read_takes_at_most_its_limit_and_says_what_is_left(event_settings, monkeypatch):
    first = events.read_events(event_settings, "b", "inbox/", None)
    events.publish(event_settings, [(f"m{i}", event_document("b", f"inbox/a/b/c/{i}", "put")) for i in range(7)])
    monkeypatch.setattr(events, "MAX_EVENTS_PER_READ", 3)

    batch = events.read_events(event_settings, "b", "inbox/", first.position)

    assert [e.seq for e in batch.events] == [1, 2, 3] and batch.backlog == 4
