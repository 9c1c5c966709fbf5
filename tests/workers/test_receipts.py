"""Receipts to partners (workers.receipts), written by the real registrar and stager against the S3
server and both metadata databases, and checked against the published schema."""

import hashlib
import json

import jsonschema
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from tests.helpers import drop_files
from tests.services import REPO
from workers import classifier, registrar, stager
from workers.inbox import file_id

SCHEMA = json.loads((REPO / "docs" / "receipt.schema.json").read_text())
KEY = "inbox/acme/unknown/drop-001/"
# A member's data in a file body: a receipt must never carry it.
SENTINEL = b"Jane-Roe-1970-01-01-SENTINEL"
FILES = {"medical_claims.csv": b"member_id,amount\n" + SENTINEL + b",10\n", "extra/notes.txt": b"see " + SENTINEL}


def register(settings, grouping_key: str = KEY) -> dict:
    files = classifier.work(settings, {"grouping_key": grouping_key})["files"]
    return registrar.work(settings, {"grouping_key": grouping_key, "grouping_method": "MARKER_FILE", "files": files})


def stage(settings, submission_id: str) -> dict:
    return stager.work(settings, {"submission_id": submission_id})


def receipt_at(s3, bucket: str, key: str) -> dict:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert SENTINEL not in body
    receipt = json.loads(body)
    jsonschema.validate(receipt, SCHEMA)
    return receipt


def versions(s3, bucket: str, key: str) -> int:
    return len(s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []))


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_staged_submission_gets_a_receipt_listing_every_file_and_never_its_contents(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, KEY, FILES)
    registered = register(synced_layouts)
    submission_id = registered["submission_id"]

    staged = stage(synced_layouts, submission_id)

    assert registered["receipt"] == "none"  # the stager sends it, once staged
    assert (staged["receipt"], staged["receipt_id"], staged["receipt_error"]) == ("written", submission_id, "")
    receipt = receipt_at(s3, bucket, f"outbox/acme/drop-001/{submission_id}.receipt.json")
    assert (receipt["outcome"], receipt["submission_id"], receipt["drop_id"]) == ("staged", submission_id, "drop-001")
    assert receipt["platform_version"] == "0.1.0"
    assert receipt["received_at"] and receipt["registered_at"] <= receipt["staged_at"]
    assert {f["name"]: (f["size_bytes"], f["sha256"], f["file_id"]) for f in receipt["files"]} == {
        name: (len(body), hashlib.sha256(body).hexdigest(), file_id(KEY + name)) for name, body in FILES.items()
    }
    claims = next(f for f in receipt["files"] if f["name"] == "medical_claims.csv")
    assert (claims["classification"], claims["file_type"]) == ("classified", "medical_claims")
    assert claims["layout_id"] and claims["layout_version"]
    assert receipt["rejections"] == [] and receipt["duplicate_of"] is None
    # The worker's report names the receipt by id: its key holds the partner's drop folder name.
    assert "outbox/" not in json.dumps(staged) and "drop-001" not in json.dumps(staged)


def test_re_running_the_stager_finds_the_receipt_and_never_rewrites_it(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, KEY, FILES)
    submission_id = register(synced_layouts)["submission_id"]
    stage(synced_layouts, submission_id)
    key = f"outbox/acme/drop-001/{submission_id}.receipt.json"
    first = s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    again = stage(synced_layouts, submission_id)

    assert again["receipt"] == "already_there"
    assert versions(s3, bucket, key) == 1
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == first


def test_a_different_receipt_already_there_is_kept_and_the_submission_still_staged(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, KEY, FILES)
    submission_id = register(synced_layouts)["submission_id"]
    key = f"outbox/acme/drop-001/{submission_id}.receipt.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"written": "by an earlier version"}\n')

    staged = stage(synced_layouts, submission_id)

    assert (staged["status"], staged["receipt"]) == ("staged", "kept_different")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b'{"written": "by an earlier version"}\n'
    assert versions(s3, bucket, key) == 1


class OutboxDown:
    """The real client, except that a put into outbox/ fails as a store outage would: the one call
    a real server cannot be made to refuse on its own while every other call succeeds."""

    def __init__(self, s3):
        self._s3 = s3

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith("outbox/"):
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "PutObject")
        return self._s3.put_object(**kwargs)


