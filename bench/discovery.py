"""Discovery: one inbox_discovery_sensor tick over N pending objects, against the listing floor.

The inbox grows in place from one size to the next, so the 100,000-object inbox is loaded once
and serves all three measurements: the floor (a bare paginated ListObjectsV2 of the prefix), the
real sensor through `evaluate_tick` (first tick, no cursor; then the steady tick every interval
repeats, with the cursor the first one left), and a sensor built on dagster-aws's `get_objects`.
"""

import statistics
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import dagster as dg
from dagster_aws.s3.sensor import get_objects

from bench import services
from bench.services import S3Endpoint
from orchestrator.definitions import defs
from orchestrator.defs.intake import jobs, watch
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from workers.inbox import list_objects
from workers.settings import load_settings
from workers.store import make_s3_client

PREFIX = "inbox/"
MARKER = "_SUCCESS"
SUBMITTERS = 50
BODY = b"member_id,amount\n1,10\n"
LOAD_THREADS = 48
LOAD_BATCH = 10_000
MiB = 1024 * 1024


def object_key(index: int, per_group: int, marked_every: int = 2) -> str:
    """Object `index` of the inbox: groups of per_group objects over SUBMITTERS submitters; every
    marked_every-th group ends with its marker, the rest wait (quiescence)."""
    group, position = divmod(index, per_group)
    marked = group % marked_every == 0 and position == per_group - 1
    name = MARKER if marked else f"part-{position:03d}.csv"
    return f"{PREFIX}sub{group % SUBMITTERS:02d}/unknown/drop-{group:06d}/{name}"


def load_inbox(
    endpoint: S3Endpoint, bucket: str, start: int, stop: int, per_group: int, marked_every: int = 2
) -> float:
    """Put objects start..stop-1 with many threads and small bodies; the seconds it took."""
    s3 = endpoint.client(connections=LOAD_THREADS)
    began = time.perf_counter()
    put = lambda key: s3.put_object(Bucket=bucket, Key=key, Body=BODY)  # noqa: E731
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        # pool.map submits all it is given at once: in batches, so a million keys never wait as futures.
        for batch in range(start, stop, LOAD_BATCH):
            keys = [object_key(i, per_group, marked_every) for i in range(batch, min(batch + LOAD_BATCH, stop))]
            for _ in pool.map(put, keys):
                pass
    return time.perf_counter() - began


def floor_listing(s3, bucket: str) -> int:
    """The least a tick can do: every page of ListObjectsV2 for the prefix, nothing else."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        count += len(page.get("Contents", ()))
    return count


@dg.sensor(job=jobs.register_submission_from_group_job, name="get_objects_marker_sensor")
def get_objects_marker_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """What a user would write with dagster-aws: objects newer than the cursor, a run per marker."""
    settings = load_settings()
    since = datetime.fromisoformat(context.cursor) if context.cursor else None
    objects = get_objects(settings.bucket, PREFIX, since_last_modified=since, client=make_s3_client(settings))
    markers = [o for o in objects if o["Key"].rsplit("/", 1)[-1] == MARKER]
    requests = [
        dg.RunRequest(
            run_key=f"{o['Key']}@{(o['ETag'] or '').strip(chr(34))}",
            run_config={"ops": {"register_submission_from_group": {"config": {"grouping_key": group_key(o["Key"])}}}},
        )
        for o in markers
    ]
    cursor = max((o["LastModified"] for o in objects), default=since)
    return dg.SensorResult(run_requests=requests, cursor=cursor.isoformat() if cursor else None)


def group_key(marker_key: str) -> str:
    return marker_key[: -len(MARKER)]


class Ticks:
    """Sensor ticks evaluated as the daemon does, on an ephemeral instance."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance

    def tick(self, sensor: dg.SensorDefinition, cursor: str | None = None):
        context = dg.build_sensor_context(cursor=cursor, instance=self.instance, definitions=defs)
        return sensor.evaluate_tick(context)


