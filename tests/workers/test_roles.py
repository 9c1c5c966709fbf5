"""Object-store roles (workers.roles) on a real SeaweedFS that enforces them: each role does its
work, is refused outside it, and the whole intake runs with each worker holding only its role's keys."""

import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from orchestrator.definitions import defs
from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from orchestrator.defs.resources import WorkerLauncher, worker_env
from tests.helpers import BUCKET, ROLE_KEYS, drop_files, role_variables, roles_env, run_check
from tests.services import REPO, S3Server
from workers import layouts, roles
from workers.catalogue import Worker, worker
from workers.db import make_engine

GROUP = "inbox/acme/unknown/roles-001/"


def client_as(server: S3Server, role: str):
    return S3Server(server.endpoint, *ROLE_KEYS[role]).client()


def purge(root, *prefixes: str, bucket: str = BUCKET) -> None:
    """Every version and delete marker under the prefixes, locks bypassed (the tests' own objects)."""
    for prefix in prefixes:
        for entry in roles.versions_under(root, bucket, prefix):
            root.delete_object(
                Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"], BypassGovernanceRetention=True
            )


def check_folders_versions(root, bucket: str = BUCKET) -> list[str]:
    """What stays under the check's folders, in every area: versions and delete markers alike."""
    return [
        entry["Key"]
        for prefix in ("inbox/", "raw/", "bootstrap/", "outbox/", "outbox/acme/", "outbox/globex/")
        for entry in roles.versions_under(root, bucket, f"{prefix}{roles.CHECK_FOLDER}")
    ]


def run_roles_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.roles", "check"], env=env, capture_output=True, text=True, timeout=180
    )


def probe_count() -> int:
    """The check's lines: every role (the partners' too) x every probe x every area it probes."""
    areas = roles.Areas.from_env(roles_env())
    return len(areas.roles) * len(roles.PROBES) * len(areas.probed)


