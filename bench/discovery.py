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

import dagster as dg
from dagster_aws.s3.sensor import get_objects

from bench.services import S3Endpoint
from orchestrator.definitions import defs
from orchestrator.defs.intake import jobs
from orchestrator.defs.intake.sensors import inbox_discovery_sensor
from workers.settings import load_settings
from workers.store import make_s3_client

PREFIX = "inbox/"
MARKER = "_SUCCESS"
SUBMITTERS = 50
BODY = b"member_id,amount\n1,10\n"
LOAD_THREADS = 48
MiB = 1024 * 1024


def object_key(index: int, per_group: int) -> str:
    """Object `index` of the inbox: groups of per_group objects over SUBMITTERS submitters; every
    other group ends with its marker, the rest wait (quiescence)."""
    group, position = divmod(index, per_group)
    name = MARKER if group % 2 == 0 and position == per_group - 1 else f"part-{position:03d}.csv"
    return f"{PREFIX}sub{group % SUBMITTERS:02d}/unknown/drop-{group:06d}/{name}"


def load_inbox(endpoint: S3Endpoint, bucket: str, start: int, stop: int, per_group: int) -> float:
    """Put objects start..stop-1 with many threads and small bodies; the seconds it took."""
    s3 = endpoint.client(connections=LOAD_THREADS)
    began = time.perf_counter()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        keys = (object_key(i, per_group) for i in range(start, stop))
        for _ in pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=BODY), keys, chunksize=64):
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
            run_key=f"{o['Key']}@{o['ETag'].strip(chr(34))}",
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
    outcomes: dict[str, object] = {}
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
        "memory_method": "tracemalloc peak minus the traced size before the call (Python heap only, not RSS), "
        "measured in a separate untimed call",
        "objects_per_group": per_group,
        "marker_every_other_group": True,
        "sizes": results,
    }


def fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f} s" for name, value in seconds.items())
