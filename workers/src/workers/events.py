"""Bucket events: the inbox's put and delete events, in a NATS JetStream stream.

Two producers write the same stream, in the same format: MinIO's NATS notification target
(Docker mode; MinIO publishes through JetStream and queues on disk while NATS is away), and
`workers.bridge`, which follows SeaweedFS's filer metadata log (dev mode, the tests). One
consumer reads it: the inbox discovery sensor, from the stream sequence kept in its cursor.

The format is the S3 event notification document MinIO sends: `{"EventName": ..., "Key":
"bucket/key", "Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": ...},
"object": {"key": <URL-encoded key>, ...}}}]}`. Only an event's kind and key are used: an event
says "look at this group again", never what the group holds (the listing says that).

A message body holds a key, which can carry a member's name: nothing here logs or raises one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote, unquote_plus

from workers.settings import EventSettings

EventKind = Literal["put", "delete"]
CREATED, REMOVED = "s3:ObjectCreated:", "s3:ObjectRemoved:"
# A tick reads at most this many events; the rest wait for the next tick (the sensor then ticks
# again at once: see orchestrator.defs.intake.sensors).
MAX_EVENTS_PER_READ = 20_000
FETCH_BATCH = 1_000
CONNECT_TIMEOUT_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 5.0
# How long JetStream remembers a message id: a producer that publishes an event again within
# this window (the bridge replaying from its checkpoint after a restart) adds nothing.
DUPLICATE_WINDOW = timedelta(minutes=10)


class EventsUnavailable(RuntimeError):
    """The stream cannot be read or written now (server down, stream missing, timeout). The message
    names the server by host and port and the reason, never NATS_URL's credentials."""


@dataclass(frozen=True, slots=True)
class BucketEvent:
    seq: int
    kind: EventKind
    key: str


@dataclass(frozen=True)
class Position:
    """Where a reader is: the stream (by when it was created, so a re-created stream is noticed)
    and the last sequence read."""

    stream_created: str
    seq: int

    def dump(self) -> dict:
        return {"stream_created": self.stream_created, "seq": self.seq}

    @classmethod
    def load(cls, entry: dict | None) -> Position | None:
        if not entry:
            return None
        return cls(stream_created=str(entry["stream_created"]), seq=int(entry["seq"]))


@dataclass(frozen=True)
class EventBatch:
    """What one read found: the inbox events after `since` (in stream order), where to go on from,
    and `gap`: why events may be missing between `since` and these (then a full listing must
    find what they would have said), or None."""

    events: list[BucketEvent]
    position: Position
    gap: str | None
    foreign: int  # messages that are no put or delete under the inbox of our bucket
    backlog: int  # events left in the stream for the next read


def event_document(bucket: str, key: str, kind: EventKind, size: int = 0, etag: str = "") -> bytes:
    """The message a producer publishes for one object: MinIO's shape, so both producers match."""
    name = "s3:ObjectCreated:Put" if kind == "put" else "s3:ObjectRemoved:Delete"
    record = {
        "eventVersion": "2.0",
        "eventSource": "health-intake:bridge",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket},
            "object": {"key": quote(key, safe=""), "size": size, "eTag": etag},
        },
    }
    document = {"EventName": name, "Key": f"{bucket}/{key}", "Records": [record]}
    return json.dumps(document, separators=(",", ":")).encode()


def parse_document(body: bytes) -> Iterator[tuple[EventKind, str, str]]:
    """(kind, bucket, key) for each put or delete record in a message; nothing for anything else
    (MinIO's test event, another event type, a body that is no event document)."""
    try:
        document = json.loads(body)
        records = document.get("Records") or []
    except (ValueError, AttributeError):
        return
    for record in records:
        try:
            name = record["eventName"]
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            continue
        if name.startswith(CREATED):
            yield "put", bucket, key
        elif name.startswith(REMOVED):
            yield "delete", bucket, key


def stream_config(settings: EventSettings) -> dict:
    """The stream as the platform creates it: file storage, kept EVENTS_RETENTION_HOURS, message
    ids remembered for DUPLICATE_WINDOW. MinIO needs it to exist before it can publish."""
    return {
        "name": settings.stream,
        "subjects": [settings.subject],
        "storage": "file",
        "retention": "limits",
        "max_age": settings.retention_hours * 3600,
        "duplicate_window": DUPLICATE_WINDOW.total_seconds(),
        "description": "Inbox bucket events (put and delete) for the inbox discovery sensor",
    }


async def connect(settings: EventSettings):
    """A connection that fails at once when the server is away (no reconnect loop to hang a tick)."""
    import nats  # imported here: only events mode and the bridge need the client

    async def quiet(_error: Exception) -> None:
        """nats logs each failed attempt with its traceback; the caller reports the failure once."""

    try:
        return await asyncio.wait_for(
            nats.connect(
                settings.nats_url,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # two attempts in all (0 would mean without end)
                reconnect_time_wait=0.2,
                error_cb=quiet,
            ),
            timeout=2 * CONNECT_TIMEOUT_SECONDS + 1,
        )
    except Exception as exc:  # noqa: BLE001  # nats raises OSError, its own errors, timeouts
        raise EventsUnavailable(f"NATS server {settings.nats_server} not reachable: {describe(exc)}") from None


