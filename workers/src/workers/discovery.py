"""When an inbox group is complete: the pure core of the inbox discovery sensor.

A group is complete when its marker file is at its root, or when its content (key set, sizes,
ETags) has looked the same to the sensor for QUIESCENCE_MINUTES. Quiet time is judged from what
the sensor observed over its ticks (kept in its cursor), never from LastModified, which a
partner's copy tool may set to anything. No group closes while a multipart upload into it is in
progress, unless that upload is older than ABANDONED_UPLOAD_HOURS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, get_args
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from workers.inbox import Group, InboxObject, group_id, group_of
from workers.settings import IntakeSettings
from workers.store import S3Client

# How a group was judged complete, spelled as the seed spells them (the job's run config, the
# sensor's requests, submission.grouping_method). Dagster offers a Literal config field as an enum.
GroupingMethod = Literal["MARKER_FILE", "QUIESCENCE"]
MARKER: GroupingMethod = "MARKER_FILE"
QUIESCENCE: GroupingMethod = "QUIESCENCE"
GROUPING_METHODS: tuple[GroupingMethod, ...] = get_args(GroupingMethod)
# The spellings used before the seed's were adopted: accepted on input (runs launched then are
# re-executed with their stored config), never written. Submissions registered then keep them,
# as their immutable manifests do.
GROUPING_METHOD_ALIASES: dict[str, GroupingMethod] = {"marker": MARKER, "quiescence": QUIESCENCE}
GroupingMethodInput = Literal["MARKER_FILE", "QUIESCENCE", "marker", "quiescence"]
assert set(get_args(GroupingMethodInput)) == set(GROUPING_METHODS) | set(GROUPING_METHOD_ALIASES)
# 2: groups keyed by their id, not their key (the cursor is stored and shown by Dagster).
# 3: and, in events mode, the event stream position, the last full listing and missed events.
# 4: requested groups apart, as their content version alone (a quarter of the text per group:
#    with STAGER_DELETE_INBOX=false every group ever delivered stays in the inbox, and here).
CURSOR_VERSION = 4
READABLE_CURSOR_VERSIONS = (2, 3, 4)
# A group's content is identified by this many hex digits of its fingerprint: the run key's
# version, and what a requested group's cursor entry keeps (64 bits: no two contents of one group
# meet by chance).
CONTENT_VERSION_CHARS = 16


@dataclass(frozen=True)
class Upload:
    """A multipart upload in progress: its object is not listed until the upload completes."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Sighting:
    """How a group last looked to the sensor, since when, and whether that was requested. A
    requested group read back from a cursor keeps only its content version as fingerprint, and no
    `since` (its quiet clock is over): compare fingerprints with same_content."""

    fingerprint: str
    since: datetime | None
    requested: bool = False


def grouping_method(value: str) -> GroupingMethod:
    """The seed's name for `value` (a name or an alias); ValueError naming the accepted ones."""
    if value in GROUPING_METHODS:
        return value  # type: ignore[return-value]
    if value in GROUPING_METHOD_ALIASES:
        return GROUPING_METHOD_ALIASES[value]
    raise ValueError(
        f"grouping_method must be one of {', '.join(GROUPING_METHODS)} "
        f"(or {', '.join(GROUPING_METHOD_ALIASES)}), not {value!r}"
    )


@dataclass(frozen=True)
class CompleteGroup:
    group: Group
    method: GroupingMethod
    fingerprint: str
    object_count: int

    @property
    def run_key(self) -> str:
        """Identity + version: the same content never registers twice, a late file registers anew.
        The group's id, not its key: run keys are shown and stored where keys must not go."""
        return f"{group_id(self.group.grouping_key)}@{content_version(self.fingerprint)}"


@dataclass(frozen=True)
class Evaluation:
    complete: list[CompleteGroup]
    state: dict[str, Sighting]  # by group id
    shallow_keys: list[str]
    blocked: dict[str, list[Upload]]
    abandoned_uploads: list[Upload]


@dataclass(frozen=True)
class GroupView:
    """A group as one listing saw it, folded as the listing streamed: its content's fingerprint
    (workers.inbox.fingerprint of its objects), how many objects, whether its marker is there.
    Memory per group, not per object."""

    group: Group
    fingerprint: str
    object_count: int
    has_marker: bool


class _Fold:
    """One group's fold. S3 lists keys in UTF-8 binary order, which is code point order, so the
    fingerprint (workers.inbox.fingerprint: sorted by key) streams; an object out of that order
    marks the fold for a sorted pass over the group's own listing (see fold's `relist`)."""

    def __init__(self, group: Group, marker_key: str):
        self.group, self.marker_key = group, marker_key
        self.digest = hashlib.sha256()
        self.count, self.has_marker, self.last = 0, False, ""
        self.in_order = True

    def add(self, obj: InboxObject) -> None:
        self.count += 1
        self.has_marker = self.has_marker or obj.key == self.marker_key
        self.in_order = self.in_order and obj.key >= self.last
        self.last = obj.key
        self.digest.update(f"{obj.key}\0{obj.size}\0{obj.etag}\n".encode())

    def view(self) -> GroupView:
        return GroupView(self.group, self.digest.hexdigest(), self.count, self.has_marker)


