"""What the inbox sensor looks at each tick: the whole inbox (listing mode), or the groups the
bucket's events touched (events mode), with a full listing as reconciliation.

Events mode (DISCOVERY_MODE=events). Each tick reads the inbox's put and delete events from the
JetStream stream (workers.events) after the sequence in the sensor's cursor, and lists only the
groups they touch, plus the groups still pending (waiting out their quiet period, or for a
marker). A full listing, the reconciliation pass, runs every RECONCILE_MINUTES, and at once
when the stream shows a gap (first read, stream created anew or purged, events aged out before
they were read) or when the sensor does not know a pending group's key (the code server
restarted). A pass is spread over ticks: each tick lists for at most SLICE_SECONDS (well under
half of Dagster's 60 s sensor timeout) and stops at a group boundary. Groups a pass finds whose
content no event had announced are counted (`missed`: their objects), and each finished pass is
an observation of the inbox asset. With NATS away every tick lists the whole inbox, as listing
mode does, with a warning each tick: degraded, never silent.

Keys never go into the cursor (Dagster shows it). The keys of pending groups and a pass's
progress live in this process's memory (the code server's, which evaluates every tick); a new
process starts a pass to find them again, so a restart costs time, never a group.

Either mode folds each group as the listing streams (workers.discovery.fold): memory grows with
groups, not objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg

from orchestrator.defs.intake import assets
from workers import discovery, events
from workers.discovery import GroupView, Upload
from workers.inbox import InboxObject, group_id, group_of, list_objects
from workers.settings import EventSettings, IntakeSettings, load_settings
from workers.store import S3Client, make_s3_client

# A reconciliation slice lists for this long, then finishes the group it is in.
SLICE_SECONDS = 20.0


@dataclass
class Look:
    """What one tick saw. `listed`: ids of the groups whose state this tick decides (None: all of
    them, the whole inbox was listed); each listed group still in the inbox has a view."""

    views: dict[str, GroupView]
    shallow: list[InboxObject]
    uploads: list[Upload]
    listed: set[str] | None
    position: dict | None = None
    reconciled_at: datetime | None = None
    missed: int = 0
    observations: list[dg.AssetObservation] = field(default_factory=list)


@dataclass
class Pass:
    """A reconciliation pass in progress: where the listing goes on, what it has seen."""

    reason: str
    started: datetime
    counts_missed: bool = True  # not on a first read: what was there before is no missed event
    began: float = field(default_factory=time.monotonic)
    start_after: str | None = None
    seen: set[str] = field(default_factory=set)
    objects: int = 0
    missed_objects: int = 0
    missed_groups: int = 0


@dataclass
class Memory:
    """The sensor's memory between ticks of one process, for one bucket, prefix and stream."""

    identity: tuple
    keys: dict[str, str] = field(default_factory=dict)  # group id -> grouping key
    reconcile: Pass | None = None
    unrecorded: set[str] = field(default_factory=set)  # keys forming no group, not recorded yet


def retry_later(shallow: list[InboxObject]) -> None:
    """Keys that form no group whose rejection could not be recorded this tick (the metadata DB
    down): events mode looks at them again next tick, as listing mode would by listing them."""
    if _memory is not None:
        _memory.unrecorded |= {obj.key for obj in shallow}


_memory: Memory | None = None


def memory(identity: tuple) -> Memory:
    global _memory
    if _memory is None or _memory.identity != identity:
        _memory = Memory(identity)
    return _memory


def by_listing(intake: IntakeSettings) -> Look:
    """The whole inbox, folded group by group as its pages stream. Any S3 error propagates: the
    tick fails and its cursor is not advanced."""
    settings = load_settings()
    s3 = make_s3_client(settings)
    # Uploads first: one that completes in between is then already among the listed objects,
    # rather than missing from both listings and letting its group close without it.
    uploads = discovery.list_uploads(s3, settings.bucket, intake.inbox_prefix)
    views, shallow = discovery.fold(
        list_objects(s3, settings.bucket, intake.inbox_prefix), intake, relist_in(s3, settings.bucket)
    )
    return Look(views, shallow, uploads, listed=None)


def relist_in(s3: S3Client, bucket: str) -> discovery.Relist:
    return lambda grouping_key: list_objects(s3, bucket, grouping_key)


def by_events(intake: IntakeSettings, ev: EventSettings, cursor: discovery.Cursor, now: datetime, log) -> Look:
    settings = load_settings()
    try:
        batch = events.read_events(ev, settings.bucket, intake.inbox_prefix, events.Position.load(cursor.position))
    except events.EventsUnavailable as exc:
        log.warning(
            f"DISCOVERY_MODE=events but the event stream cannot be read ({exc}): "
            "this tick lists the whole inbox instead, as listing mode does"
        )
        look = by_listing(intake)
        look.reconciled_at = now  # the whole inbox was listed: as good as a finished pass
        return look
    s3 = make_s3_client(settings)
    mind = memory((settings.bucket, intake.inbox_prefix, ev.stream))
    dirty: set[str] = set()
    shallow_keys, mind.unrecorded = mind.unrecorded, set()
    for event in batch.events:
        group = group_of(event.key, intake.inbox_prefix, intake.group_by_depth)
        if group is None:
            if event.kind == "put":
                shallow_keys.add(event.key)
            continue
        dirty.add(group.grouping_key)
        mind.keys[group_id(group.grouping_key)] = group.grouping_key
    pending = {gid for gid, sighting in cursor.groups.items() if not sighting.requested}
    forgotten = pending - set(mind.keys)
    to_list = dirty | {mind.keys[gid] for gid in pending - forgotten}

    uploads = discovery.list_uploads(s3, settings.bucket, intake.inbox_prefix)
    relist = relist_in(s3, settings.bucket)
    views: dict[str, GroupView] = {}
    for grouping_key in sorted(to_list):
        listed, _ = discovery.fold(list_objects(s3, settings.bucket, grouping_key), intake, relist)
        views.update(listed)
    shallow = [obj for key in sorted(shallow_keys) for obj in exact(s3, settings.bucket, key)]
    look = Look(views, shallow, uploads, listed={group_id(key) for key in to_list}, position=batch.position.dump())
    if batch.backlog:
        log.info(f"{len(batch.events)} inbox event(s) read; {batch.backlog} more wait for the next tick")

    reason = pass_reason(batch, cursor, forgotten, now, ev)
    if mind.reconcile is None and reason:
        mind.reconcile = Pass(reason=reason, started=now, counts_missed=cursor.position is not None)
        log.info(f"reconciliation: listing the whole inbox over the next ticks ({reason})")
    if mind.reconcile is not None:
        # Groups listed during a pass count as seen by it, wherever the pass's listing has got to.
        mind.reconcile.seen |= look.listed or set()
        reconcile_slice(s3, settings.bucket, intake, mind, cursor, look, now, log)
    look.shallow.sort(key=lambda obj: obj.key)  # in key order, as a listing gives them
    return look