async def ensure_stream(js, settings: EventSettings):
    """The stream's info, creating the stream when it does not exist."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(settings.stream)
    except NotFoundError:
        config = stream_config(settings)
        return await js.add_stream(
            api.StreamConfig(
                name=config["name"],
                subjects=config["subjects"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                max_age=config["max_age"],
                duplicate_window=config["duplicate_window"],
                description=config["description"],
            )
        )


def read_events(settings: EventSettings, bucket: str, inbox_prefix: str, since: Position | None) -> EventBatch:
    """The inbox events after `since`, at most MAX_EVENTS_PER_READ; EventsUnavailable when the
    stream cannot be read. With no `since` (a first read) the batch starts at the stream's end,
    with a gap: what happened before is for a full listing to find."""
    return run(_read_events(settings, bucket, inbox_prefix, since))


def run(coroutine):
    try:
        return asyncio.run(asyncio.wait_for(coroutine, timeout=4 * REQUEST_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS))
    except EventsUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001  # a timeout, the server going away mid-read
        raise EventsUnavailable(f"reading the event stream failed: {describe(exc)}") from None


async def _read_events(settings: EventSettings, bucket: str, inbox_prefix: str, since: Position | None) -> EventBatch:
    nc = await connect(settings)
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        info = await ensure_stream(js, settings)
        created = stream_created(info)
        first, last = info.state.first_seq, info.state.last_seq
        gap = find_gap(since, created, first, last)
        start = start_seq(since, created, first, last)
        end = min(last, start + MAX_EVENTS_PER_READ - 1)
        events: list[BucketEvent] = []
        foreign = 0
        seq = start - 1
        if end >= start:
            async for msg_seq, body in messages(js, settings, start, end):
                seq = msg_seq
                found = list(parse_document(body))
                relevant = [(k, key) for k, b, key in found if b == bucket and key.startswith(inbox_prefix)]
                foreign += len(found) - len(relevant) if found else 1
                events.extend(BucketEvent(msg_seq, kind, key) for kind, key in relevant)
        position = Position(stream_created=created, seq=max(seq, start - 1))
        return EventBatch(events, position, gap, foreign, backlog=max(0, last - position.seq))
    finally:
        await nc.close()


def start_seq(since: Position | None, created: str, first: int, last: int) -> int:
    """Where to read from: after the position, or the stream's start when the stream is new to the
    reader; at the end (nothing to read) on a first read or when the stream is behind the position."""
    if since is None or (since.stream_created == created and since.seq > last):
        return last + 1
    if since.stream_created != created:
        return max(first, 1)
    return max(since.seq + 1, first, 1)


def find_gap(since: Position | None, created: str, first: int, last: int) -> str | None:
    if since is None:
        return "no stream position yet (first read)"
    if since.stream_created != created:
        return "the event stream was created anew"
    if since.seq > last:
        return f"the event stream ends at {last}, before the position read last ({since.seq}): purged"
    if since.seq + 1 < first:
        return f"events {since.seq + 1}..{first - 1} left the stream (retention) before they were read"
    return None


async def messages(js, settings: EventSettings, start: int, end: int):
    """(stream sequence, body) of each message from start to end, through an ephemeral consumer
    that acknowledges nothing and goes away on its own."""
    from nats.js import api
    from nats.js.errors import FetchTimeoutError

    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=api.AckPolicy.NONE,
        inactive_threshold=30.0,
        max_waiting=1,
    )
    subscription = await js.pull_subscribe(settings.subject, stream=settings.stream, config=config)
    try:
        seq = start - 1
        while seq < end:
            try:
                batch = await subscription.fetch(min(FETCH_BATCH, end - seq), timeout=REQUEST_TIMEOUT_SECONDS)
            except FetchTimeoutError:
                return  # messages deleted from the middle of the stream: nothing more to read now
            for msg in batch:
                seq = msg.metadata.sequence.stream
                yield seq, msg.data
                if seq >= end:
                    return
    finally:
        await subscription.unsubscribe()


def stream_created(info) -> str:
    created = getattr(info, "created", None)
    if isinstance(created, datetime):
        return created.astimezone(UTC).isoformat()
    return str(created or "")


def publish(settings: EventSettings, messages: Iterable[tuple[str, bytes]]) -> int:
    """Publish (message id, body) pairs in order; the count JetStream stored (a repeated id within
    DUPLICATE_WINDOW is acknowledged as a duplicate and not counted). EventsUnavailable on failure."""
    return run(_publish(settings, list(messages)))


async def _publish(settings: EventSettings, items: list[tuple[str, bytes]]) -> int:
    nc = await connect(settings)
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_SECONDS)
        await ensure_stream(js, settings)
        stored = 0
        for msg_id, body in items:
            ack = await js.publish(settings.subject, body, stream=settings.stream, headers={"Nats-Msg-Id": msg_id})
            stored += not ack.duplicate
        return stored
    finally:
        await nc.close()


def describe(exc: BaseException) -> str:
    """An exception in one line without its arguments' text beyond the first line (a server's
    error can quote a subject; a body is never in one)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