def tomorrow() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def role_env(role_server, migrated_db_url, monkeypatch) -> dict[str, str]:
    """The Dagster daemon's environment in Docker mode: the sensor role's keys as its own,
    every role's keys to hand to the workers, no root keys."""
    env = roles_env(
        role_server.endpoint,
        ROLE_KEYS["sensor"],
        METADATA_DB_URL=migrated_db_url,
        WORKER_LAUNCH_MODE="subprocess",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_render_keeps_the_secrets_in_an_owner_only_file_and_none_in_the_script(tmp_path):
    env = roles_env()
    identities, script = roles.render(tmp_path, env)

    assert stat.S_IMODE(identities.stat().st_mode) == 0o600
    document = json.loads(identities.read_text())
    assert {i["name"] for i in document["identities"]} == {"root", *ROLE_KEYS}
    heartbeat = next(i for i in document["identities"] if i["name"] == "heartbeat")
    assert heartbeat["actions"] == [] and heartbeat["policyNames"] == ["health-heartbeat"]
    policy = next(p for p in document["policies"] if p["name"] == "health-heartbeat")
    assert json.loads(policy["content"])["Statement"] == [
        {
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": [f"arn:aws:s3:::{BUCKET}/bootstrap/*"],
        }
    ]
    layouts = next(i for i in document["identities"] if i["name"] == "layouts")
    assert "policyNames" not in layouts and layouts["actions"] == []
    text = script.read_text()
    assert not [value for value in env.values() if len(value) >= 16 and value in text]
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    for role in ROLE_KEYS:
        assert (f"mc admin policy attach platform health-{role}" in text) == bool(roles.grants_of(role))
        assert f'mc admin user add platform "${roles.key_variables(role)[0]}"' in text


def test_render_refuses_a_role_without_keys(tmp_path):
    env = {k: v for k, v in roles_env().items() if "STAGER" not in k}
    result = subprocess.run(
        [sys.executable, "-m", "workers.roles", "render", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "roles: MINIO_STAGER_ACCESS_KEY is not set: every role needs its own keys"


def test_no_rendered_policy_lets_a_role_bypass_a_lock_relock_the_bucket_or_delete_a_raw_version(tmp_path):
    identities, _ = roles.render(tmp_path, roles_env())
    statements = [
        (policy["name"], statement)
        for policy in json.loads(identities.read_text())["policies"]
        for statement in json.loads(policy["content"])["Statement"]
    ]

    actions = {action for _, statement in statements for action in statement["Action"]}
    assert not actions & {"s3:BypassGovernanceRetention", "s3:PutBucketObjectLockConfiguration", "s3:*"}
    for name, statement in statements:
        if "s3:DeleteObjectVersion" in statement["Action"]:
            assert (name, statement["Resource"]) == ("health-stager", [f"arn:aws:s3:::{BUCKET}/inbox/*"])
        if "s3:DeleteObject" in statement["Action"]:
            # Only the delete naming a version, for MinIO (roles.VERSIONED_DELETE); never a plain one.
            assert name == "health-stager" and statement["Condition"] == roles.VERSIONED_DELETE, statement


def test_the_check_finds_every_role_allowed_exactly_its_grants_and_leaves_no_version_behind(role_server):
    root = role_server.client()
    root.put_object(Bucket=BUCKET, Key="inbox/acme/x/y/kept.csv", Body=b"partner data\n")
    env = {**os.environ, **roles_env(role_server.endpoint)}
    result = run_roles_check(env)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == probe_count()
    assert all(line.startswith("ok ") for line in lines)
    for line in (
        "ok  heartbeat  Write          bootstrap allowed",
        "ok  sensor     Read           inbox     refused",
        "ok  classifier Read           inbox     refused",
        "ok  stager     Write          inbox     refused",
        "ok  stager     Overwrite      raw       allowed",
        "ok  registrar  Delete         raw       refused",
        "ok  sensor     ListUploads    inbox     allowed",
        "ok  classifier ListUploads    inbox     refused",
        "ok  layouts    List           inbox     refused",
        # The inbox clean-up deletes exact versions; a plain delete (a delete marker) is refused.
        "ok  stager     DeleteVersions inbox     allowed",
        "ok  stager     Delete         inbox     refused",
        "ok  stager     DeleteVersions raw       refused",
        "ok  stager     ListVersions   inbox     allowed",
        "ok  stager     ListVersions   raw       refused",
        "ok  auditor    ListVersions   raw       allowed",
        "ok  sensor     ListVersions   inbox     refused",
        # SeaweedFS tells a GET naming a VersionId (s3:GetObjectVersion) from a plain one.
        "ok  registrar  ReadVersions   inbox     refused",
        "ok  registrar  ReadVersions   raw       allowed",
        "ok  registrar  Retain         raw       allowed",
        "ok  auditor    Retain         raw       refused",
        "ok  auditor    ReadRetention  raw       allowed",
        "ok  heartbeat  Retain         bootstrap refused",
        "ok  stager     Bypass         inbox     refused",
        "ok  registrar  Bypass         raw       refused",
        # Receipts: the writers put them (create-only by If-None-Match), each partner reads its own.
        "ok  stager     Write          outbox    allowed",
        "ok  registrar  Read           outbox    allowed",
        "ok  stager     List           outbox    refused",
        "ok  stager     Delete         outbox    refused",
        "ok  sensor     Read           outbox    refused",
        "ok  stager     Write          outbox:acme allowed",
        "ok  partner-acme List           outbox:acme allowed",
        "ok  partner-acme Read           outbox:acme allowed",
        "ok  partner-acme Write          outbox:acme refused",
        "ok  partner-acme Delete         outbox:acme refused",
        "ok  partner-acme List           outbox:globex refused",
        "ok  partner-acme Read           outbox:globex refused",
        "ok  partner-globex Read           outbox:globex allowed",
        "ok  partner-acme List           outbox    refused",
        "ok  partner-acme Read           outbox    refused",
        "ok  partner-acme Read           inbox     refused",
        "ok  partner-acme Write          inbox     refused",
        "ok  partner-acme Read           raw       refused",
    ):
        assert line in result.stdout
    assert "authorizes it as" not in result.stdout  # SeaweedFS decides every verb by its own actions
    assert not [value for value in env.values() if len(value) >= 16 and value in result.stdout + result.stderr]
    # Only the check's own objects were touched, and not one of their versions or delete markers is left.
    assert check_folders_versions(root) == []
    assert [o["Key"] for o in root.list_objects_v2(Bucket=BUCKET).get("Contents", [])] == ["inbox/acme/x/y/kept.csv"]
    purge(root, "inbox/acme/x/y/kept.csv")


def test_the_check_passes_twice_in_a_row_beside_another_runs_objects_and_leaves_them_alone(role_server):
    root = role_server.client()
    # As a check killed a moment ago (or running now) leaves them: a locked version and a delete marker.
    other = f"raw/{roles.CHECK_FOLDER}{uuid.uuid4().hex[:12]}/1"
    root.put_object(
        Bucket=BUCKET, Key=other, Body=b"x", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=tomorrow()
    )
    root.delete_object(Bucket=BUCKET, Key=other)
    env = {**os.environ, **roles_env(role_server.endpoint)}

    for _ in range(2):
        result = run_roles_check(env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr

    assert sorted(check_folders_versions(root)) == [other, other]
    purge(root, other)


def test_the_check_removes_a_killed_runs_leftovers_once_they_are_old(role_server, monkeypatch):
    root = role_server.client()
    leftover = f"inbox/{roles.CHECK_FOLDER}{uuid.uuid4().hex[:12]}/1"
    root.put_object(
        Bucket=BUCKET, Key=leftover, Body=b"x", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=tomorrow()
    )
    # Instead of waiting an hour: anything of another run's is old enough.
    monkeypatch.setattr(roles, "LEFTOVER_AGE", timedelta(0))

    probes = list(roles.check(roles_env(role_server.endpoint), roles._client_for))

    assert all(p.outcome == ("allowed" if p.allowed else "refused") for _, p in probes)
    assert check_folders_versions(root) == []


def test_the_check_says_clearly_when_it_cannot_remove_its_objects_and_fails(role_server, monkeypatch, capsys):
    root = role_server.client()
    held = []
    make_fixture = roles.Scratch.fixture

    def fixture_then_held(scratch, prefix, locked=False):
        # A legal hold on the check's first object: nothing, not even the root keys, may delete it.
        made = make_fixture(scratch, prefix, locked)
        if not held:
            root.put_object_legal_hold(
                Bucket=BUCKET, Key=made.key, VersionId=made.version_id, LegalHold={"Status": "ON"}
            )
            held.append(made)
        return made

    monkeypatch.setattr(roles.Scratch, "fixture", fixture_then_held)
    env = roles_env(role_server.endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    code = roles.main(["check"])

    out, err = capsys.readouterr()
    (version,) = held
    assert code == 1
    assert err.startswith("roles: 1 object version(s) of the check's stay in bucket health-raw, e.g. ")
    assert f"{version.key} version {version.version_id} (AccessDenied)" in err
    assert "Traceback" not in err and not [v for v in env.values() if len(v) >= 16 and v in out + err]
    assert len(out.splitlines()) == probe_count()
    assert check_folders_versions(root) == [version.key]
    root.put_object_legal_hold(
        Bucket=BUCKET, Key=version.key, VersionId=version.version_id, LegalHold={"Status": "OFF"}
    )
    purge(root, version.key)


def test_the_check_refuses_a_bucket_without_object_lock(s3_server):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=name)
    every = (s3_server.access_key, s3_server.secret_key)
    env = {
        **os.environ,
        **roles_env(s3_server.endpoint, every, MINIO_BUCKET=name),
        **{key: every[0] if "ACCESS" in key else every[1] for key in role_variables()},
    }
    try:
        result = run_roles_check(env)
    finally:
        s3.delete_bucket(Bucket=name)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"roles: bucket {name} has no Object Lock, so its raw zone is not write-once")


@pytest.fixture
def locked_bucket(s3_server: S3Server) -> str:
    """A bucket of the test's own with Object Lock on, as the platform makes its bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    purge(s3, "", bucket=name)
    s3.delete_bucket(Bucket=name)


def test_the_check_reports_a_server_that_grants_more_than_the_roles_say(s3_server, locked_bucket):
    # The suite's ordinary server has one all-powerful key: every refusal the roles expect is missing.
    every = (s3_server.access_key, s3_server.secret_key)
    env = {
        **os.environ,
        **roles_env(s3_server.endpoint, every, MINIO_BUCKET=locked_bucket),
        **{name: every[0] if "ACCESS" in name else every[1] for name in role_variables()},
    }
    result = run_roles_check(env)

    assert result.returncode == 1
    assert "BAD sensor     Write          inbox     allowed (expected refused)" in result.stdout
    assert "BAD stager     Delete         raw       allowed (expected refused)" in result.stdout
    assert "BAD stager     Delete         inbox     allowed (expected refused)" in result.stdout
    assert "BAD registrar  Bypass         raw       allowed (expected refused)" in result.stdout
    assert "BAD auditor    DeleteVersions raw       allowed (expected refused)" in result.stdout
    assert "not as granted" in result.stderr
    assert check_folders_versions(s3_server.client(), locked_bucket) == []


def test_the_check_expects_what_minio_authorizes_by_other_actions():
    # MinIO (from its source, not run here) authorizes a GET naming a VersionId as s3:GetObject and
    # falls back from s3:ListBucketVersions to s3:ListBucket: there those probes follow Read and List.
    assert roles.expected("registrar", "ReadVersions", "inbox", "MinIO")
    assert not roles.expected("registrar", "ReadVersions", "inbox", "SeaweedFS")
    assert roles.expected("sensor", "ListVersions", "inbox", "MinIO")
    assert not roles.expected("sensor", "ListVersions", "raw", "MinIO")
    assert roles.probe("sensor", "ListVersions", "inbox", "allowed", "MinIO").note == (
        "MinIO authorizes it as ListVersions or List"
    )
    assert roles.probe("sensor", "ListVersions", "inbox", "refused", "SeaweedFS").note == ""


def refused(operation) -> bool:
    try:
        operation()
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("AccessDenied", "403")
    return False


def test_each_role_is_refused_outside_its_permissions(role_server):
    root = role_server.client()
    root.put_object(Bucket=BUCKET, Key="inbox/acme/x/a.csv", Body=b"a\n")
    root.put_object(Bucket=BUCKET, Key="raw/acme/x/a.csv", Body=b"a\n")
    root.put_object(Bucket=BUCKET, Key="bootstrap/hello.txt", Body=b"hi\n")
    sensor, classifier, layouts_role, registrar, stager, heartbeat, auditor = (
        client_as(role_server, r)
        for r in ("sensor", "classifier", "layouts", "registrar", "stager", "heartbeat", "auditor")
    )
    inbox_file = {"Bucket": BUCKET, "Key": "inbox/acme/x/a.csv"}
    raw_file = {"Bucket": BUCKET, "Key": "raw/acme/x/a.csv"}
    attempts = {
        "sensor reads an inbox body": lambda: sensor.get_object(**inbox_file),
        "sensor heads an inbox object": lambda: sensor.head_object(**inbox_file),
        "sensor puts into the inbox": lambda: sensor.put_object(Bucket=BUCKET, Key="inbox/acme/x/b", Body=b""),
        "sensor deletes from the inbox": lambda: sensor.delete_object(**inbox_file),
        "sensor lists the raw zone": lambda: sensor.list_objects_v2(Bucket=BUCKET, Prefix="raw/"),
        "sensor lists the whole bucket": lambda: sensor.list_objects_v2(Bucket=BUCKET),
        "sensor lists every upload": lambda: sensor.list_multipart_uploads(Bucket=BUCKET),
        "classifier reads an inbox body": lambda: classifier.get_object(**inbox_file),
        "classifier lists uploads": lambda: classifier.list_multipart_uploads(Bucket=BUCKET, Prefix="inbox/"),
        "layouts lists the inbox": lambda: layouts_role.list_objects_v2(Bucket=BUCKET, Prefix="inbox/"),
        "layouts reads the inbox": lambda: layouts_role.get_object(**inbox_file),
        "registrar deletes from the inbox": lambda: registrar.delete_object(**inbox_file),
        "registrar deletes from the raw zone": lambda: registrar.delete_object(**raw_file),
        "registrar writes into the inbox": lambda: registrar.put_object(Bucket=BUCKET, Key="inbox/acme/x/b", Body=b""),
        "registrar writes bootstrap/": lambda: registrar.put_object(Bucket=BUCKET, Key="bootstrap/x", Body=b""),
        "stager writes into the inbox": lambda: stager.put_object(Bucket=BUCKET, Key="inbox/acme/x/b", Body=b""),
        "stager copies into the inbox": lambda: stager.copy_object(
            Bucket=BUCKET, Key="inbox/acme/x/copy.csv", CopySource=raw_file
        ),
        "stager deletes from the raw zone": lambda: stager.delete_object(**raw_file),
        "stager writes bootstrap/": lambda: stager.put_object(Bucket=BUCKET, Key="bootstrap/x", Body=b""),
        "stager reads bootstrap/": lambda: stager.get_object(Bucket=BUCKET, Key="bootstrap/hello.txt"),
        "stager copies bootstrap/ into raw": lambda: stager.copy_object(
            Bucket=BUCKET, Key="raw/acme/x/hello.txt", CopySource={"Bucket": BUCKET, "Key": "bootstrap/hello.txt"}
        ),
        "stager copies the inbox outside raw": lambda: stager.copy_object(
            Bucket=BUCKET, Key="elsewhere/a.csv", CopySource=inbox_file
        ),
        "heartbeat reads the inbox": lambda: heartbeat.get_object(**inbox_file),
        "heartbeat lists the inbox": lambda: heartbeat.list_objects_v2(Bucket=BUCKET, Prefix="inbox/"),
        "heartbeat writes the raw zone": lambda: heartbeat.put_object(Bucket=BUCKET, Key="raw/acme/x/b", Body=b""),
        "heartbeat reads back bootstrap/": lambda: heartbeat.get_object(Bucket=BUCKET, Key="bootstrap/hello.txt"),
        "stager lists the inbox": lambda: stager.list_objects_v2(Bucket=BUCKET, Prefix="inbox/"),
        "auditor lists the raw zone": lambda: auditor.list_objects_v2(Bucket=BUCKET, Prefix="raw/"),
        "heartbeat deletes bootstrap/": lambda: heartbeat.delete_object(Bucket=BUCKET, Key="bootstrap/hello.txt"),
        "auditor writes the raw zone": lambda: auditor.put_object(Bucket=BUCKET, Key="raw/acme/x/b", Body=b""),
        "auditor deletes from the raw zone": lambda: auditor.delete_object(**raw_file),
        "auditor reads the inbox": lambda: auditor.get_object(**inbox_file),
    }
    allowed = [what for what, operation in attempts.items() if not refused(operation)]

    assert allowed == []
    # Nothing a refused call touched has changed.
    assert root.get_object(**inbox_file)["Body"].read() == b"a\n"
    assert root.get_object(**raw_file)["Body"].read() == b"a\n"
    listed = [o["Key"] for o in root.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(listed) == ["bootstrap/hello.txt", "inbox/acme/x/a.csv", "raw/acme/x/a.csv"]
    # ...and what the roles are for is allowed.
    assert [o["Key"] for o in sensor.list_objects_v2(Bucket=BUCKET, Prefix="inbox/")["Contents"]] == [inbox_file["Key"]]
    heartbeat.put_object(Bucket=BUCKET, Key="bootstrap/hello.txt", Body=b"hi again\n")
    stager.copy_object(Bucket=BUCKET, Key="raw/acme/x/c.csv", CopySource=inbox_file)
    assert auditor.get_object(Bucket=BUCKET, Key="raw/acme/x/c.csv")["Body"].read() == b"a\n"
    (staged,) = root.list_object_versions(Bucket=BUCKET, Prefix=inbox_file["Key"])["Versions"]
    stager.delete_object(**inbox_file, VersionId=staged["VersionId"])
    assert "Versions" not in root.list_object_versions(Bucket=BUCKET, Prefix=inbox_file["Key"])
    purge(root, "raw/acme/x/", "bootstrap/")


def test_each_role_is_refused_versions_and_locks_outside_its_grants(role_server):
    root = role_server.client()
    inbox_v = root.put_object(Bucket=BUCKET, Key="inbox/acme/v/a.csv", Body=b"a\n")["VersionId"]
    raw_v = root.put_object(
        Bucket=BUCKET,
        Key="raw/acme/v/a.csv",
        Body=b"a\n",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=tomorrow(),
    )["VersionId"]
    loose_v = root.put_object(Bucket=BUCKET, Key="raw/acme/v/loose.csv", Body=b"b\n")["VersionId"]
    role = {r: client_as(role_server, r) for r in roles.GRANTS}
    inbox = {"Bucket": BUCKET, "Key": "inbox/acme/v/a.csv", "VersionId": inbox_v}
    raw = {"Bucket": BUCKET, "Key": "raw/acme/v/a.csv", "VersionId": raw_v}
    loose = {"Bucket": BUCKET, "Key": "raw/acme/v/loose.csv", "VersionId": loose_v}
    governance = {"Mode": "GOVERNANCE", "RetainUntilDate": tomorrow()}
    attempts = {
        "stager plain-deletes in the inbox (a delete marker)": lambda: role["stager"].delete_object(
            Bucket=BUCKET, Key=inbox["Key"]
        ),
        "registrar deletes an inbox version": lambda: role["registrar"].delete_object(**inbox),
        "stager deletes a raw version": lambda: role["stager"].delete_object(**loose),
        "registrar deletes a raw version": lambda: role["registrar"].delete_object(**loose),
        "auditor deletes a raw version": lambda: role["auditor"].delete_object(**loose),
        "sensor lists inbox versions": lambda: role["sensor"].list_object_versions(Bucket=BUCKET, Prefix="inbox/"),
        "registrar lists inbox versions": lambda: role["registrar"].list_object_versions(
            Bucket=BUCKET, Prefix="inbox/"
        ),
        "registrar lists raw versions": lambda: role["registrar"].list_object_versions(Bucket=BUCKET, Prefix="raw/"),
        "stager lists raw versions": lambda: role["stager"].list_object_versions(Bucket=BUCKET, Prefix="raw/"),
        "auditor lists inbox versions": lambda: role["auditor"].list_object_versions(Bucket=BUCKET, Prefix="inbox/"),
        "auditor lists every version": lambda: role["auditor"].list_object_versions(Bucket=BUCKET),
        "registrar reads an inbox version": lambda: role["registrar"].get_object(**inbox),
        "auditor reads an inbox version": lambda: role["auditor"].get_object(**inbox),
        "sensor heads a raw version": lambda: role["sensor"].head_object(**raw),
        "heartbeat reads a raw version": lambda: role["heartbeat"].get_object(**raw),
        "registrar copies an inbox version": lambda: role["registrar"].copy_object(
            Bucket=BUCKET, Key="raw/acme/v/copy.csv", CopySource=inbox
        ),
        "auditor retains a raw version": lambda: role["auditor"].put_object_retention(**loose, Retention=governance),
        "auditor holds a raw version": lambda: role["auditor"].put_object_legal_hold(
            **loose, LegalHold={"Status": "ON"}
        ),
        "stager retains an inbox version": lambda: role["stager"].put_object_retention(**inbox, Retention=governance),
        "registrar holds an inbox version": lambda: role["registrar"].put_object_legal_hold(
            **inbox, LegalHold={"Status": "ON"}
        ),
        "heartbeat writes a locked object": lambda: role["heartbeat"].put_object(
            Bucket=BUCKET,
            Key="bootstrap/locked",
            Body=b"",
            ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=tomorrow(),
        ),
        "sensor reads a raw retention": lambda: role["sensor"].get_object_retention(**raw),
        "stager reads an inbox legal hold": lambda: role["stager"].get_object_legal_hold(**inbox),
        "classifier reads a raw legal hold": lambda: role["classifier"].get_object_legal_hold(**raw),
        **{
            f"{r} changes the bucket's Object Lock": lambda c=c: c.put_object_lock_configuration(
                Bucket=BUCKET, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
            )
            for r, c in role.items()
        },
    }
    allowed = [what for what, operation in attempts.items() if not refused(operation)]

    assert allowed == []
    # No delete marker, no new version, no lock: nothing a refused call touched has changed.
    assert [v["VersionId"] for v in root.list_object_versions(Bucket=BUCKET, Prefix="inbox/acme/v/")["Versions"]] == [
        inbox_v
    ]
    assert "DeleteMarkers" not in root.list_object_versions(Bucket=BUCKET, Prefix="inbox/acme/v/")
    assert sorted(o["Key"] for o in root.list_objects_v2(Bucket=BUCKET, Prefix="raw/acme/v/")["Contents"]) == [
        "raw/acme/v/a.csv",
        "raw/acme/v/loose.csv",
    ]
    # ...and what the roles are for is allowed.
    registrar, stager, auditor = role["registrar"], role["stager"], role["auditor"]
    manifest = registrar.put_object(
        Bucket=BUCKET,
        Key="raw/acme/v/_manifest.json",
        Body=b"{}",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=tomorrow(),
        ObjectLockLegalHoldStatus="ON",
    )
    assert auditor.get_object_legal_hold(Bucket=BUCKET, Key="raw/acme/v/_manifest.json")["LegalHold"]["Status"] == "ON"
    assert registrar.head_object(**raw)["VersionId"] == raw_v
    stager.put_object_retention(**loose, Retention=governance)
    stager.put_object_legal_hold(**loose, LegalHold={"Status": "OFF"})
    assert auditor.get_object_retention(**loose)["Retention"]["Mode"] == "GOVERNANCE"
    assert auditor.list_object_versions(Bucket=BUCKET, Prefix="raw/acme/v/")["Versions"]
    assert stager.list_object_versions(Bucket=BUCKET, Prefix=inbox["Key"])["Versions"][0]["VersionId"] == inbox_v
    stager.copy_object(Bucket=BUCKET, Key="raw/acme/v/b.csv", CopySource=inbox)
    stager.delete_object(**inbox)
    assert "Versions" not in root.list_object_versions(Bucket=BUCKET, Prefix="inbox/acme/v/")
    root.put_object_legal_hold(
        Bucket=BUCKET, Key="raw/acme/v/_manifest.json", VersionId=manifest["VersionId"], LegalHold={"Status": "OFF"}
    )
    purge(root, "raw/acme/v/")


def test_a_partner_reads_its_own_receipts_and_is_refused_everything_else(role_server):
    root = role_server.client()
    own, other = "outbox/acme/drop-1/sub-1.receipt.json", "outbox/globex/drop-1/sub-2.receipt.json"
    for key in (own, other, "inbox/acme/x/drop-1/a.csv", "raw/acme/x/sub-1/a.csv"):
        root.put_object(Bucket=BUCKET, Key=key, Body=b"{}\n")
    acme, globex, stager = (client_as(role_server, r) for r in ("partner-acme", "partner-globex", "stager"))
    attempts = {
        "acme reads globex's receipt": lambda: acme.get_object(Bucket=BUCKET, Key=other),
        "acme heads globex's receipt": lambda: acme.head_object(Bucket=BUCKET, Key=other),
        "acme lists globex's outbox": lambda: acme.list_objects_v2(Bucket=BUCKET, Prefix="outbox/globex/"),
        "acme lists the whole outbox": lambda: acme.list_objects_v2(Bucket=BUCKET, Prefix="outbox/"),
        "acme lists the bucket": lambda: acme.list_objects_v2(Bucket=BUCKET),
        "acme rewrites its receipt": lambda: acme.put_object(Bucket=BUCKET, Key=own, Body=b"forged"),
        "acme writes into globex's outbox": lambda: acme.put_object(Bucket=BUCKET, Key=other, Body=b"x"),
        "acme deletes its receipt": lambda: acme.delete_object(Bucket=BUCKET, Key=own),
        "acme reads its inbox": lambda: acme.get_object(Bucket=BUCKET, Key="inbox/acme/x/drop-1/a.csv"),
        "acme reads the raw zone": lambda: acme.get_object(Bucket=BUCKET, Key="raw/acme/x/sub-1/a.csv"),
        "globex reads acme's receipt": lambda: globex.get_object(Bucket=BUCKET, Key=own),
        "the stager lists the outbox": lambda: stager.list_objects_v2(Bucket=BUCKET, Prefix="outbox/"),
        "the stager deletes a receipt": lambda: stager.delete_object(Bucket=BUCKET, Key=own),
    }
    allowed = [what for what, operation in attempts.items() if not refused(operation)]

    assert allowed == []
    listed = acme.list_objects_v2(Bucket=BUCKET, Prefix="outbox/acme/")["Contents"]
    assert [o["Key"] for o in listed] == [own]
    assert acme.get_object(Bucket=BUCKET, Key=own)["Body"].read() == b"{}\n"
    assert globex.get_object(Bucket=BUCKET, Key=other)["Body"].read() == b"{}\n"
    purge(root, "outbox/", "inbox/acme/x/", "raw/acme/x/")


def test_partner_roles_are_refused_unless_each_is_a_submitter_id_named_once():
    assert roles.Areas.from_env(roles_env()).roles[-2:] == ["partner-acme", "partner-globex"]
    for spelled in ("acme,../x", "acme,acme", "blue-cross,blue_cross"):
        with pytest.raises(roles.SettingsError, match="PARTNER_ROLES"):
            roles.Areas.from_env(roles_env(PARTNER_ROLES=spelled))
    assert roles.key_variables("partner-blue-cross") == (
        "MINIO_PARTNER_BLUE_CROSS_ACCESS_KEY",
        "MINIO_PARTNER_BLUE_CROSS_SECRET_KEY",
    )


def test_nobody_but_the_root_keys_can_lift_a_governance_lock(role_server):
    root = role_server.client()
    key = "raw/acme/gov/a.csv"
    locked = {
        "Bucket": BUCKET,
        "Key": key,
        "VersionId": root.put_object(
            Bucket=BUCKET, Key=key, Body=b"a\n", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=tomorrow()
        )["VersionId"],
    }
    sooner = {"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(hours=1)}
    lifted = []
    for name in ROLE_KEYS:
        s3 = client_as(role_server, name)
        if not refused(lambda s3=s3: s3.delete_object(**locked, BypassGovernanceRetention=True)):
            lifted.append(f"{name} deleted it")
        if not refused(
            lambda s3=s3: s3.put_object_retention(**locked, Retention=sooner, BypassGovernanceRetention=True)
        ):
            lifted.append(f"{name} shortened it")

    assert lifted == []
    assert root.get_object_retention(**locked)["Retention"]["RetainUntilDate"] > sooner["RetainUntilDate"]
    # Without the bypass even the root keys are refused; with it they may (the check's clean-up).
    assert refused(lambda: root.delete_object(**locked))
    root.delete_object(**locked, BypassGovernanceRetention=True)
    assert "Versions" not in root.list_object_versions(Bucket=BUCKET, Prefix=key)


def test_a_missing_key_answers_not_found_to_a_role_that_may_read_there_without_listing(role_server):
    # The stager's re-run checks and the audit's "missing" finding read a 404, and neither may list.
    stager, auditor = client_as(role_server, "stager"), client_as(role_server, "auditor")
    for s3, key in ((stager, "inbox/acme/x/gone.csv"), (stager, "raw/acme/x/gone.csv"), (auditor, "raw/gone.csv")):
        with pytest.raises(ClientError) as raised:
            s3.head_object(Bucket=BUCKET, Key=key)
        assert raised.value.response["Error"]["Code"] in ("404", "NoSuchKey"), key


def test_a_worker_holding_another_roles_keys_is_refused_and_writes_nothing(role_env):
    # The heartbeat worker with the sensor's keys: its PutObject under bootstrap/ is refused.
    env = {**os.environ, **role_env}
    result = subprocess.run(
        [sys.executable, "-m", "workers.heartbeat"], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 1
    assert "AccessDenied" in result.stderr and "PutObject" in result.stderr
    engine = sa.create_engine(role_env["METADATA_DB_URL"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bootstrap_heartbeat")).scalar_one() == 0
    engine.dispose()


def test_the_launcher_hands_each_worker_its_roles_keys_only():
    env = {"MINIO_ACCESS_KEY": "orchestrator", "MINIO_SECRET_KEY": "orchestrator-secret", **role_variables()}

    for name, role in {
        "stager": "stager",
        "audit": "auditor",
        "classifier": "classifier",
        "layouts": "layouts",
    }.items():
        given = worker_env(worker(name), env)
        assert (given["MINIO_ACCESS_KEY"], given["MINIO_SECRET_KEY"]) == ROLE_KEYS[role]
        assert not any(name.startswith(("MINIO_STAGER", "MINIO_AUDITOR")) for name in given)
    # Without role keys (dev mode) every worker gets the one key pair.
    assert worker_env(worker("stager"), {"MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"})["MINIO_ACCESS_KEY"] == "a"
    with pytest.raises(Exception, match="MINIO_STAGER_SECRET_KEY is not set, but its pair is"):
        worker_env(worker("stager"), {"MINIO_STAGER_ACCESS_KEY": "a"})


@pytest.mark.dagster_runs
def test_the_intake_runs_end_to_end_with_each_worker_under_its_role(role_env, role_server):
    engine = make_engine(role_env["METADATA_DB_URL"])
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    root = role_server.client()
    drop_files(root, BUCKET, GROUP, {"medical_claims.csv": b"m,a\n1,2\n", "ref/codes.txt": b"A1\n"})
    instance = dg.DagsterInstance.ephemeral()

    # The sensor runs in the Dagster process, under the sensor role.
    tick = inbox_discovery_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    (request,) = tick.run_requests
    result = register_submission_from_group_job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, resources={"launcher": WorkerLauncher()}
    )

    assert result.success
    raw = [o["Key"] for o in root.list_objects_v2(Bucket=BUCKET, Prefix="raw/")["Contents"]]
    assert len(raw) == 3 and sum(key.endswith("_manifest.generated.json") for key in raw) == 1
    assert root.list_objects_v2(Bucket=BUCKET, Prefix=GROUP).get("KeyCount") == 0
    # The stager put the receipt under its role; the partner reads it with its own keys.
    acme = client_as(role_server, "partner-acme")
    (receipt,) = acme.list_objects_v2(Bucket=BUCKET, Prefix="outbox/acme/roles-001/")["Contents"]
    assert json.loads(acme.get_object(Bucket=BUCKET, Key=receipt["Key"])["Body"].read())["outcome"] == "staged"
    # The audit re-reads the raw zone under the auditor role.
    assert run_check().passed


def test_the_role_table_names_only_areas_it_can_resolve():
    areas = roles.Areas(inbox="inbox/", raw="raw/")
    for role, verbs in roles.GRANTS.items():
        assert set(verbs) <= set(roles.VERBS), role
        for names in verbs.values():
            assert all(areas.prefix(name) for name in names)
    assert (REPO / "docker-compose.yml").read_text().count("MINIO_AUDITOR_ACCESS_KEY") >= 1


def test_a_worker_without_a_role_gets_the_launching_process_keys():
    env = {"MINIO_ACCESS_KEY": "sensor-key", "MINIO_SECRET_KEY": "sensor-secret", **role_variables()}
    new_worker = Worker("some_new_worker", image="heartbeat", s3_role="some_new_worker", db_role="heartbeat")
    given = worker_env(new_worker, env)
    assert (given["MINIO_ACCESS_KEY"], given["MINIO_SECRET_KEY"]) == ("sensor-key", "sensor-secret")
