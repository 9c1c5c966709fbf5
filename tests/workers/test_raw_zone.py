"""The raw zone's lock (workers.raw_zone) against the real S3 server, with every key the platform holds."""

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.helpers import BUCKET, ROLE_KEYS, ROOT
from workers import raw_zone
from workers.raw_zone import Lock, whole_second_up
from workers.settings import RetentionSettings
from workers.store import CLIENT_CONFIG

RAW_KEY = "raw/acme/claims/sub-lock-test/part-000.csv"


def client(server, keys: tuple[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
        region_name="us-east-1",
        config=CLIENT_CONFIG,
    )


def test_a_lock_is_dated_from_the_write_rounded_up_to_the_second():
    written = datetime(2026, 12, 6, 1, 2, 3, 400_000, tzinfo=UTC)
    lock = raw_zone.wanted(RetentionSettings("COMPLIANCE", 10, False), written)
    assert lock == Lock("COMPLIANCE", datetime(2026, 12, 16, 1, 2, 5, tzinfo=UTC), False)
    assert whole_second_up(written.replace(microsecond=0)) == written.replace(microsecond=0)


@pytest.mark.parametrize(
    ("have", "covers"),
    [
        (Lock("COMPLIANCE", datetime(2030, 1, 1, tzinfo=UTC)), True),
        (Lock("COMPLIANCE", datetime(2030, 1, 2, tzinfo=UTC), legal_hold=True), True),
        (Lock("GOVERNANCE", datetime(2031, 1, 1, tzinfo=UTC)), False),  # a weaker mode
        (Lock("COMPLIANCE", datetime(2029, 12, 31, tzinfo=UTC)), False),  # ends earlier
    ],
)
def test_a_lock_covers_another_only_when_at_least_as_strong(have, covers):
    assert have.covers(Lock("COMPLIANCE", datetime(2030, 1, 1, tzinfo=UTC))) is covers


def test_a_legal_hold_wanted_is_covered_only_by_a_hold():
    wanted = Lock("GOVERNANCE", datetime(2030, 1, 1, tzinfo=UTC), legal_hold=True)
    assert not Lock("COMPLIANCE", datetime(2031, 1, 1, tzinfo=UTC)).covers(wanted)


@pytest.fixture
def locked_version(role_server) -> tuple[str, bytes]:
    """One raw version written with the root keys and locked as the stager locks a copy."""
    root = client(role_server, ROOT)
    body = b"staged bytes\n"
    version = root.put_object(Bucket=BUCKET, Key=RAW_KEY, Body=body)["VersionId"]
    written = root.head_object(Bucket=BUCKET, Key=RAW_KEY, VersionId=version)["LastModified"]
    lock = raw_zone.wanted(RetentionSettings("COMPLIANCE", 1, False), written)
    assert raw_zone.protect(root, BUCKET, RAW_KEY, version, lock, fresh=True) == lock
    return version, body


@pytest.mark.parametrize("keys", ["root", *ROLE_KEYS])
def test_no_key_the_platform_holds_can_remove_replace_or_shorten_a_locked_version(role_server, locked_version, keys):
    version, body = locked_version
    s3 = client(role_server, ROOT if keys == "root" else ROLE_KEYS[keys])
    attempts = {
        "delete the version": lambda: s3.delete_object(Bucket=BUCKET, Key=RAW_KEY, VersionId=version),
        "delete it bypassing governance": lambda: s3.delete_object(
            Bucket=BUCKET, Key=RAW_KEY, VersionId=version, BypassGovernanceRetention=True
        ),
        "shorten its retention": lambda: s3.put_object_retention(
            Bucket=BUCKET,
            Key=RAW_KEY,
            VersionId=version,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(minutes=1)},
            BypassGovernanceRetention=True,
        ),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ClientError) as refused:
            attempt()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403), what

    # Whatever else a key may write at the key, the locked version reads back unchanged.
    try:
        s3.put_object(Bucket=BUCKET, Key=RAW_KEY, Body=b"replaced")
    except ClientError:
        pass  # most roles may not write there at all
    root = client(role_server, ROOT)
    assert root.get_object(Bucket=BUCKET, Key=RAW_KEY, VersionId=version)["Body"].read() == body
    assert raw_zone.lock_of(root, BUCKET, RAW_KEY, version).mode == "COMPLIANCE"


def test_protect_keeps_a_stronger_lock_and_adds_only_what_is_missing(role_server, locked_version):
    version, _ = locked_version
    root = client(role_server, ROOT)
    have = raw_zone.lock_of(root, BUCKET, RAW_KEY, version)
    weaker = Lock("GOVERNANCE", have.retain_until - timedelta(hours=1))

    assert raw_zone.protect(root, BUCKET, RAW_KEY, version, weaker) == have
    held = raw_zone.protect(root, BUCKET, RAW_KEY, version, Lock("GOVERNANCE", have.retain_until, legal_hold=True))
    assert held == Lock("COMPLIANCE", have.retain_until, legal_hold=True)
    assert raw_zone.lock_of(root, BUCKET, RAW_KEY, version) == held
