"""Object-store roles: which worker may do what, and where, declared once.

In Docker mode every worker container gets the credentials of its own role only (the launcher
picks them), the Dagster daemon holds the list-only `sensor` role for the inbox sensor, and the
S3 server is given the same table as IAM policy documents: inside SeaweedFS's `-s3.config`
(`policies` + each identity's `policyNames`, read when it starts) or as MinIO users and policies
applied by `mc` (`minio-roles.sh`). The root credentials (MINIO_ACCESS_KEY / MINIO_SECRET_KEY in
.env) stay with the object store and its set-up steps.

    python -m workers.roles render DIR   # DIR/identities.json and DIR/minio-roles.sh
    python -m workers.roles check        # each role does its work and is refused outside it

Verbs, as IAM actions: List = s3:ListBucket with an s3:prefix condition; ListUploads =
s3:ListBucketMultipartUploads, likewise; Read = s3:GetObject (get and head); Write = s3:PutObject
(put, copy into, multipart upload, which it covers) and s3:AbortMultipartUpload; Delete =
s3:DeleteObject. No grant can say "create only": a Write may also overwrite, which is why every
write into raw/ carries If-None-Match. `check` (run with the root keys) touches only objects of its
own under `<area>_role-check/`, and removes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from workers.catalogue import WORKERS
from workers.settings import Settings, SettingsError, load_intake_settings, load_settings
from workers.store import S3Client, error_code, make_s3_client

BOOTSTRAP_PREFIX = "bootstrap/"
VERBS = ("List", "ListUploads", "Read", "Write", "Delete")
AREAS = ("inbox", "raw", "bootstrap")

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
    "registrar": {"List": ("inbox",), "Read": ("inbox", "raw"), "Write": ("raw",)},
    # Delete in the inbox removes what was staged (ETag-guarded); it never writes there.
    "stager": {"Read": ("inbox", "raw"), "Write": ("raw",), "Delete": ("inbox",)},
    "heartbeat": {"Write": ("bootstrap",)},
    "auditor": {"Read": ("raw",)},
}
# The Dagster daemon itself (the inbox sensor) runs under this role.
ORCHESTRATOR_ROLE = "sensor"
# The IAM actions each verb stands for; List and ListUploads are bucket-level, with a prefix condition.
ACTIONS = {
    "List": ("s3:ListBucket",),
    "ListUploads": ("s3:ListBucketMultipartUploads",),
    "Read": ("s3:GetObject",),
    "Write": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "Delete": ("s3:DeleteObject",),
}
BUCKET_VERBS = ("List", "ListUploads")


def role_of(worker: str) -> str | None:
    """The object-store role a worker runs under (workers.catalogue); None for a worker not listed."""
    entry = WORKERS.get(worker)
    return entry.s3_role if entry else None


def key_variables(role: str) -> tuple[str, str]:
    """The environment variables holding a role's access key and secret key."""
    return f"MINIO_{role.upper()}_ACCESS_KEY", f"MINIO_{role.upper()}_SECRET_KEY"


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Areas:
        intake = load_intake_settings(env)
        return cls(inbox=intake.inbox_prefix, raw=intake.raw_prefix)

    def prefix(self, area: str) -> str:
        return getattr(self, area)


