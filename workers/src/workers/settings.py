"""Connection settings, read from the environment only.

The orchestrator passes parameters through Pipes extras and connection settings through the
environment, so secrets never travel in extras, tags or the event log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


DEFAULTS = {
    "METADATA_DB_URL": "sqlite:///.local/metadata.db",
    "MINIO_ENDPOINT": "http://127.0.0.1:9000",
    "MINIO_ACCESS_KEY": "minioadmin",
    "MINIO_SECRET_KEY": "minioadmin",
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

    @property
    def endpoint_host(self) -> str:
        return urlsplit(self.s3_endpoint).netloc

    @property
    def db_dialect(self) -> str:
        return make_url(self.metadata_db_url).get_backend_name()


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
            "METADATA_DB_URL is not a database URL (expected e.g. sqlite:///path or "
            "postgresql+psycopg2://user@host/db)"
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
        parts.port
    except ValueError:
        raise SettingsError("MINIO_ENDPOINT has a malformed port") from None
    return value.rstrip("/")


def _bucket(env: Mapping[str, str]) -> str:
    value = _required(env, "MINIO_BUCKET")
    if not (3 <= len(value) <= 63) or not all(c.islower() or c.isdigit() or c in "-." for c in value):
        raise SettingsError("MINIO_BUCKET is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')")
    return value
