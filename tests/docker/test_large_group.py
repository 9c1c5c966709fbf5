"""A group of 10,000 files registers through worker containers. The file list travels from the
classifier to the registrar as Pipes extras; in a container the Pipes context is a file written
into it (orchestrator/defs/dagster_internals.py), because as one environment variable (dagster-docker's
default) a list this long outgrows what Linux lets a process hold in a variable (128 KiB)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.resources import WorkerLauncher

FILES = 10_000
GROUP = "inbox/acme/unknown/drop-large/"


def drop_many(s3, bucket: str) -> None:
    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"{GROUP}part-{i:05d}-of-a-long-partner-file-name.csv", Body=b"a,b\n1,2\n")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(FILES)))
    s3.put_object(Bucket=bucket, Key=GROUP + "_SUCCESS", Body=b"")


@pytest.mark.usefixtures("images", "docker_mode")
def test_a_group_of_ten_thousand_files_registers_through_containers(synced_layouts, s3_server):
    drop_many(s3_server.client(connections=16), synced_layouts.bucket)
    run_config = {"ops": {"register_submission_from_group": {"config": {"grouping_key": GROUP}}}}

    result = register_submission_from_group_job.execute_in_process(
        run_config=run_config,
        resources={"launcher": WorkerLauncher()},
        op_selection=["register_submission_from_group"],
        raise_on_error=False,
    )

    assert result.success, [event.message for event in result.all_events if event.is_failure]
    engine = sa.create_engine(synced_layouts.metadata_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM submission_file")).scalar_one() == FILES
    engine.dispose()