def test_a_store_error_writing_the_receipt_loses_nothing_and_the_next_run_writes_it(
    synced_layouts, s3_server, monkeypatch
):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, KEY, FILES)
    submission_id = register(synced_layouts)["submission_id"]
    monkeypatch.setattr(stager, "make_s3_client", lambda settings: OutboxDown(s3))

    failed = stage(synced_layouts, submission_id)

    assert (failed["status"], failed["receipt"], failed["receipt_error"]) == ("staged", "failed", "ServiceUnavailable")
    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM submission WHERE submission_id = :s"), {"s": submission_id}
        ).scalar()
    engine.dispose()
    assert status == "staged"
    assert s3.list_objects_v2(Bucket=bucket, Prefix=KEY).get("KeyCount") == 0  # the inbox was cleaned all the same
    monkeypatch.undo()

    assert stage(synced_layouts, submission_id)["receipt"] == "written"
    receipt_at(s3, bucket, f"outbox/acme/drop-001/{submission_id}.receipt.json")


def test_a_duplicates_receipt_names_what_it_duplicates(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    drop_files(s3, bucket, KEY, FILES)
    original = register(synced_layouts)["submission_id"]
    stage(synced_layouts, original)
    again = "inbox/acme/unknown/drop-002/"
    drop_files(s3, bucket, again, FILES)

    duplicate = register(synced_layouts, again)

    assert (duplicate["status"], duplicate["receipt"]) == ("duplicate", "written")
    key = f"outbox/acme/drop-002/{duplicate['submission_id']}.receipt.json"
    receipt = receipt_at(s3, bucket, key)
    assert receipt["outcome"] == "duplicate" and receipt["staged_at"] is None
    assert receipt["duplicate_of"] == {"submission_id": original, "drop_id": "drop-001"}
    assert sorted(f["name"] for f in receipt["files"]) == sorted(FILES)
    # The stager, run for the duplicate as the job does, finds the same receipt.
    assert stage(synced_layouts, duplicate["submission_id"])["receipt"] == "already_there"
    assert versions(s3, bucket, key) == 1


def test_rejected_objects_no_submission_holds_get_a_receipt_with_their_reasons(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    lonely = "inbox/acme/unknown/drop-003/"
    drop_files(s3, bucket, lonely, {})

    result = register(synced_layouts, lonely)
    rerun = register(synced_layouts, lonely)

    assert result["submission_id"] is None and result["receipt"] == "written"
    assert result["receipt_id"].startswith("rej-") and (rerun["receipt_id"], rerun["receipt"]) == (
        result["receipt_id"],
        "already_there",
    )
    receipt = receipt_at(s3, bucket, f"outbox/acme/drop-003/{result['receipt_id']}.receipt.json")
    assert (receipt["outcome"], receipt["submission_id"], receipt["files"]) == ("rejected", None, [])
    ((rejection),) = receipt["rejections"]
    assert rejection["name"] == "_SUCCESS" and rejection["reason"] == "completion marker without data files"
    assert rejection["file_id"] == file_id(lonely + "_SUCCESS") and rejection["rejected_at"]


def test_a_file_rejected_beside_registered_ones_is_in_the_submissions_receipt(synced_layouts, s3_server):
    s3, bucket = s3_server.client(), synced_layouts.bucket
    long_name = "/".join(["n" * 240] * 4) + "/" + "x" * 17 + ".csv"  # fits the inbox, not the raw zone
    drop_files(s3, bucket, KEY, {**FILES, long_name: b"a,b\n"})
    submission_id = register(synced_layouts)["submission_id"]

    stage(synced_layouts, submission_id)

    receipt = receipt_at(s3, bucket, f"outbox/acme/drop-001/{submission_id}.receipt.json")
    assert sorted(f["name"] for f in receipt["files"]) == sorted(FILES)
    ((rejection),) = receipt["rejections"]
    assert (rejection["name"], rejection["reason"]) == (long_name, "raw key would exceed 1024 bytes")


@pytest.mark.parametrize("outcome", ["staged", "duplicate", "rejected"])
def test_the_schema_refuses_a_receipt_carrying_anything_it_does_not_describe(outcome):
    receipt = {
        "receipt_version": 1,
        "receipt_id": "rej-" + "0" * 24 if outcome == "rejected" else "sub-" + "0" * 24,
        "outcome": outcome,
        "submitter_id": "acme",
        "drop_id": "drop-001",
        "platform_version": "0.1.0",
        "submission_id": None,
        "file_type": None,
        "received_at": None,
        "registered_at": None,
        "staged_at": None,
        "duplicate_of": None,
        "files": [],
        "rejections": [],
        "contents": "member_id,amount",
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(receipt, SCHEMA)
