"""Heartbeat worker: proves the metadata DB and the object store are reachable and writable.

Inserts a `phase0_ok` row into bootstrap_heartbeat and uploads bootstrap/hello.txt.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from workers.db import BootstrapHeartbeat, metadata_engine
from workers.runtime import Metadata, run_worker
from workers.settings import Settings
from workers.store import S3Client, make_s3_client

MESSAGE = "phase0_ok"
HELLO_KEY = "bootstrap/hello.txt"


def beat(*, engine: Engine, s3: S3Client, bucket: str) -> Metadata:
    """Write the row and the object; the row commits only once the object is stored."""
    with Session(engine) as session, session.begin():
        row = BootstrapHeartbeat(message=MESSAGE)
        session.add(row)
        session.flush()
        body = f"hello from the health intake platform, heartbeat {row.id}\n".encode()
        digest = hashlib.sha256(body).digest()
        s3.put_object(
            Bucket=bucket,
            Key=HELLO_KEY,
            Body=body,
            ContentType="text/plain",
            ChecksumSHA256=base64.b64encode(digest).decode(),
        )
        row_id = row.id
    return {
        "row_id": row_id,
        "object_key": HELLO_KEY,
        "size_bytes": len(body),
        "sha256": digest.hex(),
        "db_dialect": engine.dialect.name,
    }


def work(settings: Settings, params: Mapping[str, Any]) -> Metadata:
    with metadata_engine(settings.metadata_db_url) as engine:
        result = beat(engine=engine, s3=make_s3_client(settings), bucket=settings.bucket)
    return {**result, "bucket": settings.bucket, "endpoint_host": settings.endpoint_host}


def main(argv: list[str] | None = None) -> int:
    return run_worker("heartbeat", work, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
