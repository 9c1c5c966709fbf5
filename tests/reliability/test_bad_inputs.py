"""A corpus of awkward deliveries: every object ends in a recorded outcome and no byte is lost.

Each case puts objects as a partner would. Then the real sensor ticks and every run it requests
is carried out by the workers' cores (the job's steps without the Pipes launch, to keep the
corpus fast; the launch itself is covered in tests/orchestrator). An object ends registered,
duplicate-of another submission, rejected with a reason (inbox_rejection), or refused by the
object store at upload (the partner saw the error; nothing reached the platform).
"""

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field

import dagster as dg
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from orchestrator.definitions import defs
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from tests.helpers import list_all
from workers import classifier, layouts, registrar, stager
from workers.db import make_engine
from workers.settings import load_settings

G = "inbox/acme/unknown/"


def long_key(prefix: str, total: int) -> str:
    """A key of `total` bytes in segments of 200 (servers cap a segment at 255 bytes)."""
    body = "/".join(["n" * 200] * 6)
    return prefix + body[: total - len(prefix) - 4].rstrip("/") + ".csv"


# 1,024 bytes is S3's limit; its raw copy's key would be longer, so it is rejected, not staged.
MAX_KEY = long_key(G + "d05/", 1024)
# Short enough that its raw key (raw/acme/unknown/sub-<24 hex>/...) still fits in 1,024 bytes.
FITTING_KEY = long_key(G + "d24/", 990)

OVERLAP = {
    "layout_id": "claims_any",
    "submitter_id": "*",
    "filename_pattern": "*claims*.csv",
    "file_type": "claims",
    "version": 1,
}


@dataclass
class Case:
    name: str
    objects: dict[str, bytes]
    expect: dict[str, set[str]] = field(default_factory=dict)  # key -> acceptable outcomes


def case(name: str, objects: dict[str, bytes], default: str = "registered", **special: set[str]) -> Case:
    expect = {key: {default} for key in objects}
    for key, outcomes in special.items():
        expect[key.replace("__", "/")] = outcomes
    return Case(name, objects, expect)


def marker(group: str, body: bytes = b"") -> dict[str, bytes]:
    return {group + "_SUCCESS": body}


