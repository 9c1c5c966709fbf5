"""Object-store roles: which worker may do what, and where, declared once.

In Docker mode every worker container gets the credentials of its own role only (the launcher
picks them), the Dagster daemon holds the list-only `sensor` role for the inbox sensor, and the
S3 server is given the same table as IAM policy documents: inside SeaweedFS's `-s3.config`
(`policies` + each identity's `policyNames`, read when it starts) or as MinIO users and policies
applied by `mc` (`minio-roles.sh`). The root credentials (MINIO_ACCESS_KEY / MINIO_SECRET_KEY in
.env) stay with the object store and its set-up steps.

    python -m workers.roles render DIR   # DIR/identities.json and DIR/minio-roles.sh
    python -m workers.roles check        # each role does its work and is refused outside it

Verbs, as IAM actions (AWS's meaning): List = s3:ListBucket with an s3:prefix condition;
ListUploads = s3:ListBucketMultipartUploads and ListVersions = s3:ListBucketVersions, likewise;
Read = s3:GetObject (get and head of the current version); ReadVersions = s3:GetObjectVersion (get
and head naming a VersionId, and a copy from one); ReadRetention = s3:GetObjectRetention and
s3:GetObjectLegalHold; Write = s3:PutObject (put, copy into, multipart upload, which it covers) and
s3:AbortMultipartUpload; Retain = s3:PutObjectRetention and s3:PutObjectLegalHold (also needed by a
put that carries Object Lock headers); Delete = s3:DeleteObject (a plain delete, which in a
versioned bucket only adds a delete marker); DeleteVersions = s3:DeleteObjectVersion (a delete
naming a VersionId, which removes that version or delete marker for good). No verb grants
s3:BypassGovernanceRetention or s3:PutBucketObjectLockConfiguration: only the root keys may.
No grant can say "create only": a Write may also overwrite, which is why every write into raw/
carries If-None-Match, and why raw/ is locked. Servers differ from AWS in places (AUTHORIZED_AS).
`check` (run with the root keys, on a bucket with Object Lock) touches only objects of its own under
`<area>_role-check/<run>/`, and removes every version and delete marker it made there.

Partners: each submitter named in PARTNER_ROLES (comma-separated) gets a role `partner-<id>`
(keys MINIO_PARTNER_<ID>_ACCESS_KEY / _SECRET_KEY, `-` spelled `_`) that may list and read its own
receipts under `outbox/<id>/`, and nothing else: not another partner's, not the platform's areas.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from workers.catalogue import WORKERS
from workers.receipts import OUTBOX_PREFIX
from workers.settings import Settings, SettingsError, load_intake_settings, load_settings
from workers.store import S3Client, StoreUnreachable, error_code, make_s3_client, when_store_answers

BOOTSTRAP_PREFIX = "bootstrap/"
VERBS = (
    "List",
    "ListUploads",
    "ListVersions",
    "Read",
    "ReadVersions",
    "ReadRetention",
    "Write",
    "Retain",
    "Delete",
    "DeleteVersions",
)
AREAS = ("inbox", "raw", "bootstrap", "outbox")

# role -> verb -> areas. An area is a key prefix, named here and resolved from the settings.
# A missing key answers 404 to whoever may Read there, with no List (SeaweedFS, and MinIO for any
# signed request); the stager's re-run checks and the audit's "missing" finding rely on it. AWS
# S3 answers 403 without s3:ListBucket: there those two roles would need List as well.
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    # The inbox sensor (in the Dagster daemon): keys, sizes and in-progress uploads, never a body.
    "sensor": {"List": ("inbox",), "ListUploads": ("inbox",)},
    # A classifier sees keys and sizes only (CLASSIFIER_IMPL is handed no client), so no bodies.
    "classifier": {"List": ("inbox",)},
    # The layout registry sync touches no object; its keys open nothing.
    "layouts": {},
    # Writes each manifest locked (Retain), and reads back a raw version and its lock to compare.
    # Puts a duplicate's and a rejection's receipt create-only, reading back one already there.
    "registrar": {
        "List": ("inbox",),
        "Read": ("inbox", "raw", "outbox"),
        "ReadVersions": ("raw",),
        "ReadRetention": ("raw",),
        "Write": ("raw", "outbox"),
        "Retain": ("raw",),
    },
    # Copies into raw/ and locks each copy (a copy carries no lock). In the inbox it removes exactly
    # the versions and delete markers it staged or found under the key, by VersionId: never a plain
    # delete, which would only hide the object behind a delete marker. It never writes there.
    # Puts a staged submission's receipt into outbox/ create-only, as the registrar does.
    "stager": {
        "ListVersions": ("inbox",),
        "Read": ("inbox", "raw", "outbox"),
        "ReadVersions": ("inbox", "raw"),
        "ReadRetention": ("raw",),
        "Write": ("raw", "outbox"),
        "Retain": ("raw",),
        "DeleteVersions": ("inbox",),
    },
    "heartbeat": {"Write": ("bootstrap",)},
    # Reads the recorded versions and their locks, and lists versions to find overwrites.
    "auditor": {"ListVersions": ("raw",), "Read": ("raw",), "ReadVersions": ("raw",), "ReadRetention": ("raw",)},
}
# The Dagster daemon itself (the inbox sensor) runs under this role.
ORCHESTRATOR_ROLE = "sensor"
# A partner's role: `partner-<submitter id>`, its area `outbox:<submitter id>` (outbox/<id>/).
PARTNER_ROLE = "partner-"
PARTNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def partner_grants(submitter_id: str) -> dict[str, tuple[str, ...]]:
    """A partner lists and reads its own receipts, and nothing else."""
    own = f"outbox:{submitter_id}"
    return {"List": (own,), "Read": (own,)}


def grants_of(role: str) -> dict[str, tuple[str, ...]]:
    if role.startswith(PARTNER_ROLE):
        return partner_grants(role.removeprefix(PARTNER_ROLE))
    return GRANTS[role]


# The IAM actions each verb stands for; the List verbs are bucket-level, with a prefix condition.
ACTIONS = {
    "List": ("s3:ListBucket",),
    "ListUploads": ("s3:ListBucketMultipartUploads",),
    "ListVersions": ("s3:ListBucketVersions",),
    "Read": ("s3:GetObject",),
    "ReadVersions": ("s3:GetObjectVersion",),
    "ReadRetention": ("s3:GetObjectRetention", "s3:GetObjectLegalHold"),
    "Write": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "Retain": ("s3:PutObjectRetention", "s3:PutObjectLegalHold"),
    "Delete": ("s3:DeleteObject",),
    "DeleteVersions": ("s3:DeleteObjectVersion",),
}
BUCKET_VERBS = ("List", "ListUploads", "ListVersions")
# MinIO authorizes a delete naming a VersionId as s3:DeleteObject (s3:DeleteObjectVersion only counts
# in a Deny; cmd/auth-handler.go authorizeRequest, RELEASE.2025-09-07T16-13-09Z). So DeleteVersions
# also allows s3:DeleteObject where the request names a version (MinIO sets s3:versionid to "" when
# none is named). AWS and SeaweedFS authorize such a delete as s3:DeleteObjectVersion, and a plain
# delete carries no s3:versionid there, so this statement allows them nothing (tried on SeaweedFS).
VERSIONED_DELETE = {"Null": {"s3:versionid": "false"}, "StringNotEquals": {"s3:versionid": [""]}}


def role_of(worker: str) -> str | None:
    """The object-store role a worker runs under (workers.catalogue); None for a worker not listed."""
    entry = WORKERS.get(worker)
    return entry.s3_role if entry else None


def key_variables(role: str) -> tuple[str, str]:
    """The environment variables holding a role's access key and secret key."""
    name = role.upper().replace("-", "_")
    return f"MINIO_{name}_ACCESS_KEY", f"MINIO_{name}_SECRET_KEY"