def timed(call: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    result = call()
    return time.perf_counter() - began, result


def peak_mib(call: Callable[[], object]) -> float:
    """Peak Python heap growth during call (tracemalloc: Python allocations only, not RSS)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - baseline) / MiB


def measure_size(endpoint: S3Endpoint, bucket: str, n: int, per_group: int, repeats: int, ticks: Ticks) -> dict:
    s3 = endpoint.client()
    first = ticks.tick(inbox_discovery_sensor)
    steady_cursor = first.cursor
    variants: dict[str, Callable[[], object]] = {
        "floor_listing": lambda: floor_listing(s3, bucket),
        "sensor_first_tick": lambda: ticks.tick(inbox_discovery_sensor),
        "sensor_steady_tick": lambda: ticks.tick(inbox_discovery_sensor, steady_cursor),
        "get_objects_sensor_tick": lambda: ticks.tick(get_objects_marker_sensor),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    outcomes: dict[str, Any] = {}
    # Interleaved rounds, so drift in the machine's load falls on every variant alike.
    for _ in range(repeats):
        for name, call in variants.items():
            elapsed, outcomes[name] = timed(call)
            seconds[name].append(elapsed)
    listed = outcomes["floor_listing"]
    if listed != n:
        raise RuntimeError(f"the inbox holds {listed} objects, expected {n}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    floor = medians["floor_listing"]
    return {
        "objects": n,
        "groups": -(-n // per_group),
        "run_requests_first_tick": len(outcomes["sensor_first_tick"].run_requests),
        "run_requests_get_objects": len(outcomes["get_objects_sensor_tick"].run_requests),
        "repeats": repeats,
        "seconds": medians,
        "all_seconds": seconds,
        "ratio_to_floor": {name: value / floor for name, value in medians.items()},
        "peak_mib": {name: peak_mib(call) for name, call in variants.items()},
    }


def run(endpoint: S3Endpoint, bucket: str, sizes: list[int], per_group: int, repeats: int, log) -> dict:
    results, loaded = [], 0
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(instance)
        for n in sorted(sizes):
            load_seconds = load_inbox(endpoint, bucket, loaded, n, per_group)
            log(f"discovery: loaded {n - loaded} objects in {load_seconds:.1f} s ({n} in the inbox)")
            loaded = n
            result = measure_size(endpoint, bucket, n, per_group, repeats if n < 100_000 else min(repeats, 2), ticks)
            result["load_seconds"] = load_seconds
            log(f"discovery: {n} objects: {fmt_seconds(result['seconds'])}")
            results.append(result)
    return {
        "mode": "listing",
        "memory_method": "tracemalloc peak minus the traced size before the call (Python heap only, not RSS), "
        "measured in a separate untimed call",
        "objects_per_group": per_group,
        "marker_every_other_group": True,
        "sizes": results,
    }


def fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f} s" for name, value in seconds.items())


# Events mode (issue 15): a tick with NEW_EVENTS new events over a large inbox, after the pass.
NEW_GROUPS, NEW_PER_GROUP = 10, 10


def run_events(endpoint: S3Endpoint, bucket: str, size: int, repeats: int, bridge_log, log) -> dict:
    """Events mode, DISCOVERY_MODE=events and the NATS settings already in the environment: `size`
    objects loaded (every group marked, so the pass requests them all and none stays pending),
    the reconciliation pass a first tick starts, then NEW_GROUPS groups of NEW_PER_GROUP objects
    put through the real bridge and the tick that reads their events."""
    from workers.settings import load_event_settings

    ev = load_event_settings()
    load_seconds = load_inbox(endpoint, bucket, 0, size, NEW_PER_GROUP, marked_every=1)
    log(f"discovery, events mode: loaded {size} objects in {load_seconds:.1f} s")
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(instance)
        reconciliation = reconcile(ticks, size)
        log(f"discovery, events mode: reconciliation of {size} objects: {reconciliation['seconds']:.1f} s")
        with services.bridge(bridge_log):
            arrival = put_new_groups(endpoint, bucket, ev, size, ticks, reconciliation["cursor"])
        tick = arrival.pop("tick")
        position = discovery_cursor(reconciliation["cursor"]).position
        s3 = endpoint.client()
        variants: dict[str, Callable[[], object]] = {
            "floor_read_and_list": lambda: floor_events(ev, bucket, position, arrival["group_keys"], s3),
            "sensor_tick": lambda: ticks.tick(inbox_discovery_sensor, reconciliation["cursor"]),
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, call in variants.items():
                seconds[name].append(timed(call)[0])
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        peaks = {name: peak_mib(call) for name, call in variants.items()}
    del reconciliation["cursor"], arrival["group_keys"]
    return {
        "objects": size,
        "load_seconds": load_seconds,
        "new_objects": NEW_GROUPS * NEW_PER_GROUP,
        "new_groups": NEW_GROUPS,
        "run_requests_new_tick": len(tick.run_requests),
        "reconciliation": reconciliation,
        "slice_seconds": watch.SLICE_SECONDS,
        "repeats": repeats,
        "seconds": medians,
        "all_seconds": seconds,
        "ratio_to_floor": {name: value / medians["floor_read_and_list"] for name, value in medians.items()},
        "peak_mib": peaks,
        **arrival,
    }


def reconcile(ticks: Ticks, size: int) -> dict:
    """Ticks from no cursor until the pass the first one starts (no stream position: a gap) is done."""
    began, count, cursor, requests = time.perf_counter(), 0, None, 0
    while True:
        result = ticks.tick(inbox_discovery_sensor, cursor)
        cursor, count, requests = result.cursor, count + 1, requests + len(result.run_requests)
        if watch._memory is None or watch._memory.reconcile is None:
            break
    seconds = time.perf_counter() - began
    if requests != size // NEW_PER_GROUP:
        raise RuntimeError(f"the pass requested {requests} runs, expected {size // NEW_PER_GROUP}")
    return {"seconds": seconds, "ticks": count, "run_requests": requests, "cursor": cursor, "cursor_bytes": len(cursor)}


def put_new_groups(endpoint: S3Endpoint, bucket: str, ev, offset: int, ticks: Ticks, cursor: str | None) -> dict:
    """The new groups, marker last in each; waits until the stream holds their events, then the
    tick that reads them: marker PUT to run request is the wait plus that tick."""
    s3 = endpoint.client()
    before = stream_last_seq(ev)
    keys = [object_key(offset + i, NEW_PER_GROUP, marked_every=1) for i in range(NEW_GROUPS * NEW_PER_GROUP)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=BODY)
    last_marker_put = time.perf_counter()
    deadline = last_marker_put + 60
    while stream_last_seq(ev) < before + len(keys):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the stream holds {stream_last_seq(ev) - before} of {len(keys)} new events")
        time.sleep(0.01)
    in_stream = time.perf_counter()
    tick = ticks.tick(inbox_discovery_sensor, cursor)
    requested = time.perf_counter()
    if len(tick.run_requests) != NEW_GROUPS:
        raise RuntimeError(f"the tick requested {len(tick.run_requests)} runs, expected {NEW_GROUPS}")
    return {
        "tick": tick,
        "group_keys": sorted({key.rsplit("/", 1)[0] + "/" for key in keys}),
        "marker_to_stream_seconds": in_stream - last_marker_put,
        "marker_to_run_request_seconds": requested - last_marker_put,
    }


def stream_last_seq(ev) -> int:
    from workers import events

    async def last() -> int:
        nc = await events.connect(ev)
        try:
            info = await events.ensure_stream(nc.jetstream(timeout=events.REQUEST_TIMEOUT_SECONDS), ev)
            return info.state.last_seq
        finally:
            await nc.close()

    return events.run(last())


def floor_events(ev, bucket: str, position, group_keys: list[str], s3) -> int:
    """The least such a tick can do: read the new events from the stream, list each group they name."""
    from workers import events

    batch = events.read_events(ev, bucket, PREFIX, events.Position.load(position))
    return len(batch.events) + sum(1 for key in group_keys for _ in list_objects(s3, bucket, key))


def discovery_cursor(text: str | None):
    from workers.discovery import load_cursor

    return load_cursor(text)


def run_group_sizes(endpoint: S3Endpoint, bucket: str, n: int, per_group: int, narrow: dict) -> dict:
    """Listing mode's memory against objects per group: the same n objects in groups of per_group
    (bucket loaded here) beside `narrow`, the size row measured with fewer objects per group."""
    load_inbox(endpoint, bucket, 0, n, per_group)
    s3 = endpoint.client()
    with dg.DagsterInstance.ephemeral() as instance:
        ticks = Ticks(instance)
        peak = peak_mib(lambda: ticks.tick(inbox_discovery_sensor))
        floor_peak = peak_mib(lambda: floor_listing(s3, bucket))
    return {
        "objects": n,
        "per_group": {
            str(narrow["objects"] // narrow["groups"]): {
                "groups": narrow["groups"],
                "sensor_first_tick_peak_mib": narrow["peak_mib"]["sensor_first_tick"],
                "floor_peak_mib": narrow["peak_mib"]["floor_listing"],
            },
            str(per_group): {
                "groups": -(-n // per_group),
                "sensor_first_tick_peak_mib": peak,
                "floor_peak_mib": floor_peak,
            },
        },
    }
