"""The SeaweedFS producer of bucket events: follows the filer's metadata log and publishes the
inbox's puts and deletes to the JetStream stream, in the format MinIO's NATS target uses.

`python -m workers.bridge` (dev mode: dev_up.sh starts it beside its own SeaweedFS). The filer's
log (gRPC SeaweedFiler.SubscribeMetadata) is durable and replayable; its webhook is at-most-once
and is not used. Each event goes out with `Nats-Msg-Id` = a digest of (ts_ns, path, kind), so a
replay within the stream's duplicate window adds nothing, and with the filer time it came from in
the `Health-Intake-Filer-Ts-Ns` header. That header on the stream's last message is the checkpoint:
it is written in the same publish as the event it follows, so it can never be ahead of what the
stream holds, and a bridge restarted after a crash, with no file of its own to lose, goes on from
it (less a 2 s overlap, which the duplicate window drops; after a longer outage than that window,
events before the checkpoint are skipped instead). No last message (a new or emptied stream): it
starts from now, and the reader sees the gap (a new stream) and lists the inbox in full.

In a versioned bucket (ours: Object Lock) an object's versions live in `<key>.versions/v_<id>`:
a new version is a put of `<key>`, a new delete marker or a removed version a delete; updates of
an existing version (SeaweedFS marking it no longer latest) say nothing new. Keys can carry PHI:
they go into message bodies only, never into headers or log lines (the bridge logs no object).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from workers.events import (
    DUPLICATE_WINDOW,
    EventKind,
    EventsUnavailable,
    connect,
    describe,
    ensure_stream,
    event_document,
)
from workers.settings import EventSettings, SettingsError, load_event_settings, load_intake_settings, load_settings

CHECKPOINT_HEADER = "Health-Intake-Filer-Ts-Ns"
# Replayed again below the checkpoint on every (re)start: events of the same nanosecond, or logged
# out of order by the filer, are not lost; the duplicate window drops the ones already published.
OVERLAP_NS = 2_000_000_000
# scripts/s3_server.sh: the filer's gRPC port is the S3 port + 10000 + 6.
FILER_GRPC_OFFSET = 10006
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 10.0
CLIENT_NAME = "health-intake-bridge"
DELETE_MARKER = "Seaweed-X-Amz-Delete-Marker"
VERSIONS = ".versions"
UPLOADS = ".uploads/"


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One put or delete of an object key, from one filer event (a rename gives two)."""

    ts_ns: int
    kind: EventKind
    key: str
    path: str  # the filer path it came from: with ts_ns and kind, the event's identity
    size: int = 0

    @property
    def message_id(self) -> str:
        return hashlib.sha256(f"{self.ts_ns}\0{self.path}\0{self.kind}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class BridgeSettings:
    bucket: str
    inbox_prefix: str
    filer_grpc: str  # host:port
    events: EventSettings

    @property
    def bucket_root(self) -> str:
        return f"/buckets/{self.bucket}/"

    @property
    def path_prefix(self) -> str:
        return self.bucket_root + self.inbox_prefix


def load_bridge_settings(env: Mapping[str, str] | None = None) -> BridgeSettings:
    """MINIO_BUCKET (workers.settings), INBOX_PREFIX, the NATS settings, and SEAWEEDFS_FILER_GRPC:
    the filer's gRPC host:port, by default MINIO_ENDPOINT's host at its port + 10006."""
    env = os.environ if env is None else env
    settings = load_settings(env)
    address = env.get("SEAWEEDFS_FILER_GRPC", "").strip()
    if not address:
        endpoint = urlsplit(settings.s3_endpoint)
        address = f"{endpoint.hostname}:{(endpoint.port or 80) + FILER_GRPC_OFFSET}"
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError("SEAWEEDFS_FILER_GRPC must be host:port, such as 127.0.0.1:19006")
    return BridgeSettings(settings.bucket, load_intake_settings(env).inbox_prefix, address, load_event_settings(env))


def object_changes(response, bucket_root: str, inbox_prefix: str) -> list[ObjectChange]:
    """The puts and deletes of inbox objects one SubscribeMetadataResponse says (see the module's
    docstring); nothing for directories, multipart parts, or updates of an existing version."""
    note, ts_ns = response.event_notification, response.ts_ns
    old = note.old_entry if note.HasField("old_entry") else None
    new = note.new_entry if note.HasField("new_entry") else None
    old_path = f"{response.directory}/{old.name}" if old is not None else ""
    new_path = f"{note.new_parent_path or response.directory}/{new.name}" if new is not None else ""
    changes: list[ObjectChange] = []
    if old is not None and not old.is_directory and old_path != new_path:
        changes.append(ObjectChange(ts_ns, "delete", "", old_path))
    if new is not None and not new.is_directory and (old is None or old_path != new_path or not in_versions(new_path)):
        marker = new.extended.get(DELETE_MARKER) == b"true"
        changes.append(ObjectChange(ts_ns, "delete" if marker else "put", "", new_path, new.attributes.file_size))
    keyed = [(change, object_key(change.path, bucket_root)) for change in changes]
    return [
        ObjectChange(c.ts_ns, c.kind, key, c.path, c.size if c.kind == "put" else 0)
        for c, key in keyed
        if key is not None and key.startswith(inbox_prefix)
    ]


def in_versions(path: str) -> bool:
    return path.rpartition("/")[0].endswith(VERSIONS)


def object_key(path: str, bucket_root: str) -> str | None:
    """The object key a filer path stores, or None (outside the bucket, a multipart part)."""
    if not path.startswith(bucket_root):
        return None
    relative = path[len(bucket_root) :]
    if relative.startswith(UPLOADS):
        return None
    parent, _, name = relative.rpartition("/")
    if parent.endswith(VERSIONS) and name.startswith("v_"):
        return parent[: -len(VERSIONS)]
    return relative


def say(line: str) -> None:
    print(f"bridge: {line}", file=sys.stderr, flush=True)


class Outage:
    """One log line when the filer or NATS goes away, one when the bridge is back; a growing wait."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.wait = BACKOFF_FIRST
        self.subscribed = False

    def failed(self, what: str) -> float:
        if self.since is None:
            self.since = time.monotonic()
            say(f"{what}; retrying every {BACKOFF_FIRST:g}-{BACKOFF_MOST:g} s")
        wait, self.wait = self.wait, min(self.wait * 2, BACKOFF_MOST)
        return wait

    def ended(self, start: str) -> None:
        """A session is subscribed: the first one says from where, a later one ends an outage."""
        if not self.subscribed:
            say(start)
        elif self.since is not None:
            say(f"reconnected after {time.monotonic() - self.since:.1f} s")
        self.subscribed, self.since, self.wait = True, None, BACKOFF_FIRST


@dataclass(frozen=True)
class Checkpoint:
    ts_ns: int  # the filer time of the last event published
    stale: bool  # published longer ago than the duplicate window: a repeat would be stored again


async def read_checkpoint(js, settings: EventSettings) -> Checkpoint | None:
    """The bridge's checkpoint: its header on the stream's last message (creating the stream when
    it does not exist)."""
    from nats.js.errors import NotFoundError

    info = await ensure_stream(js, settings)
    window = timedelta(seconds=info.config.duplicate_window or DUPLICATE_WINDOW.total_seconds())
    try:
        last = await js.get_last_msg(settings.stream, settings.subject)
    except NotFoundError:
        return None
    value = (last.headers or {}).get(CHECKPOINT_HEADER, "")
    if not value.isdigit():
        return None
    stale = last.time is None or datetime.now(UTC) - last.time > window
    return Checkpoint(int(value), stale)


async def follow(settings: BridgeSettings, outage: Outage, client_id: int, epoch: int) -> None:
    """One session: NATS, the checkpoint, the filer's log from it, published event by event, until
    something fails (the caller waits and starts another)."""
    import grpc  # type: ignore[import-untyped]  # grpcio ships no types (types-grpcio is not installed)

    nc = await connect(settings.events)
    channel = grpc.aio.insecure_channel(settings.filer_grpc, options=[("grpc.keepalive_time_ms", 20_000)])
    try:
        js = nc.jetstream(timeout=5.0)
        checkpoint = await read_checkpoint(js, settings.events)
        since = (checkpoint.ts_ns if checkpoint is not None else time.time_ns()) - OVERLAP_NS
        # Past the duplicate window JetStream would store the overlap's events again: those before
        # the checkpoint are skipped instead (the filer logs in time order; at worst the
        # checkpoint's own event is published twice, never one lost).
        skip_before = checkpoint.ts_ns if checkpoint is not None and checkpoint.stale else 0
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=5.0)
        except TimeoutError:
            raise ConnectionError(f"filer {settings.filer_grpc} not reachable") from None
        outage.ended(f"subscribed from {'the checkpoint' if checkpoint is not None else 'now (no checkpoint)'}")
        async for event in filer_events(channel, settings.path_prefix, since, client_id, epoch):
            for change in object_changes(event, settings.bucket_root, settings.inbox_prefix):
                if change.ts_ns >= skip_before:
                    await publish(js, settings, change)
    finally:
        await channel.close()
        await nc.close()


async def filer_events(channel, path_prefix: str, since_ns: int, client_id: int, epoch: int):
    """The filer's metadata events under `path_prefix` from `since_ns` on, then live, without end."""
    from workers import filer_pb

    subscribe = channel.unary_stream(
        filer_pb.SUBSCRIBE_METADATA,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=filer_pb.SubscribeMetadataResponse.FromString,
    )
    request = filer_pb.SubscribeMetadataRequest(
        client_name=CLIENT_NAME,
        path_prefix=path_prefix,
        since_ns=since_ns,
        # Without a client id and epoch the filer ends the stream after the history.
        client_id=client_id,
        client_epoch=epoch,
    )
    async for response in subscribe(request):
        for event in (response, *response.events):  # a batch only when asked for; harmless
            yield event


async def publish(js, settings: BridgeSettings, change: ObjectChange) -> None:
    body = event_document(settings.bucket, change.key, change.kind, size=change.size)
    headers = {"Nats-Msg-Id": change.message_id, CHECKPOINT_HEADER: str(change.ts_ns)}
    await js.publish(settings.events.subject, body, stream=settings.events.stream, headers=headers)


async def run(settings: BridgeSettings, stop: asyncio.Event) -> None:
    """Sessions until `stop`, with a growing wait between failed ones."""
    outage, client_id = Outage(), int.from_bytes(os.urandom(4)) & 0x7FFFFFFF
    epoch = int(time.time()) & 0x3FFFFFFF
    while not stop.is_set():
        epoch += 1  # a new subscription of the same client: the filer drops the earlier one's
        session = asyncio.ensure_future(follow(settings, outage, client_id, epoch))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
            return
        stopping.cancel()
        wait = outage.failed(why(session.exception(), settings))
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except TimeoutError:
            pass


def why(exc: BaseException | None, settings: BridgeSettings) -> str:
    from nats.errors import Error as NatsError

    if exc is None:
        return f"the filer {settings.filer_grpc} ended the subscription"
    if isinstance(exc, EventsUnavailable | ConnectionError):
        return str(exc)
    code = getattr(exc, "code", None)
    if callable(code):  # a grpc.aio.AioRpcError: the filer went away or refused
        return f"filer {settings.filer_grpc}: {code().name}"
    if isinstance(exc, NatsError | OSError | TimeoutError):
        return f"NATS server {settings.events.nats_server}: {describe(exc)}"
    return f"the session failed: {describe(exc)}"


async def serve(settings: BridgeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    say(
        f"following filer {settings.filer_grpc} under /buckets/{settings.bucket}/{settings.inbox_prefix} into "
        f"stream {settings.events.stream} at {settings.events.nats_server}"
    )
    await run(settings, stop)
    say("stopped")


def main() -> int:
    try:
        settings = load_bridge_settings()
    except SettingsError as exc:
        say(str(exc))
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
