"""docker-compose.yml, .env.example, images/dagster.yaml and the launcher agree on names.

Static checks: they need no container engine, only the files (and docker-compose for the last).
"""

import re
import shutil
import subprocess

import yaml

from tests.containers import compose_env_file, skip_without_engine
from tests.services import REPO
from workers.catalogue import CONNECTION, IMAGES, WORKERS
from workers.settings import load_launch_settings

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DEFAULTS = load_launch_settings({"WORKER_LAUNCH_MODE": "docker"})
EXPECTED_SERVICES = {
    "dagster_webserver",
    "dagster_viewer",
    "dagster_daemon",
    "ui_auth_render",
    "ui_proxy",
    "engine_proxy",
    "dagster_postgres",
    "metadata_postgres",
    "minio",
    "minio_init",
    "migrations",
    "db_roles",
    "roles_render",
    "roles_apply",
    "roles_check",
    "store_check",
    "events_init",
    "nats",
    "seaweedfs",
    *IMAGES,
}


def with_defaults(value: str) -> str:
    """${NAME:-default} -> default, as compose would resolve it with nothing set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def env_example_names() -> set[str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}


def test_compose_has_the_platforms_services():
    assert set(SERVICES) == EXPECTED_SERVICES


def test_each_image_service_builds_the_stage_of_its_name_and_the_image_the_launcher_runs():
    for image in IMAGES:
        assert SERVICES[image]["build"]["target"] == image
        assert with_defaults(SERVICES[image]["image"]) == DEFAULTS.image_for(image)


def test_the_worker_dockerfile_has_a_stage_per_image_in_the_catalogue():
    stages = re.findall(r"^FROM \S+ AS (\w+)$", (REPO / "images/worker.Dockerfile").read_text(), re.MULTILINE)
    assert set(stages) - {"build", "runtime"} == set(IMAGES)


def test_make_images_builds_every_image_in_the_catalogue():
    (line,) = [line for line in (REPO / "Makefile").read_text().splitlines() if " build " in line]
    assert set(line.split(" build ")[1].split()) == {*IMAGES, "dagster_webserver"}


def test_every_worker_the_orchestrator_launches_has_an_image():
    launched = {
        name
        for path in (REPO / "orchestrator/src").rglob("*.py")
        for name in re.findall(r'worker="(\w+)"', path.read_text())
    }
    assert launched == set(WORKERS)


def test_dagster_services_launch_workers_into_the_compose_network():
    network = COMPOSE["networks"]["default"]["name"]
    for service in ("dagster_webserver", "dagster_daemon"):
        env = SERVICES[service]["environment"]
        assert env["WORKER_LAUNCH_MODE"] == "docker"
        assert env["WORKER_DOCKER_NETWORK"] == network


def test_only_the_engine_proxy_mounts_the_engine_socket_and_only_the_daemon_reaches_the_proxy():
    def mounts_socket(service: dict) -> bool:
        return any(str(volume).endswith(":/var/run/docker.sock") for volume in service.get("volumes", []))

    assert [name for name, service in SERVICES.items() if mounts_socket(service)] == ["engine_proxy"]
    on_engine_network = [name for name, service in SERVICES.items() if "engine" in service.get("networks", [])]
    assert sorted(on_engine_network) == ["dagster_daemon", "engine_proxy"]
    assert COMPOSE["networks"]["engine"]["internal"] is True


def test_the_dagster_services_run_as_the_images_non_root_user():
    for name in ("dagster_webserver", "dagster_viewer", "dagster_daemon"):
        assert "user" not in SERVICES[name], name


def test_no_webserver_publishes_a_port_only_the_proxy_does_on_localhost():
    publishing_ui = {name for name, service in SERVICES.items() if "DAGSTER_" in str(service.get("ports", ""))}
    assert publishing_ui == {"ui_proxy"}
    assert all(port.startswith("127.0.0.1:") for port in SERVICES["ui_proxy"]["ports"])
    assert "--read-only" in SERVICES["dagster_viewer"]["command"]


def test_the_daemon_which_launches_the_workers_gets_every_connection_variable_and_the_set_up_steps_theirs():
    assert set(CONNECTION) <= set(SERVICES["dagster_daemon"]["environment"])
    assert "METADATA_DB_URL" in SERVICES["migrations"]["environment"]
    assert {"MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} <= set(SERVICES["minio_init"]["environment"])


def test_the_webserver_holds_no_object_store_key_and_no_metadata_db_login():
    env = SERVICES["dagster_webserver"]["environment"]
    assert (env["METADATA_DB_URL"], env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"]) == ("", "", "")
    assert not [name for name in env if name.startswith("MINIO_") and name.endswith("_KEY") and env[name]]
    assert not [name for name in env if name.startswith("METADATA_") and name.endswith("_DB_URL") and env[name]]


def test_every_db_role_has_its_url_in_the_daemon_or_db_roles_and_a_required_password():
    from workers.db_roles import DB_GRANTS, url_variable

    for role in DB_GRANTS:
        assert url_variable(role) in SERVICES["dagster_daemon"]["environment"], role
        assert url_variable(role) in SERVICES["db_roles"]["environment"], role
        assert f"METADATA_{role.upper()}_DB_PASSWORD" in env_example_names(), role


def test_the_dagster_instance_reads_only_variables_compose_sets():
    wanted = set(re.findall(r"env: (\w+)", (REPO / "images/dagster.yaml").read_text()))
    assert wanted and wanted <= set(SERVICES["dagster_webserver"]["environment"])


def test_env_example_lists_every_variable_compose_reads_and_no_other():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    assert used == env_example_names()


def test_required_secrets_are_marked_required_in_compose():
    text = (REPO / "docker-compose.yml").read_text()
    for name in ("DAGSTER_POSTGRES_PASSWORD", "METADATA_POSTGRES_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        assert f"${{{name}:?" in text


def test_compose_accepts_the_file(tmp_path):
    if not shutil.which("docker-compose"):
        skip_without_engine("docker-compose is not installed; run scripts/container_engine.sh (as root)")
    env_file = compose_env_file(tmp_path)
    done = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "config", "-q"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_only_the_object_store_and_its_set_up_steps_hold_the_root_keys():
    # roles_check and store_check make and remove their probes' objects with them.
    # events_init binds the bucket's notification, the bucket owner's call.
    root_holders = {"minio", "minio_init", "roles_render", "roles_apply", "roles_check", "store_check", "events_init"}
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        holds_root = "${MINIO_SECRET_KEY:" in str(env.get("MINIO_SECRET_KEY", "")) or "MINIO_ROOT_PASSWORD" in env
        assert holds_root == (name in root_holders), name


def test_every_role_has_its_keys_in_compose_and_env_example():
    from workers.roles import GRANTS, key_variables

    for role in GRANTS:
        for name in key_variables(role):
            assert f"${{{name}:?" in (REPO / "docker-compose.yml").read_text(), name
            assert name in env_example_names(), name


def test_the_daemon_gets_every_setting_a_worker_declares_so_the_launcher_can_hand_it_on():
    declared = {name for entry in WORKERS.values() for name in entry.intake_settings}
    assert declared <= set(SERVICES["dagster_daemon"]["environment"])


def test_make_up_watches_every_one_shot_step_in_compose():
    """scripts/stack_up.sh names a failed one-shot step only if ONE_SHOT_STEPS lists it; a one-shot
    step is a service that must not restart."""
    script = (REPO / "scripts/stack_up.sh").read_text()
    (listed,) = re.findall(r"^ONE_SHOT_STEPS=\(([^)]*)\)$", script, re.MULTILINE)
    one_shots = {name for name, service in SERVICES.items() if service.get("restart") == "no"}
    awaited = {
        step
        for service in SERVICES.values()
        if isinstance(service.get("depends_on"), dict)
        for step, wait in service["depends_on"].items()
        if wait.get("condition") == "service_completed_successfully"
    }
    assert awaited <= one_shots  # every step something waits to complete is marked as a one-shot
    assert sorted(listed.split()) == sorted(one_shots)
