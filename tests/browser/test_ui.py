"""The operator's view in a real browser: Playwright driving Debian's Chromium (scripts/browser.sh)
against ./dev_up.sh from a fresh copy, step by step as the seed document and the README word them.

Nothing here is a stand-in: the platform is the one dev_up.sh brings up (dagster dev, its daemon,
the embedded S3 server, SQLite), and each step is clicked or typed in the UI. Every step's screenshot
is kept under .local/browser/ in the repository (a failed step's too, named FAILED-...), so a CI
run's artifacts show what the operator would have seen.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import DROP, SEED_YAML
from tests.services import REPO, DevUpProcess, fresh_copy

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SHOTS = REPO / ".local/browser"
# The flags this machine's closed network needs (../shared/ENVIRONMENT.md); --no-sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# dev mode's example feed that no example drop satisfies (workers/src/workers/feed_definitions.json).
LATE_FEED_CHECK = "feed_acme_eligibility_monthly"


def browser_or_skip() -> None:
    if CHROMIUM.exists():
        return
    reason = f"no browser at {CHROMIUM} (scripts/browser.sh installs Debian's chromium)"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@dataclass
class UI:
    page: object  # playwright's Page
    base: str
    copy: Path

    def url(self, path: str) -> str:
        return self.base + path

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def shell(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", f"source .local/dev.env && {command}"],
            cwd=self.copy,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[DevUpProcess]:
    browser_or_skip()
    dev_up = DevUpProcess(fresh_copy(tmp_path_factory.mktemp("ui") / "repo"))
    dev_up.start(timeout=900)
    yield dev_up
    dev_up.kill_leftovers()


@pytest.fixture(scope="module")
def ui(platform: DevUpProcess) -> Iterator[UI]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        # A fresh instance shows a "Join the Dagster community" dialog over the pages, at some point
        # after the first one loads; whenever it is in the way of a step, Skip closes it.
        dialog = page.get_by_text("Join the Dagster community")
        page.add_locator_handler(dialog, lambda: page.get_by_role("button", name="Skip").click())
        yield UI(page, f"http://127.0.0.1:{platform.dagster_port}", platform.copy)
        browser.close()


@pytest.fixture(scope="module")
def staged_drop(ui: UI) -> str:
    """The seed's drop, uploaded as the README says; its submission id once the sensor's run staged it."""
    for command in DROP:
        done = ui.shell(command)
        assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 300
    while True:
        rows = ui.shell("python -m workers.tables submission").stdout.splitlines()[2:]
        staged = [row.split()[1] for row in rows if " staged " in row]
        if staged:
            return staged[0]
        assert time.monotonic() < deadline, (ui.copy / ".local/dagster.log").read_text()[-4000:]
        time.sleep(3)


def until(ui: UI, shown: Callable[[], bool], timeout: float = 180, reload: bool = True) -> None:
    """Waits for the page to show something, reloading it as an operator would press refresh."""
    deadline = time.monotonic() + timeout
    while not shown():
        assert time.monotonic() < deadline, f"not shown within {timeout:.0f} s"
        time.sleep(3)
        if reload:
            ui.page.reload()
            settle(ui)


def settle(ui: UI) -> None:
    """Pages are left to settle before a step looks at them; the welcome dialog is Skipped by the
    handler the ui fixture installs whenever it shows up."""
    ui.page.wait_for_load_state("networkidle")


def test_assets_bootstrap_heartbeat_asset_materialize_shows_the_workers_metadata(ui: UI):
    """The seed's Phase 0 UI step: Assets -> bootstrap_heartbeat_asset -> Materialize, by clicking
    (Dagster 1.13 calls the assets page the Catalog), then the worker's metadata on the asset page."""
    page = ui.page
    page.goto(ui.url("/"))
    settle(ui)
    page.get_by_text("Catalog", exact=True).first.click()
    page.get_by_text("bootstrap_heartbeat_asset", exact=True).first.click()
    page.wait_for_url(re.compile(r"/assets/bootstrap_heartbeat_asset"))
    ui.shot("1a-heartbeat-asset")
    page.locator("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).first.click()
    until(ui, lambda: page.get_by_text("sha256", exact=True).count() > 0)
    for label in ("row_id", "object_key", "size_bytes", "sha256", "db_dialect"):
        assert page.get_by_text(label, exact=True).count() > 0, label
    ui.shot("1b-heartbeat-materialized")


def test_the_launchpad_takes_the_seeds_yaml_for_the_registration_job(ui: UI, staged_drop: str):
    """The seed's "Run the registration job manually" step in the Launchpad: its YAML pasted as it
    prints it, launched; the run succeeds and registers nothing new (the drop is staged already)."""
    page = ui.page
    page.goto(ui.url("/locations/health_intake/jobs/register_submission_from_group_job/playground"))
    settle(ui)
    editor = page.locator(".CodeMirror").first
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(SEED_YAML)  # as a paste: no auto-indent
    assert page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()") == SEED_YAML
    ui.shot("2a-launchpad-seed-yaml")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]+"))
    until(ui, lambda: page.get_by_text("Success", exact=True).count() > 0, reload=False)
    ui.shot("2b-launchpad-run-succeeded")
    rows = ui.shell("python -m workers.tables submission").stdout.splitlines()[2:]
    assert [row.split()[1] for row in rows] == [staged_drop]  # the same submission, no new row


def test_acmes_partition_of_the_submissions_asset_lists_the_drop(ui: UI, staged_drop: str):
    """After a drop: Catalog -> submissions -> Partitions -> acme shows the submission's metadata."""
    page = ui.page
    page.goto(ui.url("/assets/submissions"))
    settle(ui)
    page.get_by_role("tab", name="Partitions").click()
    page.get_by_text("acme", exact=True).first.click()
    until(ui, lambda: page.get_by_text(staged_drop, exact=True).count() > 0)
    for label in ("submission_id", "status", "file_count", "total_bytes", "file_types", "rejections"):
        assert page.get_by_text(label, exact=True).count() > 0, label
    assert page.get_by_text("medical_claims", exact=True).count() > 0
    ui.shot("3-submissions-acme-partition")
    # What the partner got back (README, The operator's view): the receipt in acme's outbox.
    receipts = ui.shell("aws s3 ls --recursive s3://health-raw/outbox/acme/")
    assert receipts.returncode == 0 and f"drop-001/{staged_drop}.receipt.json" in receipts.stdout


def test_a_late_feeds_check_fails_on_the_submissions_asset(ui: UI):
    """The daemon evaluates the feeds' freshness checks with nobody clicking; the late example feed's
    check is shown failing on the submissions asset's Checks tab."""
    page = ui.page
    page.goto(ui.url("/assets/submissions?view=checks"))
    settle(ui)
    until(ui, lambda: page.get_by_text(LATE_FEED_CHECK).count() > 0 and page.get_by_text("Failed").count() > 0)
    ui.shot("4a-feed-checks")
    page.get_by_text(LATE_FEED_CHECK).first.click()
    ui.shot("4b-late-feed-check")
    # The same verdict by hand (README, The operator's view).
    judged = ui.shell("python -m workers.audit --feeds")
    assert judged.returncode == 1 and "acme_eligibility_monthly" in judged.stdout, judged.stdout[-2000:]
