"""Object-store roles: which worker may do what, and where, declared once.

In Docker mode every worker container gets the credentials of its own role only (the launcher
picks them), the Dagster containers hold the read-only `discovery` role for the inbox sensor,
and the S3 server is given the same table: as SeaweedFS identities read when it starts, or as
MinIO users with IAM policies applied by `mc` (`minio-roles.sh`). The root credentials
(MINIO_ACCESS_KEY / MINIO_SECRET_KEY in .env) stay with the object store and its set-up steps.

    python -m workers.roles render DIR   # DIR/identities.json and DIR/minio-roles.sh
    python -m workers.roles check        # each role does its work and is refused outside it

Verbs: List = list keys and multipart uploads under an area; Read = get/head an object;
Write = put, copy into, complete an upload, delete. `check` changes nothing: it lists, heads a
missing key and deletes a missing key, and expects AccessDenied wherever no grant says otherwise.
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

from botocore.exceptions import ClientError

from workers.catalogue import WORKERS
from workers.settings import Settings, SettingsError, load_intake_settings, load_settings
from workers.store import NOT_FOUND, error_code, make_s3_client

BOOTSTRAP_PREFIX = "bootstrap/"
VERBS = ("List", "Read", "Write")

# role -> verb -> areas. An area is a key prefix, named here and resolved from the settings.
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "discovery": {"List": ("inbox",), "Read": ("inbox",)},
    "registrar": {"List": ("inbox",), "Read": ("inbox", "raw"), "Write": ("raw",)},
    # Write on the inbox is for removing what was staged (ETag-guarded deletes).
    "stager": {"List": ("inbox", "raw"), "Read": ("inbox", "raw"), "Write": ("inbox", "raw")},
    "heartbeat": {"Write": ("bootstrap",)},
    "auditor": {"List": ("raw",), "Read": ("raw",)},
}
# The Dagster processes themselves (the inbox sensor) run under this role.
ORCHESTRATOR_ROLE = "discovery"


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


def seaweedfs_identities(env: Mapping[str, str], bucket: str, areas: Areas) -> dict:
    """SeaweedFS's `-s3.config` document: the root identity and one per role ("Verb:bucket/prefix*")."""
    identities = [
        {
            "name": "root",
            "credentials": [{"accessKey": env["MINIO_ACCESS_KEY"], "secretKey": env["MINIO_SECRET_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    for role in GRANTS:
        keys = required_credentials(role, env)
        identities.append(
            {
                "name": role,
                "credentials": [{"accessKey": keys[0], "secretKey": keys[1]}],
                "actions": [
                    f"{verb}:{bucket}/{prefix}*"
                    for verb, prefixes in grants(role, areas).items()
                    for prefix in prefixes
                ],
            }
        )
    return {"identities": identities}


def iam_policy(role: str, bucket: str, areas: Areas) -> dict:
    """The same grants as an AWS-style IAM policy, as MinIO (and AWS) take it."""
    statements = []
    for verb, prefixes in grants(role, areas).items():
        objects = [f"arn:aws:s3:::{bucket}/{prefix}*" for prefix in prefixes]
        if verb == "List":
            statements.append(
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                    "Resource": [f"arn:aws:s3:::{bucket}"],
                    "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}},
                }
            )
        elif verb == "Read":
            statements.append({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": objects})
        else:
            actions = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
            statements.append({"Effect": "Allow", "Action": actions, "Resource": objects})
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
        policy = json.dumps(iam_policy(role, bucket, areas), separators=(",", ":"))
        lines += [
            f"printf '%s' {shlex.quote(policy)} > /tmp/health-{role}.json",
            f"mc admin policy create platform health-{role} /tmp/health-{role}.json >/dev/null",
            f'mc admin user add platform "${access}" "${secret}" >/dev/null',
            # Attaching an already attached policy is an error in mc; the state wanted holds then.
            f'mc admin policy attach platform health-{role} --user "${access}" >/dev/null 2>&1 || '
            f'mc admin user info platform "${access}" | grep -q "health-{role}"',
            f"echo 'role {role}: policy health-{role} attached'",
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


@dataclass(frozen=True)
class Probe:
    verb: str
    area: str
    allowed: bool
    outcome: str  # "allowed" | "refused" | an unexpected error code


def probe(s3, bucket: str, verb: str, prefix: str) -> str:
    """Try one operation of `verb` under `prefix`: "allowed", "refused", or the error code."""
    key = f"{prefix}_role-check/{uuid.uuid4().hex}"
    try:
        if verb == "List":
            s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        elif verb == "Read":
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                # A missing key answers 404 only to whoever may read there.
                if error_code(exc) not in NOT_FOUND:
                    raise
        else:
            # Deleting a key that does not exist: allowed only to a writer, and it changes nothing,
            # so the check never leaves an object in the inbox (the sensor) or the raw zone.
            s3.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = error_code(exc)
        return "refused" if code in ("AccessDenied", "403") else code
    return "allowed"


def check(env: Mapping[str, str], client_for) -> dict[str, list[Probe]]:
    """For every role, every verb on every area: allowed exactly where GRANTS says."""
    settings = load_settings(env)
    areas = Areas.from_env(env)
    report = {}
    for role in GRANTS:
        s3 = client_for(settings, required_credentials(role, env))
        report[role] = [
            Probe(verb, area, area in GRANTS[role].get(verb, ()), probe(s3, settings.bucket, verb, areas.prefix(area)))
            for verb in VERBS
            for area in ("inbox", "raw", "bootstrap")
        ]
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
                expected = "allowed" if p.allowed else "refused"
                ok = p.outcome == expected
                wrong += not ok
                print(f"{'ok ' if ok else 'BAD'} {role:<10} {p.verb:<5} {p.area:<9} {p.outcome} (expected {expected})")
        if wrong:
            print(f"roles: {wrong} probe(s) not as granted", file=sys.stderr)
        return 1 if wrong else 0
    except SettingsError as exc:
        print(f"roles: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