def pass_reason(
    batch: events.EventBatch, cursor: discovery.Cursor, forgotten: set[str], now: datetime, ev: EventSettings
) -> str | None:
    if batch.gap:
        return batch.gap
    if forgotten:
        return f"{len(forgotten)} pending group(s) this process has not seen yet (the code server restarted)"
    if cursor.reconciled_at is None or now - cursor.reconciled_at >= timedelta(minutes=ev.reconcile_minutes):
        return f"RECONCILE_MINUTES ({ev.reconcile_minutes:g}) since the last full listing"
    return None


def reconcile_slice(
    s3: S3Client,
    bucket: str,
    intake: IntakeSettings,
    mind: Memory,
    cursor: discovery.Cursor,
    look: Look,
    now: datetime,
    log,
) -> None:
    """List the next slice of the pass into `look`; at the pass's end, drop the groups it did not
    find and report what it found that no event had announced."""
    current = mind.reconcile
    assert current is not None and look.listed is not None
    reader = SliceReader(s3, bucket, intake, current.start_after, time.monotonic() + SLICE_SECONDS)
    views, shallow = discovery.fold(reader, intake, relist_in(s3, bucket))
    current.start_after = reader.last_key
    current.objects += reader.count
    for grouping_key, view in views.items():
        gid = group_id(grouping_key)
        current.seen.add(gid)
        mind.keys[gid] = grouping_key
        if gid in look.listed:
            continue  # an event touched it this tick: listed already, announced
        known = cursor.groups.get(gid)
        if current.counts_missed and (known is None or not discovery.same_content(known.fingerprint, view.fingerprint)):
            current.missed_objects += view.object_count
            current.missed_groups += 1
            look.missed += view.object_count
        look.views[grouping_key] = view
        look.listed.add(gid)
    have = {obj.key for obj in look.shallow}
    look.shallow += [obj for obj in shallow if obj.key not in have]
    if not reader.finished:
        return
    gone = set(cursor.groups) - current.seen - look.listed
    look.listed |= gone
    for gid in gone:
        mind.keys.pop(gid, None)
    look.reconciled_at = now
    mind.reconcile = None
    seconds = time.monotonic() - current.began
    message = (
        f"reconciliation done in {seconds:.1f} s ({current.reason}): {current.objects} object(s) listed, "
        f"{current.missed_objects} in {current.missed_groups} group(s) no event had announced"
    )
    if not (current.missed_objects or (gone and current.counts_missed)):
        log.info(message)
        return
    log.warning(message)
    look.observations.append(
        dg.AssetObservation(
            asset_key=assets.inbox.key,
            description=message,
            metadata={
                "reconciliation_reason": current.reason,
                "objects_listed": current.objects,
                "missed_event_objects": current.missed_objects,
                "missed_event_groups": current.missed_groups,
                "missed_event_objects_total": cursor.missed + look.missed,
                "groups_gone_without_event": len(gone),
                "seconds": round(seconds, 1),
            },
        )
    )


class SliceReader:
    """The inbox's objects after `start_after`, in key order, until the deadline has passed and a
    group has ended: a slice never splits a group, so each group it yields is whole."""

    def __init__(self, s3: S3Client, bucket: str, intake: IntakeSettings, start_after: str | None, deadline: float):
        self.s3, self.bucket, self.intake = s3, bucket, intake
        self.start_after, self.deadline = start_after, deadline
        self.last_key: str | None = start_after
        self.count = 0
        self.finished = False

    def __iter__(self) -> Iterator[InboxObject]:
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.intake.inbox_prefix, StartAfter=self.start_after or ""
        )
        current_group: str | None = None
        for page in pages:
            for entry in page.get("Contents", ()):
                obj = InboxObject.from_listing(entry)
                group = group_of(obj.key, self.intake.inbox_prefix, self.intake.group_by_depth)
                key = group.grouping_key if group else obj.key
                if key != current_group and time.monotonic() >= self.deadline and self.count:
                    return  # a group boundary after the deadline: the next slice starts here
                current_group = key
                self.last_key = obj.key
                self.count += 1
                yield obj
        self.finished = True


def exact(s3: S3Client, bucket: str, key: str) -> list[InboxObject]:
    """The object at exactly `key`, if it is still there (an event names a key; its size and
    ETag come from the store)."""
    return [obj for obj in list_objects(s3, bucket, key) if obj.key == key]
