"""The raw zone is create-only at the server: every way the platform writes raw data is refused
over an existing object, and the stager reports the refusal instead of overwriting.

Run against the S3 server the suite starts (SeaweedFS); docs/reliability.md names it. MinIO
could not be run here: some of its releases answered a conditional PUT with 304 instead of 412
(minio/minio#19442), which workers.store counts as a refusal too.
"""

import os

import pytest
from botocore.exceptions import ClientError

from tests.helpers import drop_files, result_of, run_worker
from workers.inbox import file_id
from workers.stager import CopyPlan, create_only_copy
from workers.store import PRECONDITION_FAILED

MiB = 1024 * 1024
TAKEN = "raw/acme/immutability/taken.csv"
ORIGINAL = b"the raw bytes first written\n"


def server_name(s3, bucket: str) -> str:
    headers = s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
    return headers.get("server", "unknown S3 server")


@pytest.mark.parametrize(
    "attempt",
    ["put_if_none_match", "copy_object", "multipart_complete"],
)
def test_the_server_refuses_each_kind_of_raw_write_over_an_existing_object(pg_platform, s3_server, attempt, ledger):
    s3, bucket = s3_server.client(), pg_platform["MINIO_BUCKET"]
    s3.put_object(Bucket=bucket, Key=TAKEN, Body=ORIGINAL)
    source = s3.put_object(Bucket=bucket, Key="inbox/acme/x/immutability/new.csv", Body=os.urandom(7 * MiB))

    with pytest.raises(ClientError) as refused:
        if attempt == "put_if_none_match":
            # The registrar's manifest write.
            s3.put_object(Bucket=bucket, Key=TAKEN, Body=b"other", IfNoneMatch="*")
        else:
            # The stager's copies: single request, and in parts above the threshold.
            threshold = 64 * MiB if attempt == "copy_object" else 5 * MiB
            create_only_copy(
                s3, bucket, "inbox/acme/x/immutability/new.csv", source["ETag"], TAKEN, 7 * MiB, CopyPlan(threshold)
            )

    assert refused.value.response["Error"]["Code"] in PRECONDITION_FAILED
    assert s3.get_object(Bucket=bucket, Key=TAKEN)["Body"].read() == ORIGINAL
    ledger.update(overwrites_refused=1)
    ledger.servers.add(server_name(s3, bucket))


def test_a_stager_run_over_a_squatted_raw_key_is_refused_reported_and_resumable(pg_platform, s3_server, ledger):
    s3, bucket = s3_server.client(), pg_platform["MINIO_BUCKET"]
    group = "inbox/acme/unknown/immutability-stager/"
    files = {"medical_claims.csv": b"a,b\n1,2\n", "eligibility.csv": b"e\n", "notes.txt": b"n\n"}
    drop_files(s3, bucket, group, files)
    registered = result_of(run_worker(pg_platform, "registrar", "--grouping-key", group))
    squatted = registered["raw_prefix"] + "eligibility.csv"
    s3.put_object(Bucket=bucket, Key=squatted, Body=b"somebody else's bytes\n")

    refused = run_worker(pg_platform, "stager", "--submission-id", registered["submission_id"])

    assert refused.returncode == 1
    assert f"raw copy of {file_id(group + 'eligibility.csv')} already exists with different bytes" in refused.stderr
    assert "refused to overwrite" in refused.stderr
    assert s3.get_object(Bucket=bucket, Key=squatted)["Body"].read() == b"somebody else's bytes\n"
    # Nothing was removed from the inbox while the submission is not wholly staged.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=group)["KeyCount"]
    assert listed == len(files) + 1
    ledger.update(overwrites_refused=1)

    # The operator moves the squatter aside; the next run stages the rest and keeps what was done.
    s3.delete_object(Bucket=bucket, Key=squatted)
    done = result_of(run_worker(pg_platform, "stager", "--submission-id", registered["submission_id"]))
    assert (done["status"], done["files_copied"], done["files_already_staged"]) == ("staged", 1, 2)
