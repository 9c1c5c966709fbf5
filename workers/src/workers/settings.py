"""Connection settings, read from the environment only.

The orchestrator passes parameters through Pipes extras and connection settings through the
environment, so secrets never travel in extras, tags or the event log.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


# No credential has a default: dev mode's keys are in its own env file (dev_up.sh writes
# .local/dev.env), Docker mode's in .env; a process without them fails naming the variable.
DEFAULTS = {
    "METADATA_DB_URL": "sqlite:///.local/metadata.db",
    "MINIO_ENDPOINT": "http://127.0.0.1:9000",
    "MINIO_BUCKET": "health-raw",
    "MINIO_REGION": "us-east-1",
}


@dataclass(frozen=True)
class Settings:
    metadata_db_url: str
    s3_endpoint: str
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    bucket: str
    region: str

    def __repr__(self) -> str:
        # The metadata DB URL can carry a password: shown masked, as SQLAlchemy renders it.
        return (
            f"Settings(metadata_db_url={masked_db_url(self.metadata_db_url)!r}, s3_endpoint={self.s3_endpoint!r}, "
            f"bucket={self.bucket!r}, region={self.region!r})"
        )

    @property
    def endpoint_host(self) -> str:
        return urlsplit(self.s3_endpoint).netloc

    @property
    def db_dialect(self) -> str:
        return make_url(self.metadata_db_url).get_backend_name()


def masked_db_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        metadata_db_url=_db_url(env),
        s3_endpoint=_endpoint(env),
        s3_access_key=_required(env, "MINIO_ACCESS_KEY"),
        s3_secret_key=_required(env, "MINIO_SECRET_KEY"),
        bucket=_bucket(env),
        region=_required(env, "MINIO_REGION"),
    )


def load_metadata_db_url(env: Mapping[str, str] | None = None) -> str:
    """METADATA_DB_URL alone, for what needs only the database (migrations): no object-store keys."""
    return _db_url(os.environ if env is None else env)


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, DEFAULTS.get(name, "")).strip()
    if not value:
        raise SettingsError(f"{name} is empty or unset")
    return value


def _db_url(env: Mapping[str, str]) -> str:
    value = _required(env, "METADATA_DB_URL")
    try:
        url = make_url(value)
    except ArgumentError:
        raise SettingsError(
            "METADATA_DB_URL is not a database URL (expected e.g. sqlite:///path or postgresql+psycopg2://user@host/db)"
        ) from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise SettingsError("METADATA_DB_URL must name a sqlite or postgresql database")
    return value


def _endpoint(env: Mapping[str, str]) -> str:
    value = _required(env, "MINIO_ENDPOINT")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("MINIO_ENDPOINT must be an http(s) URL such as http://127.0.0.1:9000")
    try:
        _ = parts.port  # urlsplit parses lazily: a bad port raises only when read
    except ValueError:
        raise SettingsError("MINIO_ENDPOINT has a malformed port") from None
    return value.rstrip("/")


def _bucket(env: Mapping[str, str]) -> str:
    value = _required(env, "MINIO_BUCKET")
    if not (3 <= len(value) <= 63) or not all(c.islower() or c.isdigit() or c in "-." for c in value):
        raise SettingsError("MINIO_BUCKET is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')")
    return value


INTAKE_DEFAULTS = {
    "INBOX_PREFIX": "inbox/",
    "GROUP_BY_DEPTH": "3",
    "MARKER_FILE": "_SUCCESS",
    "QUIESCENCE_MINUTES": "10",
    "ABANDONED_UPLOAD_HOURS": "24",
    "RAW_PREFIX": "raw/",
    "STAGER_DELETE_INBOX": "true",
    "CLASSIFIER_IMPL": "submitter_filename",
}


@dataclass(frozen=True)
class IntakeSettings:
    """How drops are laid out and judged complete; not secret, safe to report."""

    inbox_prefix: str
    group_by_depth: int
    marker_file: str
    quiescence_minutes: float
    abandoned_upload_hours: float
    raw_prefix: str
    stager_delete_inbox: bool
    classifier_impl: str


def _reader(env: Mapping[str, str] | None, defaults: Mapping[str, str]) -> Callable[[str], str]:
    """name -> its value from `env` (the process environment by default), or its default; stripped."""
    env = os.environ if env is None else env
    return lambda name: env.get(name, defaults[name]).strip()


def load_intake_settings(env: Mapping[str, str] | None = None) -> IntakeSettings:
    get = _reader(env, INTAKE_DEFAULTS)
    return IntakeSettings(
        inbox_prefix=_prefix(get("INBOX_PREFIX"), "INBOX_PREFIX"),
        group_by_depth=int(_number(get("GROUP_BY_DEPTH"), "GROUP_BY_DEPTH", minimum=1, integer=True)),
        marker_file=_filename(get("MARKER_FILE"), "MARKER_FILE"),
        quiescence_minutes=_number(get("QUIESCENCE_MINUTES"), "QUIESCENCE_MINUTES", minimum=0),
        abandoned_upload_hours=_number(get("ABANDONED_UPLOAD_HOURS"), "ABANDONED_UPLOAD_HOURS", minimum=0),
        raw_prefix=_prefix(get("RAW_PREFIX"), "RAW_PREFIX"),
        stager_delete_inbox=_flag(get("STAGER_DELETE_INBOX"), "STAGER_DELETE_INBOX"),
        classifier_impl=get("CLASSIFIER_IMPL") or INTAKE_DEFAULTS["CLASSIFIER_IMPL"],
    )


DiscoveryMode = Literal["listing", "events"]
DISCOVERY_MODES: tuple[DiscoveryMode, ...] = get_args(DiscoveryMode)
EVENTS_DEFAULTS = {
    "DISCOVERY_MODE": "listing",
    "NATS_URL": "nats://127.0.0.1:4222",
    "EVENTS_STREAM": "INBOX_EVENTS",
    "EVENTS_SUBJECT": "health-intake.inbox",
    "EVENTS_RETENTION_HOURS": "168",
    "RECONCILE_MINUTES": "15",
}
# A stream or subject name NATS accepts everywhere (no wildcards, spaces or dots at the ends).
NATS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NATS_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class EventSettings:
    """How the inbox sensor learns of new objects (README "Discovery: bucket events or listing").

    listing: every tick lists the whole inbox. events: every tick reads the bucket's put and delete
    events from a NATS JetStream stream and lists only the groups they touch, with a full listing
    every RECONCILE_MINUTES (and at any gap in the stream) as the backstop. NATS_URL can carry
    credentials: it is never logged (see `nats_server`)."""

    mode: DiscoveryMode
    nats_url: str
    stream: str
    subject: str
    retention_hours: float
    reconcile_minutes: float

    def __repr__(self) -> str:
        return (
            f"EventSettings(mode={self.mode!r}, nats_server={self.nats_server!r}, stream={self.stream!r}, "
            f"subject={self.subject!r}, reconcile_minutes={self.reconcile_minutes:g})"
        )

    @property
    def nats_server(self) -> str:
        """The NATS server's host and port, without any credentials in NATS_URL."""
        parts = urlsplit(self.nats_url)
        return f"{parts.hostname}:{parts.port or 4222}"