def role_credentials(role: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The role's keys, None when neither variable is set (one key pair for all, as in dev mode)."""
    access_name, secret_name = key_variables(role)
    access, secret = env.get(access_name, ""), env.get(secret_name, "")
    if not access and not secret:
        return None
    if not access or not secret:
        missing = secret_name if access else access_name
        raise SettingsError(f"{missing} is not set, but its pair is: set both or neither")
    return access, secret


def required_credentials(role: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The role's keys, where every role must have its own (the server's roles, the check)."""
    keys = role_credentials(role, env)
    if keys is None:
        raise SettingsError(f"{key_variables(role)[0]} is not set: every role needs its own keys")
    return keys


@dataclass(frozen=True)
class Areas:
    inbox: str
    raw: str
    bootstrap: str = BOOTSTRAP_PREFIX
    outbox: str = OUTBOX_PREFIX
    partners: tuple[str, ...] = ()  # submitter ids with a role of their own (PARTNER_ROLES)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Areas:
        intake = load_intake_settings(env)
        env = os.environ if env is None else env
        return cls(inbox=intake.inbox_prefix, raw=intake.raw_prefix, partners=partners_of(env))

    def prefix(self, area: str) -> str:
        """An area's key prefix; `outbox:<id>` is one partner's folder of the outbox."""
        name, _, partner = area.partition(":")
        return getattr(self, name) + (f"{partner}/" if partner else "")

    @property
    def roles(self) -> list[str]:
        return [*GRANTS, *(PARTNER_ROLE + p for p in self.partners)]

    @property
    def probed(self) -> tuple[str, ...]:
        """The areas the check probes: the platform's, and each partner's outbox folder."""
        return AREAS + tuple(f"outbox:{p}" for p in self.partners)


def partners_of(env: Mapping[str, str]) -> tuple[str, ...]:
    partners = tuple(p.strip() for p in env.get("PARTNER_ROLES", "").split(",") if p.strip())
    bad = [p for p in partners if not PARTNER_ID.fullmatch(p)]
    if bad:
        raise SettingsError(f"PARTNER_ROLES: {bad[0]!r} is not a submitter id (letters, digits, '-', '_')")
    variables = [key_variables(PARTNER_ROLE + p)[0] for p in partners]
    if len(set(variables)) != len(variables):
        raise SettingsError("PARTNER_ROLES names a partner twice (or two whose key variables are the same)")
    return partners


def grants(role: str, areas: Areas) -> dict[str, list[str]]:
    """verb -> key prefixes, for one role."""
    return {verb: [areas.prefix(area) for area in names] for verb, names in grants_of(role).items()}


def policy_name(role: str) -> str:
    return f"health-{role}"


def seaweedfs_identities(env: Mapping[str, str], bucket: str, areas: Areas) -> dict:
    """SeaweedFS's `-s3.config` document: the root identity, and per role an identity with the
    role's IAM policy attached. Attached policies are enforced action by action (s3:DeleteObject
    apart from s3:PutObject), where SeaweedFS's own "Write:bucket/prefix" actions are not."""
    identities = [
        {
            "name": "root",
            "credentials": [{"accessKey": env["MINIO_ACCESS_KEY"], "secretKey": env["MINIO_SECRET_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    policies = []
    for role in areas.roles:
        keys = required_credentials(role, env)
        identity = {"name": role, "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}], "actions": []}
        if grants_of(role):
            identity["policyNames"] = [policy_name(role)]
            policies.append({"name": policy_name(role), "content": json.dumps(iam_policy(role, bucket, areas))})
        identities.append(identity)
    return {"identities": identities, "policies": policies}


def iam_policy(role: str, bucket: str, areas: Areas) -> dict:
    """A role's grants as an AWS-style IAM policy, as MinIO, SeaweedFS and AWS take it."""
    statements = []
    for verb, prefixes in grants(role, areas).items():
        statement: dict[str, Any] = {"Effect": "Allow", "Action": list(ACTIONS[verb])}
        if verb in BUCKET_VERBS:
            statement["Resource"] = [f"arn:aws:s3:::{bucket}"]
            statement["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}}
        else:
            statement["Resource"] = [f"arn:aws:s3:::{bucket}/{prefix}*" for prefix in prefixes]
        statements.append(statement)
        if verb == "DeleteVersions":
            statements.append(
                {
                    "Effect": "Allow",
                    "Action": ["s3:DeleteObject"],
                    "Resource": statement["Resource"],
                    "Condition": VERSIONED_DELETE,
                }
            )
    return {"Version": "2012-10-17", "Statement": statements}


def minio_script(bucket: str, areas: Areas) -> str:
    """A POSIX sh script for MinIO's image: one policy and one user per role, via `mc admin`.

    Keys are read from the environment when it runs; the script itself holds no secret.
    Idempotent: policies are replaced, users re-added with the same keys, attachments kept.
    """
    lines = [
        "#!/bin/sh",
        "# Generated by `python -m workers.roles render`: object-store roles as MinIO users + policies.",
        "set -eu",
        'mc alias set platform "${MINIO_ENDPOINT:-http://minio:9000}" \\',
        '  "$MINIO_ACCESS_KEY" "$MINIO_SECRET_KEY" >/dev/null',
    ]
    for role in areas.roles:
        access, secret = key_variables(role)
        policy = policy_name(role)
        lines.append(f'mc admin user add platform "${access}" "${secret}" >/dev/null')
        if not grants_of(role):
            # A user without a policy may do nothing, which is this role's whole grant.
            lines.append(f"echo 'role {role}: no policy (no grants)'")
            continue
        document = json.dumps(iam_policy(role, bucket, areas), separators=(",", ":"))
        lines += [
            f"printf '%s' {shlex.quote(document)} > /tmp/{policy}.json",
            f"mc admin policy create platform {policy} /tmp/{policy}.json >/dev/null",
            # Attaching an already attached policy is an error in mc; the state wanted holds then.
            f'mc admin policy attach platform {policy} --user "${access}" >/dev/null 2>&1 || '
            f'mc admin user info platform "${access}" | grep -q "{policy}"',
            f"echo 'role {role}: policy {policy} attached'",
        ]
    return "\n".join(lines) + "\n"


def render(directory: Path, env: Mapping[str, str]) -> list[Path]:
    """Write identities.json (owner-only: it holds secrets) and minio-roles.sh into `directory`."""
    settings = load_settings(env)
    areas = Areas.from_env(env)
    directory.mkdir(parents=True, exist_ok=True)
    identities = directory / "identities.json"
    fd = os.open(identities, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(seaweedfs_identities(env, settings.bucket, areas), out)
    script = directory / "minio-roles.sh"
    script.write_text(minio_script(settings.bucket, areas))
    script.chmod(0o755)
    return [identities, script]


# --- check: every role against the live server ------------------------------------------------


# One probe per verb, plus Overwrite (a put over an existing key) and Bypass (deleting a locked
# version with x-amz-bypass-governance-retention, which no verb grants: refused to every role).
PROBES = (
    "List",
    "ListUploads",
    "ListVersions",
    "Read",
    "ReadVersions",
    "ReadRetention",
    "Write",
    "Overwrite",
    "Retain",
    "Delete",
    "DeleteVersions",
    "Bypass",
)
CHECK_FOLDER = "_role-check/"
FIXTURE_BODY = b"workers.roles check fixture\n"
# The check's locks are GOVERNANCE, which its root keys may lift, never COMPLIANCE; and short.
RETAIN_FOR = timedelta(days=1)
# Another run's objects this old are a killed run's leftovers: removed along with this run's.
LEFTOVER_AGE = timedelta(hours=1)

# Where a server authorizes a probe's calls by other actions than AWS does: server (the first word
# of its Server header) -> verb -> the verbs whose grants allow that verb's probe there.
# SeaweedFS 4.48 enforces every action of ACTIONS on its own (tried with one identity per action).
# MinIO, from its source (RELEASE.2025-09-07T16-13-09Z; no MinIO server runs here): a GET or HEAD
# naming a VersionId is authorized as s3:GetObject (cmd/object-handlers.go), and s3:ListBucketVersions
# falls back to s3:ListBucket (cmd/auth-handler.go, "s3:ListBucket permission is same as ...").
AUTHORIZED_AS: dict[str, dict[str, tuple[str, ...]]] = {
    "SeaweedFS": {},
    "MinIO": {"ReadVersions": ("Read",), "ListVersions": ("ListVersions", "List")},
}


class CheckError(RuntimeError):
    """The check could not run, or could not remove its objects; the message says what and where."""


@dataclass(frozen=True)
class Probe:
    verb: str  # one of PROBES
    area: str
    allowed: bool
    outcome: str  # "allowed" | "refused" | an unexpected error code (or one per call, joined by "+")
    note: str = ""  # how the server in use decides it, where that is not by the verb's own actions


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str


def deciding_verbs(probe_name: str, server: str = "") -> tuple[str, ...]:
    """The verbs whose grants allow a probe on `server`: its own (an Overwrite is a Write's) by default."""
    verb = "Write" if probe_name == "Overwrite" else probe_name
    return AUTHORIZED_AS.get(server, {}).get(verb, (verb,))


def expected(role: str, probe_name: str, area: str, server: str = "") -> bool:
    """Whether a grant covers the area: its own, or one inside it (`outbox` covers `outbox:acme`)."""
    granted = [g for verb in deciding_verbs(probe_name, server) for g in grants_of(role).get(verb, ())]
    return any(area == g or area.startswith(g + ":") for g in granted)


def probe(role: str, probe_name: str, area: str, outcome: str, server: str) -> Probe:
    verbs = deciding_verbs(probe_name, server)
    note = "" if verbs == deciding_verbs(probe_name) else f"{server} authorizes it as {' or '.join(verbs)}"
    return Probe(probe_name, area, expected(role, probe_name, area, server), outcome, note)


def attempt(*operations: Callable[[], object]) -> str:
    """Run S3 calls: "allowed" or "refused" when all answered alike, else what each answered."""
    outcomes = []
    for operation in operations:
        try:
            operation()
            outcomes.append("allowed")
        except ClientError as exc:
            code = error_code(exc)
            outcomes.append("refused" if code in ("AccessDenied", "403") else code)
    return outcomes[0] if len(set(outcomes)) == 1 else "+".join(outcomes)


def retain_until() -> datetime:
    return datetime.now(UTC) + RETAIN_FOR


def versions_under(s3: S3Client, bucket: str, prefix: str) -> list[dict]:
    """Every version and delete marker under `prefix`."""
    found: list[dict] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        found += [dict(v) for v in page.get("Versions", ())] + [dict(m) for m in page.get("DeleteMarkers", ())]
    return found


class Scratch:
    """The check's own objects, under `<area>_role-check/<run>/`, made and removed with the root keys:
    the probes read, overwrite and delete nothing else."""

    def __init__(self, root: S3Client, bucket: str):
        self.root, self.bucket = root, bucket
        self.run = uuid.uuid4().hex[:12]
        self.prefixes: dict[str, None] = {}  # the area prefixes it made folders in, in order
        self.made = 0

    def folder(self, prefix: str) -> str:
        """This run's folder in an area, noted for remove()."""
        self.prefixes.setdefault(prefix)
        return f"{prefix}{CHECK_FOLDER}{self.run}/"

    def key(self, prefix: str) -> str:
        self.made += 1
        return f"{self.folder(prefix)}{self.made}"

    def fixture(self, prefix: str, locked: bool = False) -> Version:
        """An object of the check's; `locked`: GOVERNANCE retention and a legal hold (off) to read back."""
        key = self.key(prefix)
        lock: dict[str, Any] = {}
        if locked:
            lock = {
                "ObjectLockMode": "GOVERNANCE",
                "ObjectLockRetainUntilDate": retain_until(),
                "ObjectLockLegalHoldStatus": "OFF",
            }
        response = self.root.put_object(Bucket=self.bucket, Key=key, Body=FIXTURE_BODY, **lock)
        return Version(key, response["VersionId"])

    def remove(self) -> None:
        """Every version and delete marker under this run's folders, its locks bypassed, and a killed
        run's leftovers (older than LEFTOVER_AGE) where they can go: another run's objects never fail
        the check. CheckError when any of this run's stays."""
        stale = datetime.now(UTC) - LEFTOVER_AGE
        failed: list[str] = []
        for prefix in self.prefixes:
            ours = f"{prefix}{CHECK_FOLDER}{self.run}/"
            try:
                found = versions_under(self.root, self.bucket, f"{prefix}{CHECK_FOLDER}")
            except (ClientError, BotoCoreError) as exc:
                raise CheckError(f"could not list {ours} to remove the check's objects: {exc}") from exc
            for entry in found:
                mine = entry["Key"].startswith(ours)
                if not mine and entry["LastModified"] > stale:
                    continue  # another run's, perhaps running now
                try:
                    self.root.delete_object(
                        Bucket=self.bucket,
                        Key=entry["Key"],
                        VersionId=entry["VersionId"],
                        BypassGovernanceRetention=True,
                    )
                except (ClientError, BotoCoreError) as exc:
                    if mine:
                        code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                        failed.append(f"{entry['Key']} version {entry['VersionId']} ({code})")
        if failed:
            raise CheckError(
                f"{len(failed)} object version(s) of the check's stay in bucket {self.bucket}, e.g. "
                f"{'; '.join(failed[:3])}: remove them with the root keys (GOVERNANCE: bypass the retention)"
            )


def probe_area(s3: S3Client, scratch: Scratch, prefix: str) -> dict[str, str]:
    """Every probe of one role in one area, on the check's own objects only."""
    bucket = scratch.bucket
    locked, loose, doomed = scratch.fixture(prefix, locked=True), scratch.fixture(prefix), scratch.fixture(prefix)
    created, folder = scratch.key(prefix), scratch.folder(prefix)
    key, version = locked.key, locked.version_id
    outcomes = {
        "List": attempt(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)),
        "ListUploads": attempt(lambda: s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix, MaxUploads=1)),
        "ListVersions": attempt(lambda: s3.list_object_versions(Bucket=bucket, Prefix=folder, MaxKeys=1)),
        "Read": attempt(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read()),
        "ReadVersions": attempt(lambda: s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()),
        "ReadRetention": attempt(
            lambda: s3.get_object_retention(Bucket=bucket, Key=key, VersionId=version),
            lambda: s3.get_object_legal_hold(Bucket=bucket, Key=key, VersionId=version),
        ),
        "Write": attempt(lambda: s3.put_object(Bucket=bucket, Key=created, Body=b"created by the role check\n")),
    }
    # Over its own new object where it could make one, else over the check's fixture.
    target = created if outcomes["Write"] == "allowed" else key
    outcomes["Overwrite"] = attempt(lambda: s3.put_object(Bucket=bucket, Key=target, Body=b"overwritten\n"))
    retention: Any = {"Mode": "GOVERNANCE", "RetainUntilDate": retain_until()}
    outcomes["Retain"] = attempt(
        lambda: s3.put_object_retention(Bucket=bucket, Key=loose.key, VersionId=loose.version_id, Retention=retention),
        lambda: s3.put_object_legal_hold(
            Bucket=bucket, Key=loose.key, VersionId=loose.version_id, LegalHold={"Status": "OFF"}
        ),
    )
    outcomes["Delete"] = attempt(lambda: s3.delete_object(Bucket=bucket, Key=key))
    outcomes["DeleteVersions"] = attempt(
        lambda: s3.delete_object(Bucket=bucket, Key=doomed.key, VersionId=doomed.version_id)
    )
    outcomes["Bypass"] = attempt(
        lambda: s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    )
    return {name: outcomes[name] for name in PROBES}


def server_of(root: S3Client, bucket: str) -> str:
    """The store's product (the first word of its Server header); CheckError unless the bucket has
    Object Lock, which the Retain, ReadRetention and Bypass probes need, as the raw zone does."""
    try:
        answer: Any = root.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "ObjectLockConfigurationNotFoundError":
            raise
        answer = {"ResponseMetadata": exc.response.get("ResponseMetadata", {})}
    if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise CheckError(
            f"bucket {bucket} has no Object Lock, so its raw zone is not write-once and the lock probes "
            "cannot run: `python -m workers.store ensure-bucket` names the one-time migration"
        )
    header = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("server", "")
    return header.split()[0] if header else "unknown"


def check(env: Mapping[str, str], client_for) -> Iterator[tuple[str, Probe]]:
    """For every role, every probe in every area, as each is made: allowed exactly where GRANTS says
    (as the server in use authorizes it, AUTHORIZED_AS). The process's own keys (MINIO_ACCESS_KEY)
    must be the root's: they make and remove the probes' objects, all of them, even on a failure."""
    settings = load_settings(env)
    areas = Areas.from_env(env)
    root = client_for(settings, (settings.s3_access_key, settings.s3_secret_key))
    # Run again by `docker-compose up -d`, the check may start before the store's name resolves.
    server = when_store_answers(lambda: server_of(root, settings.bucket), settings.endpoint_host)
    scratch = Scratch(root, settings.bucket)
    try:
        for role in areas.roles:
            s3 = client_for(settings, required_credentials(role, env))
            for area in areas.probed:
                for name, outcome in probe_area(s3, scratch, areas.prefix(area)).items():
                    yield role, probe(role, name, area, outcome, server)
    finally:
        scratch.remove()


def stopped(exc: BaseException) -> str:
    """Why the check stopped, and what it met first when its clean-up then failed too."""
    said = str(exc) if isinstance(exc, CheckError) else f"the check stopped: {exc}"
    first = exc.__context__
    if isinstance(exc, CheckError) and isinstance(first, (CheckError, ClientError, BotoCoreError)):
        said += f" (after the check stopped: {first})"
    return said


def _client_for(settings: Settings, keys: tuple[str, str]):
    return make_s3_client(replace(settings, s3_access_key=keys[0], s3_secret_key=keys[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.roles", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="write identities.json and minio-roles.sh").add_argument("directory", type=Path)
    commands.add_parser("check", help="probe every role against the object store")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            for path in render(args.directory, os.environ):
                print(f"wrote {path}")
            return 0
        wrong = 0
        try:
            for role, p in check(os.environ, _client_for):
                wanted = "allowed" if p.allowed else "refused"
                ok = p.outcome == wanted
                wrong += not ok
                why = f"; {p.note}" if p.note else ""
                print(
                    f"{'ok ' if ok else 'BAD'} {role:<10} {p.verb:<14} {p.area:<9} {p.outcome} (expected {wanted}{why})"
                )
        except (CheckError, ClientError, BotoCoreError) as exc:
            print(f"roles: {stopped(exc)}", file=sys.stderr)
            return 1
        except StoreUnreachable as exc:
            print(f"roles: {exc}", file=sys.stderr)
            return 2
        finally:
            if wrong:
                print(f"roles: {wrong} probe(s) not as granted", file=sys.stderr)
        return 1 if wrong else 0
    except SettingsError as exc:
        print(f"roles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
