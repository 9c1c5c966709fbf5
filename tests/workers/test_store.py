"""The raw zone's bucket and the store check (workers.store) against the suite's real SeaweedFS
server: a bucket with Object Lock from its creation, an unlocked one refused with the migration, and
`python -m workers.store check` passing, failing and cleaning up as an operator would see it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import yaml

from tests.services import REPO, S3Server, free_port_block, remove_bucket
from workers import store
from workers.store import CHECK_PREFIX, PROBES, Scratch, StoreError, ensure_bucket

DAGSTER_SERVICES = ("dagster_webserver", "dagster_viewer", "dagster_daemon")


@pytest.fixture
def new_bucket_name(s3_server: S3Server) -> str:
    """A name no bucket has yet; whatever the test makes under it is removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    remove_bucket(s3_server, name)


@pytest.fixture
def unlocked_bucket(s3_server: S3Server, new_bucket_name: str) -> str:
    """A bucket made as every bucket was before Object Lock: plain boto3, no lock, no versioning."""
    s3_server.client().create_bucket(Bucket=new_bucket_name)
    return new_bucket_name


def store_env(server: S3Server, bucket: str) -> dict[str, str]:
    return {
        "MINIO_ENDPOINT": server.endpoint,
        "MINIO_ACCESS_KEY": server.access_key,
        "MINIO_SECRET_KEY": server.secret_key,
        "MINIO_BUCKET": bucket,
    }