def load_event_settings(env: Mapping[str, str] | None = None) -> EventSettings:
    get = _reader(env, EVENTS_DEFAULTS)
    mode = get("DISCOVERY_MODE").lower()
    if mode not in DISCOVERY_MODES:
        raise SettingsError(f"DISCOVERY_MODE must be one of {', '.join(DISCOVERY_MODES)}")
    url = get("NATS_URL")
    if not url.startswith(("nats://", "tls://")):
        raise SettingsError("NATS_URL must be a nats:// or tls:// address, such as nats://127.0.0.1:4222")
    stream, subject = get("EVENTS_STREAM"), get("EVENTS_SUBJECT")
    if not NATS_NAME.fullmatch(stream):
        raise SettingsError("EVENTS_STREAM must be letters, digits, '-' or '_' (at most 64)")
    if not NATS_SUBJECT.fullmatch(subject):
        raise SettingsError("EVENTS_SUBJECT must be dot-separated tokens of letters, digits, '-' or '_'")
    return EventSettings(
        mode=mode,  # type: ignore[arg-type]  # checked against DISCOVERY_MODES just above
        nats_url=url,
        stream=stream,
        subject=subject,
        retention_hours=_number(get("EVENTS_RETENTION_HOURS"), "EVENTS_RETENTION_HOURS", minimum=1),
        reconcile_minutes=_number(get("RECONCILE_MINUTES"), "RECONCILE_MINUTES", minimum=1),
    )


DB_CONNECT_DEFAULTS = {
    "DB_CONNECT_ATTEMPTS": "5",
    "DB_CONNECT_BACKOFF_SECONDS": "0.5",
}


@dataclass(frozen=True)
class DbConnectSettings:
    """How patiently a metadata-DB connection is opened: attempts, and the first wait between them."""

    attempts: int
    backoff_seconds: float


def load_db_connect_settings(env: Mapping[str, str] | None = None) -> DbConnectSettings:
    get = _reader(env, DB_CONNECT_DEFAULTS)
    return DbConnectSettings(
        attempts=int(_number(get("DB_CONNECT_ATTEMPTS"), "DB_CONNECT_ATTEMPTS", minimum=1, integer=True)),
        backoff_seconds=_number(get("DB_CONNECT_BACKOFF_SECONDS"), "DB_CONNECT_BACKOFF_SECONDS", minimum=0),
    )


