"""The stager's inbox clean-up (`clean_inbox`) against the suite's real S3 server and both metadata
databases, on a bucket with Object Lock (versioned, as production's) and on a plain, unversioned one.

The observed inbox objects are recorded here directly, as the registrar records them; nothing is
staged first, since the clean-up reads only those rows. A server that ignores DeleteObjects'
VersionId is the real server with the VersionId taken out of the request (no such server at hand).
"""

import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.helpers import BUCKET, ROLE_KEYS
from tests.services import S3Server, remove_bucket
from workers.db import InboxObject, Submission, make_engine
from workers.inbox import file_id
from workers.runtime import WorkerError
from workers.stager import DELETE_BATCH, clean_inbox
from workers.store import ensure_bucket

GROUP = "inbox/acme/claims/drop-001/"
MARKER = GROUP + "_SUCCESS"


@pytest.fixture(params=["versioned", "unversioned"])
def inbox_bucket(request, s3_server) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "versioned":
        ensure_bucket(s3_server.client(), name)
    else:
        s3_server.client().create_bucket(Bucket=name)
    yield name
    remove_bucket(s3_server, name)


@pytest.fixture
def s3(s3_server):
    return s3_server.client(connections=16)


@pytest.fixture
def engine(migrated_db_url):
    engine = make_engine(migrated_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def observe(engine, s3, inbox_bucket):
    """Put files and the marker into the inbox and record them as observed; the submission id."""
    return lambda names: record_observed(engine, s3, inbox_bucket, names)


def record_observed(engine, s3, bucket: str, names: list[str]) -> str:
    submission_id = f"sub-{uuid.uuid4().hex[:16]}"
    with ThreadPoolExecutor(8) as pool:
        keys = [GROUP + name for name in names]
        etags = list(pool.map(lambda key: put(s3, bucket, key, os.urandom(100))[0], keys))
    marker_etag = put(s3, bucket, MARKER, b"")[0]
    with Session(engine) as session, session.begin():
        session.add(
            Submission(
                submission_id=submission_id,
                submitter_id="acme",
                file_type="claims",
                grouping_key=GROUP,
                grouping_method="MARKER_FILE",
                content_hash="c" * 64,
                raw_prefix=f"raw/acme/claims/{submission_id}/",
                manifest_key=f"raw/acme/claims/{submission_id}/_manifest.json",
                file_count=len(names),
                total_bytes=100 * len(names),
            )
        )
        session.flush()
        rows = [(GROUP + n, etag, "data") for n, etag in zip(names, etags, strict=True)]
        for key, etag, role in [*rows, (MARKER, marker_etag, "marker")]:
            session.add(InboxObject(submission_id=submission_id, key=key, size_bytes=0, etag=etag, role=role))
    return submission_id


def put(s3, bucket: str, key: str, body: bytes) -> tuple[str, str]:
    """The new object's ETag and version id ("null" in an unversioned bucket)."""
    answer = s3.put_object(Bucket=bucket, Key=key, Body=body)
    return answer["ETag"].strip('"'), answer.get("VersionId") or "null"


def versions_under(s3, bucket: str, prefix: str) -> dict[str, list[str]]:
    """key -> "version" / "marker" of each version left under the prefix."""
    found: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for kind, word in (("Versions", "version"), ("DeleteMarkers", "marker")):
            for v in page.get(kind, ()):
                found.setdefault(v["Key"], []).append(word)
    return found


def removed_rows(engine, submission_id: str) -> dict[str, tuple[bool, str | None]]:
    """key -> (marked removed, the version id recorded as deleted)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(InboxObject.key, InboxObject.removed_at, InboxObject.removed_version_id).where(
                InboxObject.submission_id == submission_id
            )
        ).all()
    return {key: (at is not None, version) for key, at, version in rows}


def registered_versions(s3, bucket: str) -> dict[str, str]:
    return {
        v["Key"]: v["VersionId"]
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=GROUP)
        for v in page.get("Versions", ())
    }


def unversioned(request) -> bool:
    return request.node.callspec.params["inbox_bucket"] == "unversioned"


def calls(s3, operation: str) -> list[dict]:
    """The parameters of each call of `operation` the client makes from now on."""
    made: list[dict] = []
    s3.meta.events.register(f"before-parameter-build.s3.{operation}", lambda params, **_: made.append(params))
    return made


def test_every_observed_object_is_removed_by_its_version_leaving_no_version_or_delete_marker(
    engine, s3, inbox_bucket, observe
):
    submission_id = observe(["a.csv", "b.csv", "notes/c.txt"])
    registered = registered_versions(s3, inbox_bucket)

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (4, 0)

    assert versions_under(s3, inbox_bucket, GROUP) == {}
    assert removed_rows(engine, submission_id) == {key: (True, version) for key, version in registered.items()}


def test_the_marker_is_removed_first_alone_and_the_files_in_one_batch(engine, s3, inbox_bucket, observe):
    submission_id = observe(["a.csv", "b.csv", "c.csv"])
    batches = calls(s3, "DeleteObjects")
    singles = calls(s3, "DeleteObject")

    clean_inbox(engine, s3, inbox_bucket, submission_id)

    assert [[o["Key"] for o in b["Delete"]["Objects"]] for b in batches] == [
        [MARKER],
        [GROUP + "a.csv", GROUP + "b.csv", GROUP + "c.csv"],
    ]
    assert singles == []


def test_a_newer_upload_with_other_bytes_at_a_registered_key_stays(engine, s3, inbox_bucket, observe):
    submission_id = observe(["a.csv", "b.csv"])
    _, newer = put(s3, inbox_bucket, GROUP + "a.csv", b"a corrected file")

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (3, 1)

    assert versions_under(s3, inbox_bucket, GROUP) == {GROUP + "a.csv": ["version"]}
    body = s3.get_object(Bucket=inbox_bucket, Key=GROUP + "a.csv")["Body"].read()
    assert body == b"a corrected file"
    assert all(marked for marked, _ in removed_rows(engine, submission_id).values())
    assert removed_rows(engine, submission_id)[GROUP + "a.csv"][1] != newer


def test_a_version_already_gone_is_marked_removed_with_no_version(engine, s3, inbox_bucket, observe):
    submission_id = observe(["a.csv", "b.csv"])
    gone = registered_versions(s3, inbox_bucket)[GROUP + "a.csv"]
    s3.delete_object(Bucket=inbox_bucket, Key=GROUP + "a.csv", VersionId=gone)

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (3, 0)

    assert versions_under(s3, inbox_bucket, GROUP) == {}
    assert removed_rows(engine, submission_id)[GROUP + "a.csv"] == (True, None)


def test_older_versions_and_delete_markers_at_a_registered_key_go_with_it(engine, s3, inbox_bucket, observe, request):
    if unversioned(request):
        pytest.skip("an unversioned bucket keeps no older version or delete marker")
    put(s3, inbox_bucket, GROUP + "a.csv", b"an earlier upload")
    s3.delete_object(Bucket=inbox_bucket, Key=GROUP + "a.csv")  # a delete marker, then
    submission_id = observe(["a.csv", "b.csv"])  # the upload that is registered
    put(s3, inbox_bucket, GROUP + "other.csv", b"not observed, same group")

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (3, 0)

    assert versions_under(s3, inbox_bucket, GROUP) == {GROUP + "other.csv": ["version"]}


def test_a_second_run_finds_nothing_left_to_do(engine, s3, inbox_bucket, observe):
    submission_id = observe(["a.csv"])
    clean_inbox(engine, s3, inbox_bucket, submission_id)
    listings = calls(s3, "ListObjectVersions")

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (0, 0)
    assert listings == []


def test_files_beyond_one_batch_are_all_removed_in_batches_from_one_listing(engine, s3, inbox_bucket, observe):
    count = 2500
    submission_id = observe([f"part-{i:05d}.csv" for i in range(count)])
    batches = calls(s3, "DeleteObjects")
    singles = calls(s3, "DeleteObject")
    listings = calls(s3, "ListObjectVersions")

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (count + 1, 0)

    assert versions_under(s3, inbox_bucket, GROUP) == {}
    assert all(marked for marked, _ in removed_rows(engine, submission_id).values())
    assert [len(b["Delete"]["Objects"]) for b in batches] == [1, DELETE_BATCH, DELETE_BATCH, count - 2 * DELETE_BATCH]
    assert singles == []
    # One paginated listing of the group (a page holds up to 1,000), not one listing per key.
    assert {listing["Prefix"] for listing in listings} == {GROUP}
    assert len(listings) <= math.ceil((count + 1) / 1000) + 1


def test_a_server_that_ignores_delete_objects_version_ids_gets_one_delete_per_version(
    engine, s3, inbox_bucket, observe, request
):
    if unversioned(request):
        pytest.skip("one version per key: a delete without its id deletes the same, and is taken as honoured")
    submission_id = observe(["a.csv", "b.csv", "c.csv"])
    _, newer = put(s3, inbox_bucket, GROUP + "b.csv", b"a corrected file")
    batches = calls(s3, "DeleteObjects")
    singles = calls(s3, "DeleteObject")

    def without_version_ids(params, **_):
        for entry in params["Delete"]["Objects"]:
            entry.pop("VersionId", None)

    s3.meta.events.register("provide-client-params.s3.DeleteObjects", without_version_ids)

    assert clean_inbox(engine, s3, inbox_bucket, submission_id) == (4, 1)

    # The probe's delete marker (on the marker's key, where everything goes) is removed again.
    assert versions_under(s3, inbox_bucket, GROUP) == {GROUP + "b.csv": ["version"]}
    current = s3.head_object(Bucket=inbox_bucket, Key=GROUP + "b.csv")
    assert (current.get("VersionId") or "null") == newer
    assert len(batches) == 1
    assert all("VersionId" in single for single in singles)


def test_a_version_the_server_refuses_to_delete_fails_the_clean_up_naming_its_file_id(
    engine, s3, inbox_bucket, observe, request
):
    if unversioned(request):
        pytest.skip("a legal hold needs Object Lock")
    submission_id = observe(["a.csv", "held.csv"])
    held = GROUP + "held.csv"
    version = registered_versions(s3, inbox_bucket)[held]
    s3.put_object_legal_hold(Bucket=inbox_bucket, Key=held, VersionId=version, LegalHold={"Status": "ON"})

    with pytest.raises(WorkerError, match=f"1 inbox version\\(s\\) not deleted; first {file_id(held)} ") as failed:
        clean_inbox(engine, s3, inbox_bucket, submission_id)

    assert "held.csv" not in str(failed.value)
    assert versions_under(s3, inbox_bucket, GROUP) == {held: ["version"]}
    assert removed_rows(engine, submission_id)[held] == (False, None)
    s3.put_object_legal_hold(Bucket=inbox_bucket, Key=held, VersionId=version, LegalHold={"Status": "OFF"})


def test_the_stager_role_removes_its_inbox_versions_in_batches(engine, role_server):
    root = role_server.client()
    submission_id = record_observed(engine, root, BUCKET, ["a.csv", "b.csv"])
    stager = S3Server(role_server.endpoint, *ROLE_KEYS["stager"]).client()
    batches = calls(stager, "DeleteObjects")
    singles = calls(stager, "DeleteObject")

    assert clean_inbox(engine, stager, BUCKET, submission_id) == (3, 0)

    assert versions_under(root, BUCKET, GROUP) == {}
    assert (len(batches), singles) == (2, [])
