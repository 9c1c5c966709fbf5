"""The inbox layout: objects under INBOX_PREFIX, grouped into drops by their first path segments.

`inbox/{submitter_id}/{file_type}/{drop_id}/...` with GROUP_BY_DEPTH=3 gives the grouping key
`inbox/{submitter_id}/{file_type}/{drop_id}/`.

A partner's file and folder names can carry a member's name (PHI). Outside the metadata DB and
the object store a group and a file are named by `group_id` and `file_id`, short digests of
their keys (`python -m workers.tables --find ID` turns one back into the key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.runtime import WorkerError
from workers.settings import IntakeSettings
from workers.store import S3Client

UNKNOWN = "unknown"
ID_HEX_DIGITS = 12


def group_id(grouping_key: str) -> str:
    """A group's name wherever its key must not go (tags, run keys, logs, metadata, errors)."""
    return "g-" + _digest(grouping_key)


def file_id(key: str) -> str:
    """An object's name wherever its key must not go (tags, logs, metadata, errors)."""
    return "f-" + _digest(key)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:ID_HEX_DIGITS]


def unsafe_segment(key: str) -> str | None:
    """Why a key is unsafe to copy into raw/ whatever the server does with it, or None.

    '.' and '..' segments are resolved by some clients and servers (a copy could land outside its
    submission), a backslash is a separator to others, and control characters garble every log,
    table and terminal the key is shown in."""
    if any(segment in (".", "..") for segment in key.split("/")):
        return "a '.' or '..' path segment"
    if "\\" in key:
        return "a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "a control character"
    return None


@dataclass(frozen=True, slots=True)
class InboxObject:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None

    @classmethod
    def from_listing(cls, entry: dict) -> InboxObject:
        return cls(
            key=entry["Key"],
            size=int(entry["Size"]),
            etag=entry["ETag"].strip('"'),
            last_modified=entry.get("LastModified"),
        )


@dataclass(frozen=True)
class Group:
    """A drop: what its grouping key says about who sent it and what it claims to hold."""

    grouping_key: str
    submitter_id: str
    declared_file_type: str

    @property
    def drop_id(self) -> str:
        return self.grouping_key.rstrip("/").rsplit("/", 1)[-1]

    def marker_key(self, marker_file: str) -> str:
        """Where the group's completion marker (MARKER_FILE) goes: at the group's root."""
        return self.grouping_key + marker_file


def group_of(key: str, inbox_prefix: str, depth: int) -> Group | None:
    """The group a key belongs to, or None when the key is too shallow to form one or unsafe."""
    if not key.startswith(inbox_prefix) or unsafe_segment(key):
        return None
    segments = key[len(inbox_prefix) :].split("/")
    # depth folder segments plus at least a file name; empty segments ("a//b") do not count.
    if len(segments) <= depth or any(not s for s in segments[:depth]) or not segments[-1]:
        return None
    grouping_key = inbox_prefix + "/".join(segments[:depth]) + "/"
    declared = segments[1] if depth >= 2 else UNKNOWN
    return Group(grouping_key=grouping_key, submitter_id=segments[0], declared_file_type=declared)


def rejection_reason(key: str, inbox_prefix: str, depth: int) -> str:
    """Why a key forms no group (group_of returned None), in an operator's words."""
    if not key.startswith(inbox_prefix):
        return f"outside {inbox_prefix}"
    if unsafe := unsafe_segment(key):
        return f"unsafe key: {unsafe} (refused by the platform, never staged)"
    if key.endswith("/"):
        return "folder placeholder (the key ends with '/'), not a file"
    if "//" in key[len(inbox_prefix) :] or key[len(inbox_prefix) :].startswith("/"):
        return "empty path segment ('//') in the key"
    return f"too shallow: a file needs {depth} folders under {inbox_prefix} (submitter/file type/drop id)"


def parse_grouping_key(grouping_key: str, inbox_prefix: str, depth: int) -> Group:
    """The Group for a grouping key given by an operator or the sensor; ValueError when malformed."""
    group = group_of(grouping_key + "x", inbox_prefix, depth)
    if group is None or group.grouping_key != grouping_key:
        raise ValueError(
            f"grouping_key must look like {inbox_prefix}" + "/".join(f"<segment{i + 1}>" for i in range(depth)) + "/"
        )
    return group


def list_objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[InboxObject]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", ()):
            yield InboxObject.from_listing(entry)


def fingerprint(objects: Iterable[InboxObject]) -> str:
    """Identity of a group's content: key set, sizes and ETags (not timestamps)."""
    digest = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: o.key):
        digest.update(f"{obj.key}\0{obj.size}\0{obj.etag}\n".encode())
    return digest.hexdigest()


def relative_path(key: str, grouping_key: str) -> str:
    return key[len(grouping_key) :]


def group_from_params(params: Mapping[str, Any], intake: IntakeSettings) -> Group:
    """The Group named by a worker's grouping_key parameter; WorkerError when absent or malformed."""
    key = params.get("grouping_key")
    if not key:
        raise WorkerError("grouping_key is required (Pipes extras, or --grouping-key when standalone)")
    try:
        return parse_grouping_key(key, intake.inbox_prefix, intake.group_by_depth)
    except ValueError as exc:
        raise WorkerError(f"grouping_key of group {group_id(key)} is malformed: {exc}") from None
