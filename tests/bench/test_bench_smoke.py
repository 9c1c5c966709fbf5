"""`python -m bench --smoke` keeps working: every section is there with sane numbers.

Tiny sizes, one round, no end to end. Nothing here asserts on how fast anything is: these
machines are too noisy for a timed assertion, and the benchmark reports ratios, not verdicts.
"""

import json
import math
import subprocess
import sys

import pytest

from tests.services import REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


def positive(values: dict) -> bool:
    return all(isinstance(v, float | int) and math.isfinite(v) and v > 0 for v in values.values())


def test_every_section_is_in_the_json(smoke):
    document, _ = smoke
    assert {"machine", "discovery", "staging", "launch", "end_to_end", "targets"} <= document.keys()
    assert document["smoke"] is True
    assert "skipped" in document["end_to_end"]


def test_discovery_reports_each_size_against_its_floor(smoke):
    document, _ = smoke
    sizes = document["discovery"]["sizes"]
    assert [s["objects"] for s in sizes] == sorted(s["objects"] for s in sizes) and len(sizes) >= 2
    for size in sizes:
        assert positive(size["seconds"]) and positive(size["ratio_to_floor"]) and positive(size["peak_mib"])
        assert size["ratio_to_floor"]["floor_listing"] == 1.0
        assert size["run_requests_first_tick"] == size["run_requests_get_objects"] > 0


def test_staging_reports_throughput_of_each_variant_against_the_floor(smoke):
    document, _ = smoke
    staging = document["staging"]
    assert {"floor_copy_and_hash", "stager", "stager_with_inbox_cleanup", "naive_download_upload"} <= set(
        staging["seconds"]
    )
    assert positive(staging["seconds"]) and positive(staging["mib_per_second"])
    assert positive(staging["throughput_ratio_to_floor"]) and staging["large_files"] > 0


def test_launch_reports_the_pipes_launch_and_the_bare_worker(smoke):
    document, _ = smoke
    launch = document["launch"]
    assert positive(launch["seconds"]) and positive(launch["ratio_to_bare_worker"])
    assert {"worker_bare_process", "pipes_subprocess_launch"} <= launch["seconds"].keys()
    assert "skipped" in launch["docker"] or positive(launch["docker"]["seconds"])


def test_the_markdown_has_the_machine_and_the_targets(smoke):
    document, markdown = smoke
    assert "## Machine" in markdown and "## Targets (issues 6 and 15)" in markdown
    assert all(target["target"] in markdown for target in document["targets"])
    assert document["machine"]["cpus"] > 0


def test_discovery_reports_events_mode_against_its_floor(smoke):
    document, markdown = smoke
    events = document["discovery"]["events"]
    assert positive(events["seconds"]) and positive(events["ratio_to_floor"]) and positive(events["peak_mib"])
    assert events["ratio_to_floor"]["floor_read_and_list"] == 1.0
    assert events["run_requests_new_tick"] == events["new_groups"] > 0
    assert events["reconciliation"]["ticks"] >= 1 and events["reconciliation"]["run_requests"] > 0
    assert 0 < events["reconciliation"]["cursor_bytes"] < 100 * events["reconciliation"]["run_requests"] + 1000
    assert events["marker_to_run_request_seconds"] >= events["marker_to_stream_seconds"] > 0
    assert "### Events mode" in markdown


def test_discovery_reports_listing_memory_at_two_group_sizes(smoke):
    document, _ = smoke
    group_sizes = document["discovery"]["group_sizes"]
    assert document["discovery"]["mode"] == "listing"
    assert len(group_sizes["per_group"]) == 2
    assert all(values["sensor_first_tick_peak_mib"] > 0 for values in group_sizes["per_group"].values())
