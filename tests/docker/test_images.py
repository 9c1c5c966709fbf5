"""The images: each builds, each worker image explains itself, none runs as root."""

import pytest

from orchestrator.defs.dagster_internals import wait_for_exit
from tests.containers import WORKERS, image_name


def run(engine, image: str, *args: str, **kwargs) -> str:
    container = engine.containers.run(image, list(args), detach=True, **kwargs)
    try:
        wait_for_exit(container)
        return container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


def test_every_image_builds(images, engine):
    for name in (*WORKERS, "dagster"):
        image = engine.images.get(image_name(name))
        print(f"{image_name(name)}: {image.attrs['Size'] / 1e6:.0f} MB, built in {images.get(name, 0):.0f} s")


@pytest.mark.parametrize("worker", WORKERS)
def test_each_worker_image_explains_its_arguments(images, engine, worker):
    output = run(engine, image_name(worker), "--help")
    assert f"usage: python -m workers.{worker}" in output


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_do_not_run_as_root(images, engine, worker):
    assert run(engine, image_name(worker), "-u", entrypoint="id").strip() != "0"


def test_the_classifier_image_also_runs_the_layout_sync(images, engine):
    output = run(engine, image_name("classifier"), "--help", entrypoint=["python", "-m", "workers.layouts"])
    assert "usage: python -m workers.layouts" in output


def test_the_dagster_image_loads_the_code_location(images, engine):
    # An instance of its own in /tmp: the image's dagster.yaml wants dagster_postgres.
    command = ("dagster", "definitions", "validate", "-w", "/app/workspace.yaml")
    output = run(engine, image_name("dagster"), *command, environment={"DAGSTER_HOME": "/tmp"})
    assert "health_intake" in output