def run_store(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`python -m workers.store ...` as compose's steps and dev_up.sh run it."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    return subprocess.run(
        [sys.executable, "-m", "workers.store", *args],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def check_versions(s3, bucket: str, prefix: str = CHECK_PREFIX) -> list[dict]:
    """Every version and delete marker under the prefix."""
    listed = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return [*listed.get("Versions", ()), *listed.get("DeleteMarkers", ())]


# --- ensure_bucket ---------------------------------------------------------------------------------


def test_ensure_bucket_creates_a_bucket_with_object_lock_and_versioning_and_no_default_retention(
    s3_server, new_bucket_name
):
    s3 = s3_server.client()
    assert ensure_bucket(s3, new_bucket_name) is True
    assert s3.get_object_lock_configuration(Bucket=new_bucket_name)["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled"
    }
    assert s3.get_bucket_versioning(Bucket=new_bucket_name)["Status"] == "Enabled"


def test_ensure_bucket_accepts_the_locked_bucket_it_made_before(s3_server, new_bucket_name):
    s3 = s3_server.client()
    ensure_bucket(s3, new_bucket_name)
    assert ensure_bucket(s3, new_bucket_name) is False


def test_an_existing_bucket_without_object_lock_is_refused_with_the_migration_and_left_as_it_was(
    s3_server, unlocked_bucket
):
    s3 = s3_server.client()
    with pytest.raises(StoreError) as refused:
        ensure_bucket(s3, unlocked_bucket)
    message = str(refused.value)
    assert f"bucket {unlocked_bucket} exists without Object Lock" in message
    for step in (
        f"MINIO_BUCKET={unlocked_bucket}-locked python -m workers.store ensure-bucket",
        f"aws s3 sync s3://{unlocked_bucket} s3://{unlocked_bucket}-locked",
        "mc mirror",
        "python -m workers.audit",
    ):
        assert step in message
    assert "Status" not in s3.get_bucket_versioning(Bucket=unlocked_bucket)
    assert store.object_lock_configuration(s3, unlocked_bucket) == {}


def test_the_ensure_bucket_command_creates_the_locked_bucket(s3_server, new_bucket_name):
    done = run_store(store_env(s3_server, new_bucket_name), "ensure-bucket")
    assert done.returncode == 0, done.stderr
    assert f"bucket {new_bucket_name} created, with Object Lock" in done.stdout
    lock = s3_server.client().get_object_lock_configuration(Bucket=new_bucket_name)
    assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"


def test_the_ensure_bucket_command_exits_2_on_an_unlocked_bucket_with_the_migration_and_no_traceback(
    s3_server, unlocked_bucket
):
    done = run_store(store_env(s3_server, unlocked_bucket), "ensure-bucket")
    assert done.returncode == 2
    assert done.stderr.startswith(f"store: bucket {unlocked_bucket} exists without Object Lock")
    assert "python -m workers.audit" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


# --- check -----------------------------------------------------------------------------------------


def test_check_passes_every_probe_on_a_locked_bucket_and_leaves_no_version_behind(s3_server, bucket):
    done = run_store(store_env(s3_server, bucket), "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"ok   {probe.name}" for probe in PROBES] + ["ok   clean-up"]
    assert check_versions(s3_server.client(), bucket) == []


def test_check_fails_naming_the_object_lock_probe_on_an_unlocked_bucket(s3_server, unlocked_bucket):
    done = run_store(store_env(s3_server, unlocked_bucket), "check")
    assert done.returncode == 1
    assert f"BAD  bucket-object-lock: bucket {unlocked_bucket} has no Object Lock" in done.stdout
    assert done.stderr.startswith(f"store check: bucket {unlocked_bucket} at ")
    assert "fails bucket-object-lock" in done.stderr
    assert check_versions(s3_server.client(), unlocked_bucket) == []


def test_check_fails_on_a_bucket_default_retention_which_would_lock_the_inbox_too(s3_server, bucket):
    s3 = s3_server.client()
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    done = run_store(store_env(s3_server, bucket), "check")
    assert done.returncode == 1
    assert f"BAD  bucket-object-lock: bucket {bucket} has a default retention" in done.stdout


def test_two_checks_in_a_row_both_pass(s3_server, bucket):
    for _ in range(2):
        done = run_store(store_env(s3_server, bucket), "check")
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_check_killed_midway_does_not_break_the_next(s3_server, bucket):
    """The killed run: every probe's objects made and none removed, a version still under legal
    hold and one under retention, as a run killed inside those probes leaves them."""
    s3 = s3_server.client()
    killed = Scratch(s3, bucket)
    store.run_probes(killed)
    held = killed.put("held", b"held\n").version
    s3.put_object_legal_hold(Bucket=bucket, Key=killed.key("held"), VersionId=held, LegalHold={"Status": "ON"})
    killed.put_locked("retained", b"retained\n")

    done = run_store(store_env(s3_server, bucket), "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_versions(s3, bucket, CHECK_PREFIX) == check_versions(s3, bucket, killed.prefix) != []


def test_a_check_removes_what_a_run_killed_over_an_hour_ago_left_legal_hold_and_retention_included(s3_server, bucket):
    s3 = s3_server.client()
    killed = Scratch(s3, bucket, run="20000101T000000Z-killed")
    held = killed.put("held", b"held\n").version
    s3.put_object_legal_hold(Bucket=bucket, Key=killed.key("held"), VersionId=held, LegalHold={"Status": "ON"})
    killed.put_locked("retained", b"retained\n")

    done = run_store(store_env(s3_server, bucket), "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_versions(s3, bucket) == []


def test_check_exits_2_on_a_bucket_that_does_not_exist(s3_server, new_bucket_name):
    done = run_store(store_env(s3_server, new_bucket_name), "check")
    assert done.returncode == 2
    assert done.stderr == f"store: bucket {new_bucket_name} does not exist at {s3_server.endpoint[7:]} " + (
        "(python -m workers.store ensure-bucket)\n"
    )


def test_check_exits_2_with_one_line_and_no_secret_when_the_store_never_answers(s3_server):
    dead = S3Server(f"http://127.0.0.1:{free_port_block()}", "an-access-key", "SENTINEL-SECRET")
    done = run_store(store_env(dead, "health-raw"), "check", "--wait", "1")
    assert done.returncode == 2
    assert done.stderr.startswith(f"store: no answer from the object store at {dead.endpoint[7:]} (MINIO_ENDPOINT)")
    assert len(done.stderr.splitlines()) == 1
    assert "SENTINEL-SECRET" not in done.stdout + done.stderr


def test_check_exits_2_naming_the_keys_when_the_store_refuses_them(s3_server, bucket):
    wrong = S3Server(s3_server.endpoint, "not-a-key", "SENTINEL-SECRET")
    done = run_store(store_env(wrong, bucket), "check")
    assert done.returncode == 2
    assert "MINIO_ACCESS_KEY / MINIO_SECRET_KEY" in done.stderr and "Traceback" not in done.stderr
    assert "SENTINEL-SECRET" not in done.stdout + done.stderr


# --- Docker mode: the check gates the Dagster services -----------------------------------------


def test_compose_runs_the_store_check_after_the_bucket_set_up_and_before_every_dagster_service():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    # The command itself waits for the store; no shell loop, which would retry a refusal too.
    assert services["minio_init"]["entrypoint"][:4] == ["python", "-m", "workers.store", "ensure-bucket"]
    assert services["store_check"]["entrypoint"] == ["python", "-m", "workers.store", "check"]
    assert services["store_check"]["depends_on"] == {"minio_init": {"condition": "service_completed_successfully"}}
    for name in DAGSTER_SERVICES:
        assert services[name]["depends_on"]["store_check"] == {"condition": "service_completed_successfully"}, name