Relist = Callable[[str], Iterable[InboxObject]]


def fold(
    objects: Iterable[InboxObject], settings: IntakeSettings, relist: Relist | None = None
) -> tuple[dict[str, GroupView], list[InboxObject]]:
    """Group views by grouping key, and the objects that form no group, from a listing stream.
    A group the stream gave out of key order is folded again from relist(grouping_key), sorted
    (ValueError without `relist`): the fingerprint never depends on the order a store lists in."""
    folds: dict[str, _Fold] = {}
    shallow: list[InboxObject] = []
    for obj in objects:
        group = group_of(obj.key, settings.inbox_prefix, settings.group_by_depth)
        if group is None:
            shallow.append(obj)
            continue
        current = folds.get(group.grouping_key)
        if current is None:
            current = folds[group.grouping_key] = _Fold(group, group.marker_key(settings.marker_file))
        current.add(obj)
    for key, current in folds.items():
        if not current.in_order:
            if relist is None:
                raise ValueError(f"group {group_id(key)} was listed out of key order")
            folds[key] = _Fold(current.group, current.marker_key)
            for obj in sorted(relist(key), key=lambda o: o.key):
                folds[key].add(obj)
    return {key: f.view() for key, f in folds.items() if f.count}, shallow


def evaluate(
    objects: Iterable[InboxObject],
    uploads: Iterable[Upload],
    state: Mapping[str, Sighting],
    now: datetime,
    settings: IntakeSettings,
) -> Evaluation:
    """One tick over a listing of the whole inbox: which groups are complete now, and the state to
    remember for the next tick (groups no longer listed leave it)."""
    objects = list(objects)
    views, shallow = fold(objects, settings, relist=lambda key: (o for o in objects if o.key.startswith(key)))
    evaluation = evaluate_views(views, uploads, state, now, settings)
    return replace(evaluation, shallow_keys=[obj.key for obj in shallow])


def evaluate_views(
    views: Mapping[str, GroupView],
    uploads: Iterable[Upload],
    state: Mapping[str, Sighting],
    now: datetime,
    settings: IntakeSettings,
    listed: Iterable[str] | None = None,
) -> Evaluation:
    """One tick over the groups listed this tick. `listed`: the ids of the groups listed (a view
    for each that still has objects; one without has left the inbox); every other group's state
    is kept as it was. None: the whole inbox was listed, and groups without a view leave the state."""
    live, abandoned = split_abandoned(uploads, now, settings)
    blocked = uploads_by_group(live, settings)
    complete = []
    new_state: dict[str, Sighting] = {}
    if listed is not None:
        decided = set(listed)
        new_state = {gid: s for gid, s in state.items() if gid not in decided}
    for grouping_key, view in views.items():
        sighting = observe(state.get(group_id(grouping_key)), view.fingerprint, now)
        method = None
        if not sighting.requested and grouping_key not in blocked:
            method = completion_method(view, sighting, now, settings)
        if method:
            complete.append(CompleteGroup(view.group, method, sighting.fingerprint, view.object_count))
            sighting = replace(sighting, requested=True)
        new_state[group_id(grouping_key)] = sighting
    return Evaluation(complete, new_state, [], blocked, abandoned)


def split_abandoned(
    uploads: Iterable[Upload], now: datetime, settings: IntakeSettings
) -> tuple[list[Upload], list[Upload]]:
    cutoff = now - timedelta(hours=settings.abandoned_upload_hours)
    live: list[Upload] = []
    abandoned: list[Upload] = []
    for upload in uploads:
        (abandoned if upload.initiated < cutoff else live).append(upload)
    return live, abandoned


def uploads_by_group(uploads: Iterable[Upload], settings: IntakeSettings) -> dict[str, list[Upload]]:
    blocked: dict[str, list[Upload]] = {}
    for upload in uploads:
        group = group_of(upload.key, settings.inbox_prefix, settings.group_by_depth)
        if group is not None:
            blocked.setdefault(group.grouping_key, []).append(upload)
    return blocked


def content_version(fingerprint: str) -> str:
    return fingerprint[:CONTENT_VERSION_CHARS]


def same_content(a: str, b: str) -> bool:
    """Whether two fingerprints, either of them possibly a content version, name the same content."""
    return content_version(a) == content_version(b)


def observe(previous: Sighting | None, current: str, now: datetime) -> Sighting:
    """Any change of content restarts the quiet clock and needs a request of its own."""
    if previous is not None and same_content(previous.fingerprint, current):
        return previous
    return Sighting(fingerprint=current, since=now)


def completion_method(
    view: GroupView, sighting: Sighting, now: datetime, settings: IntakeSettings
) -> GroupingMethod | None:
    if view.has_marker:
        return MARKER
    if sighting.since is not None and now - sighting.since >= timedelta(minutes=settings.quiescence_minutes):
        return QUIESCENCE
    return None


