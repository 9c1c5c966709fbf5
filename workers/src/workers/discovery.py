"""When an inbox group is complete: the pure core of the inbox discovery sensor.

A group is complete when its marker file is at its root, or when its content (key set, sizes,
ETags) has looked the same to the sensor for QUIESCENCE_MINUTES. Quiet time is judged from what
the sensor observed over its ticks (kept in its cursor), never from LastModified, which a
partner's copy tool may set to anything. No group closes while a multipart upload into it is in
progress, unless that upload is older than ABANDONED_UPLOAD_HOURS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, get_args
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from workers.inbox import Group, InboxObject, fingerprint, group_id, group_of
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
CURSOR_VERSION = 2


@dataclass(frozen=True)
class Upload:
    """A multipart upload in progress: its object is not listed until the upload completes."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Sighting:
    """How a pending group last looked to the sensor, since when, and whether that was requested."""

    fingerprint: str
    since: datetime
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
        return f"{group_id(self.group.grouping_key)}@{self.fingerprint[:16]}"


@dataclass(frozen=True)
class Evaluation:
    complete: list[CompleteGroup]
    state: dict[str, Sighting]  # by group id
    shallow_keys: list[str]
    blocked: dict[str, list[Upload]]
    abandoned_uploads: list[Upload]


def evaluate(
    objects: Iterable[InboxObject],
    uploads: Iterable[Upload],
    state: Mapping[str, Sighting],
    now: datetime,
    settings: IntakeSettings,
) -> Evaluation:
    """One tick: which groups are complete now, and the state to remember for the next tick."""
    groups, shallow_keys = group_objects(objects, settings)
    live, abandoned = split_abandoned(uploads, now, settings)
    blocked = uploads_by_group(live, settings)
    complete, new_state = [], {}
    for grouping_key, (group, members) in groups.items():
        sighting = observe(state.get(group_id(grouping_key)), fingerprint(members), now)
        method = None
        if not sighting.requested and grouping_key not in blocked:
            method = completion_method(group, members, sighting, now, settings)
        if method:
            complete.append(CompleteGroup(group, method, sighting.fingerprint, len(members)))
            sighting = replace(sighting, requested=True)
        new_state[group_id(grouping_key)] = sighting
    return Evaluation(complete, new_state, shallow_keys, blocked, abandoned)


def group_objects(
    objects: Iterable[InboxObject], settings: IntakeSettings
) -> tuple[dict[str, tuple[Group, list[InboxObject]]], list[str]]:
    groups: dict[str, tuple[Group, list[InboxObject]]] = {}
    shallow_keys = []
    for obj in objects:
        group = group_of(obj.key, settings.inbox_prefix, settings.group_by_depth)
        if group is None:
            shallow_keys.append(obj.key)
            continue
        groups.setdefault(group.grouping_key, (group, []))[1].append(obj)
    return groups, shallow_keys


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


def observe(previous: Sighting | None, current: str, now: datetime) -> Sighting:
    """Any change of content restarts the quiet clock and needs a request of its own."""
    if previous is not None and previous.fingerprint == current:
        return previous
    return Sighting(fingerprint=current, since=now)


def completion_method(
    group: Group, members: list[InboxObject], sighting: Sighting, now: datetime, settings: IntakeSettings
) -> GroupingMethod | None:
    marker_key = group.marker_key(settings.marker_file)
    if any(obj.key == marker_key for obj in members):
        return MARKER
    if now - sighting.since >= timedelta(minutes=settings.quiescence_minutes):
        return QUIESCENCE
    return None


def dump_state(state: Mapping[str, Sighting]) -> str:
    """The sensor cursor: JSON holding only the groups still listed in the inbox, by their ids
    (Dagster stores the cursor and shows it on the sensor's page: no keys in it)."""
    groups = {
        key: {"fingerprint": s.fingerprint, "since": s.since.isoformat(), "requested": s.requested}
        for key, s in state.items()
    }
    return json.dumps({"version": CURSOR_VERSION, "groups": groups}, sort_keys=True, separators=(",", ":"))


def load_state(cursor: str | None) -> dict[str, Sighting]:
    """The state in a cursor; ValueError when it is not one this module wrote."""
    if not cursor:
        return {}
    try:
        document = json.loads(cursor)
        if document["version"] != CURSOR_VERSION:
            raise ValueError(f"cursor version {document['version']!r} is not {CURSOR_VERSION}")
        return {key: sighting_from(entry) for key, entry in document["groups"].items()}
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cursor is not an inbox discovery state: {exc!r}") from None


def sighting_from(entry: dict) -> Sighting:
    since = datetime.fromisoformat(entry["since"])
    if since.tzinfo is None:
        raise ValueError("cursor time without a time zone")
    return Sighting(fingerprint=str(entry["fingerprint"]), since=since, requested=bool(entry["requested"]))


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
