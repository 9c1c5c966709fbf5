"""Phase 1 through worker containers: the layout sync (in the classifier image), then the intake job
(classifier, registrar, stager images) registering and staging a drop, all via PipesDockerClient.

Containers join the host's network (the docker_mode fixture) to reach the host's Postgres and S3 server on 127.0.0.1.
"""

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from orchestrator.defs.dagster_internals import RUN_LABEL
from orchestrator.defs.intake.assets import sync_layout_registry
from orchestrator.defs.intake.jobs import register_submission_from_group_job
from orchestrator.defs.resources import CONTAINER_LABEL, WorkerLauncher
from tests.helpers import drop_files
from tests.services import REPO

pytestmark = pytest.mark.usefixtures("docker_mode")
SEED_RUN_CONFIG = yaml.safe_load((REPO / "examples/register_drop_001.yaml").read_text())
GROUP = "inbox/acme/unknown/drop-001/"


def test_the_layout_sync_runs_in_the_classifier_image(images, engine, platform_env):
    result = dg.materialize([sync_layout_registry], resources={"launcher": WorkerLauncher()})
    (materialization,) = result.asset_materializations_for_node("sync_layout_registry")
    assert materialization.metadata["added"].value >= 5


def test_a_drop_is_registered_and_staged_by_worker_containers(images, engine, synced_layouts, s3_server):
    drop_files(s3_server.client(), synced_layouts.bucket, GROUP, {"medical_claims.csv": b"member,amount\n1,2\n"})

    result = register_submission_from_group_job.execute_in_process(
        run_config=SEED_RUN_CONFIG, resources={"launcher": WorkerLauncher()}, raise_on_error=False
    )

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    db = sa.create_engine(synced_layouts.metadata_db_url)
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM submission")).scalars().all() == ["staged"]
    db.dispose()
    raw = s3_server.client().list_objects_v2(Bucket=synced_layouts.bucket, Prefix="raw/acme/")["Contents"]
    assert any(obj["Key"].endswith("/medical_claims.csv") for obj in raw)
    left = engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={result.run_id}"})
    assert not left, [(c.short_id, c.labels.get(CONTAINER_LABEL), c.status) for c in left]