@dataclass(frozen=True)
class Cursor:
    """What the sensor remembers between ticks (its Dagster cursor). Events mode adds where it is
    in the event stream (workers.events.Position, dumped), when the last full listing finished, and
    how many objects full listings found that no event had announced (a running total)."""

    groups: dict[str, Sighting]
    position: dict | None = None
    reconciled_at: datetime | None = None
    missed: int = 0


def dump_cursor(cursor: Cursor) -> str:
    """JSON holding only the groups still in the inbox, by their ids (Dagster stores the cursor and
    shows it on the sensor's page: no keys in it), and events mode's numbers. Pending groups with
    their fingerprint and quiet clock; requested ones as a content version alone, since only a
    change of content matters for them (at 100,000 groups the text is ~4 MB, not ~16 MB)."""
    groups, requested = {}, {}
    for key, s in cursor.groups.items():
        if s.requested:
            requested[key] = content_version(s.fingerprint)
        else:
            assert s.since is not None, "a pending group has a quiet clock"
            groups[key] = {"fingerprint": s.fingerprint, "since": s.since.isoformat()}
    document: dict = {"version": CURSOR_VERSION, "groups": groups, "requested": requested}
    if cursor.position is not None:
        document["events"] = cursor.position
    if cursor.reconciled_at is not None:
        document["reconciled_at"] = cursor.reconciled_at.isoformat()
    if cursor.missed:
        document["missed"] = cursor.missed
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def load_cursor(text: str | None) -> Cursor:
    """The cursor in `text`; ValueError when it is not one this module wrote (version 2, before
    events mode, reads as its groups alone; 2 and 3 keep requested groups among the others)."""
    if not text:
        return Cursor({})
    try:
        document = json.loads(text)
        if document["version"] not in READABLE_CURSOR_VERSIONS:
            raise ValueError(f"cursor version {document['version']!r} is not one of {READABLE_CURSOR_VERSIONS}")
        groups = {key: sighting_from(entry, document["version"]) for key, entry in document["groups"].items()}
        if document["version"] >= 4:
            groups.update({key: requested_from(version) for key, version in document["requested"].items()})
        position = document.get("events")
        if position is not None and not (isinstance(position, dict) and {"stream_created", "seq"} <= set(position)):
            raise ValueError("cursor's event position is not one this module wrote")
        reconciled = document.get("reconciled_at")
        return Cursor(
            groups=groups,
            position=position,
            reconciled_at=aware(datetime.fromisoformat(reconciled)) if reconciled else None,
            missed=int(document.get("missed", 0)),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cursor is not an inbox discovery state: {exc!r}") from None


def dump_state(state: Mapping[str, Sighting]) -> str:
    """A cursor of groups alone (listing mode)."""
    return dump_cursor(Cursor(dict(state)))


def load_state(cursor: str | None) -> dict[str, Sighting]:
    """The groups' state in a cursor; ValueError when it is not one this module wrote."""
    return load_cursor(cursor).groups


def aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("cursor time without a time zone")
    return moment


def requested_from(version: object) -> Sighting:
    if not isinstance(version, str) or len(version) != CONTENT_VERSION_CHARS:
        raise TypeError("a requested group's entry is its content version")
    return Sighting(fingerprint=version, since=None, requested=True)


def sighting_from(entry: dict, version: int) -> Sighting:
    """A `groups` entry: from version 4 on a pending group's; before, any group's, with its flag."""
    since = aware(datetime.fromisoformat(entry["since"]))
    requested = bool(entry["requested"]) if version < 4 else False
    return Sighting(fingerprint=str(entry["fingerprint"]), since=since, requested=requested)


def list_uploads(s3: S3Client, bucket: str, prefix: str) -> list[Upload]:
    """Multipart uploads in progress under prefix, every page."""
    try:
        return _list_uploads(s3, bucket, prefix, url_encoded=False)
    except ClientError as exc:
        if not unreadable_listing(exc):
            raise
        # AWS writes control characters in keys as XML character references no parser accepts;
        # URL-encoded keys avoid that. Not the default: SeaweedFS ignores the request and sends raw keys.
        return _list_uploads(s3, bucket, prefix, url_encoded=True)


def unreadable_listing(exc: ClientError) -> bool:
    """botocore turns a 200 whose XML it cannot parse into an error coded "500", not an S3 error code."""
    return exc.response.get("Error", {}).get("Code") == "500"


def _list_uploads(s3: S3Client, bucket: str, prefix: str, url_encoded: bool) -> list[Upload]:
    decode = unquote_plus if url_encoded else str
    paginator = s3.get_paginator("list_multipart_uploads")
    pages = (
        paginator.paginate(Bucket=bucket, Prefix=prefix, EncodingType="url")
        if url_encoded
        else paginator.paginate(Bucket=bucket, Prefix=prefix)
    )
    return [
        Upload(key=decode(entry["Key"]), upload_id=entry["UploadId"], initiated=entry["Initiated"])
        for page in pages
        for entry in page.get("Uploads", ())
    ]
