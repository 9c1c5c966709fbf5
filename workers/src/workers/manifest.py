"""The submission manifest, `_manifest.generated.json` at the root of a submission's raw prefix.

Written once by the registrar (create-only) and trusted by the stager and everything downstream.
Its bytes are a pure function of the registered rows, so a re-run writes the identical manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MANIFEST_NAME = "_manifest.generated.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestFile:
    inbox_key: str
    raw_key: str
    size_bytes: int
    sha256: str
    etag: str
    file_type: str
    layout_id: str | None
    layout_version: int | None
    classification: str
    classification_detail: str


@dataclass(frozen=True)
class Manifest:
    submission_id: str
    submitter_id: str
    file_type: str
    grouping_key: str
    grouping_method: str
    previous_submission_id: str | None
    files: tuple[ManifestFile, ...]
    duplicate_of: str | None = None

    def to_bytes(self) -> bytes:
        body = {"manifest_version": MANIFEST_VERSION, **asdict(self)}
        body["files"] = [asdict(f) for f in sorted(self.files, key=lambda f: f.inbox_key)]
        return (json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        if body.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest_version {body.get('manifest_version')!r}")
        files = tuple(ManifestFile(**f) for f in body["files"])
        fields = {k: body.get(k) for k in cls.__dataclass_fields__ if k != "files"}
        return cls(**fields, files=files)


def raw_prefix_for(raw_root: str, submitter_id: str, file_type: str, submission_id: str) -> str:
    return f"{raw_root}{submitter_id}/{file_type}/{submission_id}/"


def manifest_key_for(raw_prefix: str) -> str:
    return raw_prefix + MANIFEST_NAME
