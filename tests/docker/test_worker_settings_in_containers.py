"""Every intake setting of the launching process's environment reaches the worker containers and
changes what they do (the scenario of tests/orchestrator/test_worker_settings.py, in containers)."""

import pytest

from tests.intake_scenarios import assert_every_setting_took_effect, run_with_non_default_settings


@pytest.mark.usefixtures("images", "docker_mode")
def test_every_intake_setting_reaches_the_worker_containers(synced_layouts, s3_server, monkeypatch):
    assert_every_setting_took_effect(run_with_non_default_settings(monkeypatch, synced_layouts, s3_server.client()))
