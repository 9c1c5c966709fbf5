"""Several registrar processes racing for one group make exactly one submission."""

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from workers.db import make_engine

from tests.conftest import drop_files, migrate, platform_environment
from workers import layouts

GROUP = "inbox/acme/unknown/race/"
RACERS = 6


@pytest.fixture
def platform(db_url, s3_server, bucket) -> dict[str, str]:
    migrate(db_url)
    engine = make_engine(db_url)
    layouts.sync(engine, layouts.parse_definitions(layouts.packaged_definitions())[1])
    engine.dispose()
    return platform_environment(db_url, s3_server, bucket)


def test_racing_registrars_make_exactly_one_submission(platform, s3_server, ledger):
    files = {f"medical_claims_{i}.csv": os.urandom(50_000) for i in range(8)}
    drop_files(s3_server.client(), platform["MINIO_BUCKET"], GROUP, files)

    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "workers.registrar", "--grouping-key", GROUP],
            env={**os.environ, **platform},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(RACERS)
    ]
    outcomes = [racer.communicate(timeout=180) + (racer.returncode,) for racer in racers]
    ledger.update(concurrent_registrations=RACERS)

    assert [code for _, _, code in outcomes] == [0] * RACERS, [err for _, err, _ in outcomes]
    assert sum('"created": true' in out for out, _, _ in outcomes) == 1
    assert len({json.loads(out)["submission_id"] for out, _, _ in outcomes}) == 1
    engine = sa.create_engine(platform["METADATA_DB_URL"])
    with engine.connect() as conn:
        counts = [
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("submission", "submission_file")
        ]
    engine.dispose()
    assert counts == [1, len(files)]