CASES = [
    Case("dot-dot segment", {G + "d01/../x.csv": b"1"}, {G + "d01/../x.csv": {"refused", "rejected"}}),
    Case(
        "double slash",
        {"inbox/acme//unknown/d02/x.csv": b"2"},
        {"inbox/acme//unknown/d02/x.csv": {"registered", "rejected", "normalized"}},
    ),
    Case(
        "folder placeholder",
        {G + "d03/sub/": b"", G + "d03/x.csv": b"3", **marker(G + "d03/")},
        {G + "d03/sub/": {"rejected"}, G + "d03/x.csv": {"registered"}, G + "d03/_SUCCESS": {"marker"}},
    ),
    Case(
        "NFC and NFD twins",
        {
            G + "d04/" + unicodedata.normalize("NFC", "café.csv"): b"nfc",
            G + "d04/" + unicodedata.normalize("NFD", "café.csv"): b"nfd",
            **marker(G + "d04/"),
        },
    ),
    Case(
        "1,024-byte key",
        {MAX_KEY: b"5", **marker(G + "d05/")},
        {MAX_KEY: {"rejected"}, G + "d05/_SUCCESS": {"rejected"}},
    ),
    # Unsafe keys are rejected by the platform itself (workers.inbox.unsafe_segment), whatever the server allows.
    Case(
        "control characters",
        {G + "d06/tab\there\x01.csv": b"6", **marker(G + "d06/")},
        {G + "d06/tab\there\x01.csv": {"rejected"}, G + "d06/_SUCCESS": {"rejected"}},
    ),
    Case(
        "control character in the drop folder",
        {G + "d32\x1b/x.csv": b"32", **marker(G + "d32\x1b/")},
        {G + "d32\x1b/x.csv": {"rejected"}, G + "d32\x1b/_SUCCESS": {"rejected"}},
    ),
    Case(
        "dot segment",
        {G + "d33/./x.csv": b"33", **marker(G + "d33/")},
        {G + "d33/./x.csv": {"rejected", "refused"}, G + "d33/_SUCCESS": {"rejected"}},
    ),
    Case("spaces", {G + "d07/my file name.csv": b"7", **marker(G + "d07/")}),
    Case("plus", {G + "d08/a+b.csv": b"8", **marker(G + "d08/")}),
    Case("ampersand", {G + "d09/a&b.csv": b"9", **marker(G + "d09/")}),
    Case("percent", {G + "d10/100%25%.csv": b"10", **marker(G + "d10/")}),
    Case("zero-byte data file", {G + "d11/empty.csv": b"", **marker(G + "d11/")}),
    Case("marker alone", marker(G + "d12/"), {G + "d12/_SUCCESS": {"rejected"}}),
    Case("marker with content", {G + "d13/x.csv": b"13", **marker(G + "d13/", b"rows=1")}),
    Case("directly under inbox/", {"inbox/loose.csv": b"14"}, {"inbox/loose.csv": {"rejected"}}),
    Case("one folder deep", {"inbox/acme/x.csv": b"15"}, {"inbox/acme/x.csv": {"rejected"}}),
    Case("two folders deep", {"inbox/acme/unknown/x.csv": b"16"}, {"inbox/acme/unknown/x.csv": {"rejected"}}),
    Case("deeper than the group", {G + "d17/a/b/c/deep.csv": b"17", **marker(G + "d17/")}),
    Case(
        "unknown submitter, known file",
        {"inbox/stranger/unknown/d18/medical_claims.csv": b"18", **marker("inbox/stranger/unknown/d18/")},
    ),
    Case(
        "unknown submitter, unknown file",
        {"inbox/stranger/unknown/d19/blob.dat": b"19", **marker("inbox/stranger/unknown/d19/")},
    ),
    Case("matches two layouts", {G + "d20/pharmacy_claims.csv": b"20", **marker(G + "d20/")}),
    Case("unicode submitter", {"inbox/açme/unknown/d23/x.csv": b"23", **marker("inbox/açme/unknown/d23/")}),
    Case("long key that still fits", {FITTING_KEY: b"24", **marker(G + "d24/")}),
    Case("leading space segment", {G + " d25/x.csv": b"25", **marker(G + " d25/")}),
    Case(
        "quote and backslash",
        {G + 'd26/a"b\\c.csv': b"26", **marker(G + "d26/")},
        {G + 'd26/a"b\\c.csv': {"normalized", "rejected"}},
    ),
    Case("emoji", {G + "d27/\U0001f600.csv": b"27", **marker(G + "d27/")}),
    Case("trailing dot", {G + "d28/file.": b"28", **marker(G + "d28/")}),
    Case("dotfile", {G + "d29/.hidden": b"29", **marker(G + "d29/")}),
    Case(
        "marker only in a subfolder (quiescence)",
        {G + "d30/x.csv": b"30", G + "d30/sub/_SUCCESS": b""},
        {G + "d30/sub/_SUCCESS": {"registered"}},
    ),
    Case(
        "dots inside a name",
        {G + "d31/a..b.csv": b"31", **marker(G + "d31/")},
        {G + "d31/a..b.csv": {"registered", "refused"}, G + "d31/_SUCCESS": {"marker"}},
    ),
    Case("same bytes, first drop", {G + "d22a/claims.csv": b"same bytes twice", **marker(G + "d22a/")}),
    Case(
        "same bytes, new drop id",
        {G + "d22b/claims.csv": b"same bytes twice", **marker(G + "d22b/")},
        {G + "d22b/claims.csv": {"duplicate"}, G + "d22b/_SUCCESS": {"marker"}},
    ),
    Case("re-uploaded after registration", {G + "d21/x.csv": b"first version", **marker(G + "d21/")}),
]


def expectations(c: Case) -> dict[str, set[str]]:
    defaults = {
        key: {"marker"} if key.endswith("/_SUCCESS") and not c.objects[key] else {"registered"} for key in c.objects
    }
    return {**defaults, **c.expect}


@pytest.fixture
def corpus_platform(pg_platform, monkeypatch, tmp_path):
    monkeypatch.setenv("QUIESCENCE_MINUTES", "0")
    definitions = json.loads(layouts.packaged_definitions())
    definitions["layouts"].append(OVERLAP)
    engine = make_engine(pg_platform["METADATA_DB_URL"])
    layouts.sync(engine, layouts.parse_definitions(json.dumps(definitions))[1])
    yield engine
    engine.dispose()