RECOVERY_DEFAULTS = {
    "INTAKE_STEP_RETRIES": "2",
    "INTAKE_STEP_RETRY_DELAY_SECONDS": "10",
    "INTAKE_RUN_RETRIES": "2",
    "SWEEP_INTERVAL_SECONDS": "60",
    "SWEEP_ROUNDS": "3",
    "SWEEP_BACKOFF_SECONDS": "120",
    "STAGING_GRACE_MINUTES": "10",
    "STUCK_AFTER_MINUTES": "60",
}


@dataclass(frozen=True)
class RecoverySettings:
    """How a drop converges after failures (orchestrator side; docs/reliability.md "Convergence").

    A failed step is retried in its run after a growing delay (step retries); a run that failed
    or lost its process is run again by Dagster (run retries); what is still unstaged after
    that, the sweeper asks for again, up to `sweep_rounds` times with a doubling back-off, and
    then shows as needing attention. A drop unstaged for `stuck_after_minutes` fails the
    `no_stuck_drops` check.
    """

    step_retries: int
    step_retry_delay_seconds: float
    run_retries: int
    sweep_interval_seconds: int
    sweep_rounds: int
    sweep_backoff_seconds: float
    staging_grace_minutes: float
    stuck_after_minutes: float


def load_recovery_settings(env: Mapping[str, str] | None = None) -> RecoverySettings:
    get = _reader(env, RECOVERY_DEFAULTS)
    whole = lambda name, minimum: int(_number(get(name), name, minimum=minimum, integer=True))  # noqa: E731
    return RecoverySettings(
        step_retries=whole("INTAKE_STEP_RETRIES", 0),
        step_retry_delay_seconds=_number(get("INTAKE_STEP_RETRY_DELAY_SECONDS"), "INTAKE_STEP_RETRY_DELAY_SECONDS", 0),
        run_retries=whole("INTAKE_RUN_RETRIES", 0),
        sweep_interval_seconds=whole("SWEEP_INTERVAL_SECONDS", 1),
        sweep_rounds=whole("SWEEP_ROUNDS", 0),
        sweep_backoff_seconds=_number(get("SWEEP_BACKOFF_SECONDS"), "SWEEP_BACKOFF_SECONDS", minimum=0),
        staging_grace_minutes=_number(get("STAGING_GRACE_MINUTES"), "STAGING_GRACE_MINUTES", minimum=0),
        stuck_after_minutes=_number(get("STUCK_AFTER_MINUTES"), "STUCK_AFTER_MINUTES", minimum=0),
    )


RetentionMode = Literal["GOVERNANCE", "COMPLIANCE"]
RETENTION_MODES: tuple[RetentionMode, ...] = get_args(RetentionMode)
RETENTION_DEFAULTS = {
    "RAW_RETENTION_MODE": "COMPLIANCE",
    "RAW_RETENTION_DAYS": "3653",
    "RAW_LEGAL_HOLD": "false",
}


@dataclass(frozen=True)
class RetentionSettings:
    """The Object Lock every raw copy and manifest is written under (README "The raw zone").

    COMPLIANCE: no key, the store's root keys included, can delete or shorten it before `days`
    have passed since the version was written. GOVERNANCE: the same, except for a key granted
    s3:BypassGovernanceRetention (no platform role is). Ten years (3653 days) is the longest
    records floor a health plan commonly meets (Medicare Advantage, Medicaid managed care); a
    retention can be lengthened later, never shortened. A legal hold, when set, holds each
    version until it is lifted, whatever the date.
    """

    mode: RetentionMode
    days: int
    legal_hold: bool


def load_retention_settings(env: Mapping[str, str] | None = None) -> RetentionSettings:
    get = _reader(env, RETENTION_DEFAULTS)
    mode = get("RAW_RETENTION_MODE").upper()
    if mode not in RETENTION_MODES:
        raise SettingsError(f"RAW_RETENTION_MODE must be one of {', '.join(RETENTION_MODES)}")
    return RetentionSettings(
        mode=mode,  # type: ignore[arg-type]  # checked against RETENTION_MODES just above
        days=int(_number(get("RAW_RETENTION_DAYS"), "RAW_RETENTION_DAYS", minimum=1, integer=True)),
        legal_hold=_flag(get("RAW_LEGAL_HOLD"), "RAW_LEGAL_HOLD"),
    )


def _prefix(value: str, name: str) -> str:
    if not value or value.startswith("/") or not value.endswith("/") or "//" in value:
        raise SettingsError(f"{name} must be a key prefix ending in '/', such as inbox/")
    return value


