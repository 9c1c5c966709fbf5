"""Intake scenarios shared by the subprocess-mode and Docker-mode tests (one scenario, two launchers)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.resources import WorkerLauncher
from tests.helpers import drop_files
from workers.settings import Settings

# Every intake setting a worker reads, each away from its default so that a worker that did not
# receive it would behave visibly differently (README "Intake settings").
NON_DEFAULT_INTAKE = {
    "INBOX_PREFIX": "partners/",
    "GROUP_BY_DEPTH": "4",
    "MARKER_FILE": "READY.flag",
    "RAW_PREFIX": "vault/",
    "STAGER_DELETE_INBOX": "false",
    "CLASSIFIER_IMPL": "workers.classifier:submitter_filename",
    "RAW_RETENTION_MODE": "GOVERNANCE",
    "RAW_RETENTION_DAYS": "7",
    "RAW_LEGAL_HOLD": "true",
}
GROUP = "partners/acme/unknown/2026-11/drop-9/"


@dataclass(frozen=True)
class IntakeOutcome:
    succeeded: bool
    failures: list[str]
    classifier_reported: str | None
    registered_files: list[str]
    raw_keys: list[str]
    inbox_keys: list[str]
    raw_locks: dict[str, tuple[str, int, bool]]  # raw file name -> (mode, whole days kept, legal hold)


def run_with_non_default_settings(monkeypatch, settings: Settings, s3) -> IntakeOutcome:
    """A drop laid out for NON_DEFAULT_INTAKE, registered and staged with those settings set in the
    launching process's environment only."""
    for name, value in NON_DEFAULT_INTAKE.items():
        monkeypatch.setenv(name, value)
    drop_files(s3, settings.bucket, GROUP, {"medical_claims.csv": b"member,amount\n1,2\n"}, marker="READY.flag")
    run_config = {"ops": {"register_submission_from_group": {"config": {"grouping_key": GROUP}}}}
    result = register_submission_from_group_job.execute_in_process(
        run_config=run_config, resources={"launcher": WorkerLauncher()}, raise_on_error=False
    )
    return IntakeOutcome(
        succeeded=result.success,
        failures=[event.message or "" for event in result.all_events if event.is_failure],
        classifier_reported=reported(result, "classifier"),
        registered_files=registered_files(settings.metadata_db_url),
        raw_keys=keys(s3, settings.bucket, "vault/"),
        inbox_keys=keys(s3, settings.bucket, "partners/"),
        raw_locks=raw_locks(s3, settings.bucket, "vault/"),
    )


def reported(result: dg.ExecuteInProcessResult, name: str):
    for event in result.all_events:
        if event.is_successful_output and event.step_key == "register_submission_from_group":
            value = event.event_specific_data.metadata.get(name)
            return value.value if value is not None else None
    return None


def registered_files(db_url: str) -> list[str]:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT inbox_key FROM submission_file ORDER BY inbox_key")).scalars().all()
    engine.dispose()
    return names


def keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def raw_locks(s3, bucket: str, prefix: str) -> dict[str, tuple[str, int, bool]]:
    locks = {}
    for key in keys(s3, bucket, prefix):
        head = s3.head_object(Bucket=bucket, Key=key)
        retention = s3.get_object_retention(Bucket=bucket, Key=key, VersionId=head["VersionId"])["Retention"]
        hold = s3.get_object_legal_hold(Bucket=bucket, Key=key, VersionId=head["VersionId"])["LegalHold"]["Status"]
        kept = (retention["RetainUntilDate"] - head["LastModified"]).days
        locks[key.rsplit("/", 1)[1]] = (retention["Mode"], kept, hold == "ON")
    return locks


def assert_every_setting_took_effect(outcome: IntakeOutcome) -> None:
    assert outcome.succeeded, outcome.failures
    assert outcome.classifier_reported == NON_DEFAULT_INTAKE["CLASSIFIER_IMPL"]
    # GROUP_BY_DEPTH=4 and INBOX_PREFIX made the group; MARKER_FILE kept READY.flag out of the data.
    assert outcome.registered_files == [GROUP + "medical_claims.csv"]
    # RAW_PREFIX: staged under vault/; STAGER_DELETE_INBOX=false: the inbox copies stay.
    assert [key.rsplit("/", 1)[1] for key in outcome.raw_keys] == ["_manifest.generated.json", "medical_claims.csv"]
    assert outcome.inbox_keys == [GROUP + "READY.flag", GROUP + "medical_claims.csv"]
    # RAW_RETENTION_MODE/DAYS and RAW_LEGAL_HOLD: the registrar's manifest and the stager's copy.
    locked = ("GOVERNANCE", 7, True)
    assert outcome.raw_locks == {"_manifest.generated.json": locked, "medical_claims.csv": locked}
