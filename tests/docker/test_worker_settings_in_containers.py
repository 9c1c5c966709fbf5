"""Every intake setting of the launching process's environment reaches the worker containers and
changes what they do (the scenario of tests/orchestrator/test_worker_settings.py, in containers)."""

import pytest

from tests.intake_scenarios import GROUP, NON_DEFAULT_INTAKE, run_with_non_default_settings


@pytest.mark.usefixtures("images", "docker_mode")
def test_every_intake_setting_reaches_the_worker_containers(synced_layouts, s3_server, monkeypatch):
    outcome = run_with_non_default_settings(monkeypatch, synced_layouts, s3_server.client())

    assert outcome.succeeded, outcome.failures
    assert outcome.classifier_reported == NON_DEFAULT_INTAKE["CLASSIFIER_IMPL"]
    assert outcome.registered_files == [GROUP + "medical_claims.csv"]
    assert [key.rsplit("/", 1)[1] for key in outcome.raw_keys] == ["_manifest.generated.json", "medical_claims.csv"]
    assert outcome.inbox_keys == [GROUP + "READY.flag", GROUP + "medical_claims.csv"]