def _number(value: str, name: str, minimum: float, integer: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if not math.isfinite(number) or number < minimum or (integer and not number.is_integer()):
        raise SettingsError(f"{name} must be {'an integer ' if integer else ''}>= {minimum:g}")
    return number


def _filename(value: str, name: str) -> str:
    if not value or "/" in value:
        raise SettingsError(f"{name} must be a plain file name such as _SUCCESS")
    return value


def _flag(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false")
    return lowered in ("true", "1", "yes")


LaunchMode = Literal["subprocess", "docker", "k8s"]
LAUNCH_MODES: tuple[LaunchMode, ...] = get_args(LaunchMode)
LAUNCH_DEFAULTS = {
    "WORKER_LAUNCH_MODE": "subprocess",
    "WORKER_PACKAGE": "workers",
    "WORKER_IMAGE_PREFIX": "health-intake",
    "WORKER_IMAGE_TAG": "latest",
    "WORKER_DOCKER_NETWORK": "",
    "WORKER_CPUS": "1",
    "WORKER_MEMORY_MB": "1024",
    # Kubernetes mode (README "Kubernetes mode"): where worker pods run, which Secrets hold each
    # role's keys (K8S_SECRET_PREFIX-<role>), how to reach the API server (empty: in-cluster, or
    # the default kubeconfig outside a cluster), how often to poll a pod, how long it may run.
    "K8S_NAMESPACE": "health-intake",
    "K8S_SECRET_PREFIX": "health-intake-role",
    "K8S_KUBECONFIG": "",
    "K8S_POLL_SECONDS": "2",
    "K8S_POD_TIMEOUT_SECONDS": "14400",
}


@dataclass(frozen=True)
class LaunchSettings:
    """How the orchestrator starts workers. Read from the deployment's environment only: never from
    run config, which anyone who can open the UI could set."""

    mode: LaunchMode
    worker_package: str
    image_prefix: str
    image_tag: str
    docker_network: str
    cpus: float
    memory_mb: int
    k8s_namespace: str = LAUNCH_DEFAULTS["K8S_NAMESPACE"]
    k8s_secret_prefix: str = LAUNCH_DEFAULTS["K8S_SECRET_PREFIX"]
    k8s_kubeconfig: str = ""
    k8s_poll_seconds: float = 2.0
    k8s_pod_timeout_seconds: float = 14400.0

    def image_for(self, image: str) -> str:
        return f"{self.image_prefix}-{image}:{self.image_tag}"


def load_launch_settings(env: Mapping[str, str] | None = None) -> LaunchSettings:
    get = _reader(env, LAUNCH_DEFAULTS)
    return LaunchSettings(
        mode=_launch_mode(get("WORKER_LAUNCH_MODE")),
        worker_package=_module_name(get("WORKER_PACKAGE"), "WORKER_PACKAGE"),
        image_prefix=_image_part(get("WORKER_IMAGE_PREFIX"), "WORKER_IMAGE_PREFIX"),
        image_tag=_image_part(get("WORKER_IMAGE_TAG"), "WORKER_IMAGE_TAG"),
        docker_network=get("WORKER_DOCKER_NETWORK"),
        cpus=_number(get("WORKER_CPUS"), "WORKER_CPUS", minimum=0.01),
        memory_mb=int(_number(get("WORKER_MEMORY_MB"), "WORKER_MEMORY_MB", minimum=64, integer=True)),
        k8s_namespace=_k8s_name(get("K8S_NAMESPACE"), "K8S_NAMESPACE"),
        # A Secret's name is the prefix, a dash and a role name of at most 10 characters.
        k8s_secret_prefix=_k8s_name(get("K8S_SECRET_PREFIX"), "K8S_SECRET_PREFIX", longest=52),
        k8s_kubeconfig=get("K8S_KUBECONFIG"),
        k8s_poll_seconds=_number(get("K8S_POLL_SECONDS"), "K8S_POLL_SECONDS", minimum=0.1),
        k8s_pod_timeout_seconds=_number(get("K8S_POD_TIMEOUT_SECONDS"), "K8S_POD_TIMEOUT_SECONDS", minimum=1),
    )


def _k8s_name(value: str, name: str, longest: int = 63) -> str:
    """A Kubernetes object name that is also a DNS label (RFC 1123): a namespace, a Secret's prefix."""
    if len(value) > longest or not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", value):
        raise SettingsError(f"{name} must be a Kubernetes name: at most {longest} of a-z, 0-9, '-' (not at an end)")
    return value


def _launch_mode(value: str) -> LaunchMode:
    if value not in LAUNCH_MODES:
        raise SettingsError(f"WORKER_LAUNCH_MODE must be one of {LAUNCH_MODES}, not {value!r}")
    return value  # type: ignore[return-value]


def _module_name(value: str, name: str) -> str:
    if not value or not all(part.isidentifier() for part in value.split(".")):
        raise SettingsError(f"{name} must be a Python package name such as workers")
    return value


def _image_part(value: str, name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]*", value):
        raise SettingsError(f"{name} must be part of an image reference, such as health-intake or latest")
    return value
