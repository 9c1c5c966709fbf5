"""Kubernetes mode's launch settings: validated where they are read, each named in README's section."""

import pytest

from tests.services import REPO
from workers.settings import LAUNCH_DEFAULTS, SettingsError, load_launch_settings

README = (REPO / "README.md").read_text()
SECTION = README[README.index("## Kubernetes mode") : README.index("## Troubleshooting")]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("K8S_NAMESPACE", "Health_Intake", "K8S_NAMESPACE must be a Kubernetes name"),
        ("K8S_NAMESPACE", "-intake", "K8S_NAMESPACE must be a Kubernetes name"),
        ("K8S_SECRET_PREFIX", "x" * 53, "K8S_SECRET_PREFIX must be a Kubernetes name: at most 52"),
        ("K8S_POLL_SECONDS", "0", "K8S_POLL_SECONDS must be >= 0.1"),
        ("K8S_POD_TIMEOUT_SECONDS", "soon", "K8S_POD_TIMEOUT_SECONDS must be a number"),
    ],
)
def test_a_malformed_kubernetes_setting_is_refused_naming_it(name, value, message):
    with pytest.raises(SettingsError, match=message):
        load_launch_settings({"WORKER_LAUNCH_MODE": "k8s", name: value})


def test_kubernetes_mode_is_a_launch_mode_with_defaults():
    settings = load_launch_settings({"WORKER_LAUNCH_MODE": "k8s"})
    assert (settings.mode, settings.k8s_namespace, settings.k8s_secret_prefix) == (
        "k8s",
        "health-intake",
        "health-intake-role",
    )
    assert settings.k8s_kubeconfig == "" and settings.k8s_pod_timeout_seconds == 14400


def test_the_readme_names_every_kubernetes_setting_with_its_default():
    for name, default in LAUNCH_DEFAULTS.items():
        if name.startswith("K8S_"):
            row = next(line for line in SECTION.splitlines() if line.startswith(f"| `{name}`"))
            assert f"`{default}`" in row or (not default and "empty" in row), name