def grants(role: str, areas: Areas) -> dict[str, list[str]]:
    """verb -> key prefixes, for one role."""
    return {verb: [areas.prefix(area) for area in names] for verb, names in GRANTS[role].items()}


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
    for role in GRANTS:
        keys = required_credentials(role, env)
        identity = {"name": role, "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}], "actions": []}
        if GRANTS[role]:
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
    for role in GRANTS:
        access, secret = key_variables(role)
        policy = policy_name(role)
        lines.append(f'mc admin user add platform "${access}" "${secret}" >/dev/null')
        if not GRANTS[role]:
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


PROBES = ("List", "ListUploads", "Read", "Write", "Overwrite", "Delete")
CHECK_FOLDER = "_role-check/"
FIXTURE_BODY = b"workers.roles check fixture\n"


@dataclass(frozen=True)
class Probe:
    verb: str  # one of PROBES
    area: str
    allowed: bool
    outcome: str  # "allowed" | "refused" | an unexpected error code


def expected(role: str, probe_name: str, area: str) -> bool:
    # An overwrite is a put: no IAM action tells it apart from a create.
    verb = "Write" if probe_name == "Overwrite" else probe_name
    return area in GRANTS[role].get(verb, ())


def attempt(operation) -> str:
    """Run one S3 call: "allowed", "refused", or the unexpected error code."""
    try:
        operation()
    except ClientError as exc:
        code = error_code(exc)
        return "refused" if code in ("AccessDenied", "403") else code
    return "allowed"


class Scratch:
    """The check's own objects, under `<area>_role-check/<run>/`, made and removed with the root keys:
    the probes read, overwrite and delete nothing else."""

    def __init__(self, root, bucket: str):
        self.root, self.bucket = root, bucket
        self.run = uuid.uuid4().hex[:12]
        self.keys: list[str] = []

    def key(self, prefix: str) -> str:
        key = f"{prefix}{CHECK_FOLDER}{self.run}/{len(self.keys)}"
        self.keys.append(key)
        return key

    def fixture(self, prefix: str) -> str:
        key = self.key(prefix)
        self.root.put_object(Bucket=self.bucket, Key=key, Body=FIXTURE_BODY)
        return key

    def remove(self) -> None:
        for key in self.keys:
            self.root.delete_object(Bucket=self.bucket, Key=key)


def probe_area(s3: S3Client, scratch: Scratch, prefix: str) -> dict[str, str]:
    """Every probe of one role in one area, on the check's own objects only."""
    bucket = scratch.bucket
    fixture, created = scratch.fixture(prefix), scratch.key(prefix)
    outcomes = {
        "List": attempt(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)),
        "ListUploads": attempt(lambda: s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix, MaxUploads=1)),
        "Read": attempt(lambda: s3.get_object(Bucket=bucket, Key=fixture)["Body"].read()),
        "Write": attempt(lambda: s3.put_object(Bucket=bucket, Key=created, Body=b"created by the role check\n")),
    }
    # Over its own new object where it could make one, else over the check's fixture.
    target = created if outcomes["Write"] == "allowed" else fixture
    outcomes["Overwrite"] = attempt(lambda: s3.put_object(Bucket=bucket, Key=target, Body=b"overwritten\n"))
    outcomes["Delete"] = attempt(lambda: s3.delete_object(Bucket=bucket, Key=fixture))
    return outcomes


def check(env: Mapping[str, str], client_for) -> dict[str, list[Probe]]:
    """For every role, every probe in every area: allowed exactly where GRANTS says. The process's
    own keys (MINIO_ACCESS_KEY) must be the root's: they make and remove the probes' objects."""
    settings = load_settings(env)
    areas = Areas.from_env(env)
    scratch = Scratch(client_for(settings, (settings.s3_access_key, settings.s3_secret_key)), settings.bucket)
    report = {}
    try:
        for role in GRANTS:
            s3 = client_for(settings, required_credentials(role, env))
            report[role] = [
                Probe(name, area, expected(role, name, area), outcome)
                for area in AREAS
                for name, outcome in probe_area(s3, scratch, areas.prefix(area)).items()
            ]
    finally:
        scratch.remove()
    return report


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
        for role, probes in check(os.environ, _client_for).items():
            for p in probes:
                wanted = "allowed" if p.allowed else "refused"
                ok = p.outcome == wanted
                wrong += not ok
                print(f"{'ok ' if ok else 'BAD'} {role:<10} {p.verb:<11} {p.area:<9} {p.outcome} (expected {wanted})")
        if wrong:
            print(f"roles: {wrong} probe(s) not as granted", file=sys.stderr)
        return 1 if wrong else 0
    except SettingsError as exc:
        print(f"roles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
