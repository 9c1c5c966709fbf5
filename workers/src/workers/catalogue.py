"""The worker catalogue: what each worker is, declared once.

The launcher (both modes), the object-store roles, the image build targets, docker-compose.yml
and the tests all read this table; a new worker is one entry here plus its module. A worker
receives exactly the settings named here, in every launch mode: nothing else of the launching
process's environment reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers import faults

# Every worker opens the metadata DB and the object store (heartbeat and layouts included: each
# reports where it wrote), so each reads the connection settings.
CONNECTION = (
    "METADATA_DB_URL",
    "DB_CONNECT_ATTEMPTS",
    "DB_CONNECT_BACKOFF_SECONDS",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_BUCKET",
    "MINIO_REGION",
)
# The reliability suite's crash and pause points (workers.faults): forwarded when set, which only the tests do.
TEST_HOOKS = (faults.ENV, faults.PAUSE_ENV, faults.PAUSE_FLAG_ENV)
# The Object Lock of raw copies and manifests (workers.settings.RetentionSettings): read by the
# two workers that write into the raw zone.
RETENTION = ("RAW_RETENTION_MODE", "RAW_RETENTION_DAYS", "RAW_LEGAL_HOLD")


@dataclass(frozen=True)
class Worker:
    """One worker: `python -m workers.<name>`, run in `image`'s container in Docker mode."""

    name: str
    image: str
    s3_role: str  # workers.roles.GRANTS
    db_role: str  # workers.db_roles.DB_GRANTS
    intake_settings: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"workers.{self.name}"

    @property
    def settings(self) -> tuple[str, ...]:
        """Every environment variable the worker reads."""
        return CONNECTION + self.intake_settings + TEST_HOOKS


# Workers without an image of their own run in another worker's image (same package): the layout
# registry sync ships with the classifier that reads the registry, the raw zone audit with the
# stager that writes the raw zone.
WORKERS: dict[str, Worker] = {
    worker.name: worker
    for worker in (
        Worker("heartbeat", image="heartbeat", s3_role="heartbeat", db_role="heartbeat"),
        Worker(
            "classifier",
            image="classifier",
            s3_role="classifier",
            db_role="classifier",
            intake_settings=("INBOX_PREFIX", "GROUP_BY_DEPTH", "MARKER_FILE", "CLASSIFIER_IMPL"),
        ),
        # Run by hand without a file list, the registrar classifies the group itself.
        Worker(
            "registrar",
            image="registrar",
            s3_role="registrar",
            db_role="registrar",
            intake_settings=(
                "INBOX_PREFIX",
                "GROUP_BY_DEPTH",
                "MARKER_FILE",
                "RAW_PREFIX",
                "CLASSIFIER_IMPL",
                *RETENTION,
            ),
        ),
        Worker(
            "stager",
            image="stager",
            s3_role="stager",
            db_role="stager",
            intake_settings=("RAW_PREFIX", "STAGER_DELETE_INBOX", *RETENTION),
        ),
        Worker("layouts", image="classifier", s3_role="layouts", db_role="layouts"),
        Worker("audit", image="stager", s3_role="auditor", db_role="auditor", intake_settings=("STUCK_AFTER_MINUTES",)),
    )
}
# The images built (images/worker.Dockerfile has one stage per image, docker-compose.yml one service).
IMAGES = tuple(dict.fromkeys(worker.image for worker in WORKERS.values()))
# Operator command lines beside the workers, run by hand or by compose's set-up steps.
OPERATOR_CLIS = ("workers.roles", "workers.store", "workers.tables")


def worker(name: str) -> Worker:
    try:
        return WORKERS[name]
    except KeyError:
        raise LookupError(f"no worker named {name!r} in the catalogue (workers.catalogue)") from None