def deliver(s3, bucket: str, c: Case) -> dict[str, str]:
    """Data first, markers last, as partners are asked to; returns the keys the server refused."""
    refused = {}
    for key, body in sorted(c.objects.items(), key=lambda kv: kv[0].endswith("_SUCCESS")):
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError as exc:
            refused[key] = exc.response["Error"]["Code"]
    return refused


def process_tick(cursor: str | None) -> str:
    """One real sensor tick, then each requested run's steps in grouping-key order."""
    tick = inbox_discovery_sensor.evaluate_tick(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor, definitions=defs)
    )
    settings = load_settings()
    configs = [request.run_config["ops"]["register_submission_from_group"]["config"] for request in tick.run_requests]
    for config in sorted(configs, key=lambda c: c["grouping_key"]):
        files = classifier.work(settings, config)["files"]
        registered = registrar.work(settings, {**config, "files": files})
        if registered["submission_id"]:
            stager.work(settings, {"submission_id": registered["submission_id"]})
    return tick.cursor


def stored_key(key: str) -> str:
    """The key as S3 servers here store it: SeaweedFS folds a backslash and '//' into '/'."""
    return re.sub("/+", "/", key.replace("\\", "/"))


def outcome_of(conn, key: str) -> str:
    row = conn.execute(
        sa.text(
            "SELECT s.status FROM submission_file f JOIN submission s ON s.submission_id = f.submission_id "
            "WHERE f.inbox_key = :k ORDER BY f.id DESC"
        ),
        {"k": key},
    ).first()
    if row:
        return "duplicate" if row.status == "duplicate" else "registered"
    if conn.execute(sa.text("SELECT 1 FROM inbox_rejection WHERE key = :k"), {"k": key}).first():
        return "rejected"
    if conn.execute(sa.text("SELECT 1 FROM inbox_object WHERE key = :k AND role = 'marker'"), {"k": key}).first():
        return "marker"
    return "no outcome"


def bytes_kept(s3, bucket: str, conn, key: str, body: bytes) -> bool:
    """The delivered bytes are in the raw zone (registered or as the original of a duplicate) or
    still in the inbox (rejected)."""
    digest = hashlib.sha256(body).hexdigest()
    raw_keys = conn.execute(
        sa.text("SELECT raw_key FROM submission_file WHERE sha256 = :d AND staged_at IS NOT NULL"), {"d": digest}
    ).scalars()
    for raw_key in raw_keys:
        if hashlib.sha256(s3.get_object(Bucket=bucket, Key=raw_key)["Body"].read()).hexdigest() == digest:
            return True
    inbox = {obj["Key"] for obj in list_all(s3, bucket, key)}
    return key in inbox and s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body


def test_every_awkward_delivery_ends_in_a_recorded_outcome_and_no_byte_is_lost(
    corpus_platform, pg_platform, s3_server, ledger
):
    s3, bucket = s3_server.client(), pg_platform["MINIO_BUCKET"]
    refused = {}
    for c in CASES:
        refused.update(deliver(s3, bucket, c))
    cursor = process_tick(None)
    s3.put_object(Bucket=bucket, Key=G + "d21/x.csv", Body=b"second version, different bytes")
    s3.put_object(Bucket=bucket, Key=G + "d21/_SUCCESS", Body=b"")
    process_tick(cursor)
    ledger.update(bad_inputs=len(CASES))

    outcomes, lost = {}, []
    with corpus_platform.connect() as conn:
        for c in CASES:
            for key, body in c.objects.items():
                stored = stored_key(key)
                outcome = f"refused ({refused[key]})" if key in refused else outcome_of(conn, stored)
                if stored != key and outcome != "no outcome":
                    outcome = "normalized"
                outcomes[key] = outcome
                ledger.bad_inputs.append((c.name, key, outcome))
                if outcome in ("registered", "duplicate", "rejected", "normalized") and body:
                    lost += [] if bytes_kept(s3, bucket, conn, stored, body) else [key]
    ledger.update(files_lost=len(lost))

    unexpected = {
        (c.name, key): outcomes[key]
        for c in CASES
        for key, allowed in expectations(c).items()
        if outcomes[key].split(" ")[0] not in allowed
    }
    assert unexpected == {}, "\n".join(f"{name}: {key[:80]!r} -> {got}" for (name, key), got in unexpected.items())
    assert lost == []
    assert len(CASES) >= 30
