"""python -m bench: discovery, staging, launch overhead and end to end, each against its floor, in one run.

Starts what it needs (a SeaweedFS S3 server on free ports, a Postgres database of its own, and
for the end-to-end part ./dev_up.sh in a temporary copy of the repository), writes the results
as JSON and renders them as Markdown (by default bench/results/benchmarks.json and
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import machine, report, services

PARTS = ("discovery", "staging", "launch", "end_to_end")
SMOKE = {
    "discovery_sizes": [60, 200],
    "objects_per_group": 10,
    "discovery_wide_per_group": 100,
    "discovery_events_size": 200,
    "staging_mib": 4,
    "repeats": 1,
    "launch_repeats": 1,
    "skip": ["end_to_end"],
}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--discovery-sizes", type=sizes, default=[1000, 10_000, 100_000], help="objects in the inbox")
    parser.add_argument("--objects-per-group", type=int, default=10, help="objects per inbox group (drop)")
    parser.add_argument(
        "--discovery-wide-per-group",
        type=int,
        default=100,
        help="objects per group for listing mode's memory row (the largest size again, in fewer, larger groups)",
    )
    parser.add_argument(
        "--discovery-events-size",
        type=int,
        default=1_000_000,
        help="objects in the inbox for the events-mode rows (0: no events-mode rows)",
    )
    parser.add_argument("--staging-mib", type=int, default=1024, help="size of the staged submission")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per discovery size and staging")
    parser.add_argument("--launch-repeats", type=int, default=7, help="timed rounds of each launch")
    parser.add_argument(
        "--e2e-drops", type=int, default=100, help="drops put at once through dagster dev (issue 15's burst)"
    )
    parser.add_argument("--e2e-singles", type=int, default=3, help="drops put one at a time (latency)")
    parser.add_argument("--sensor-interval", type=int, default=5, help="SENSOR_INTERVAL_SECONDS for end to end")
    parser.add_argument("--skip", type=lambda s: [p for p in s.split(",") if p], default=[], help=f"of {PARTS}")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one round, no end to end (the test suite); writes into bench/results/smoke/ unless --out",
    )
    parser.add_argument("--out", type=Path, help="write benchmarks.json and benchmarks.md into this directory")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="measure nothing: render docs/benchmarks.md from a results file"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    unknown = set(args.skip) - set(PARTS)
    if unknown:
        parser.error(f"--skip takes parts of {PARTS}, not {sorted(unknown)}")
    return args


def sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive object counts")
    return values


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, workdir: Path, save: Callable[[dict], None]) -> dict:
    """Each part's results; a part that fails is recorded with its error (its first line) and the
    run goes on, so an hour of measurements is never lost to the last part. save(results so far)
    after each part: a run stopped midway leaves what it measured."""
    results: dict = {}
    skipped = {part: "skipped by --skip" + (" (--smoke)" if args.smoke else "") for part in args.skip}

    def attempt(part: str, call: Callable[[], dict]) -> None:
        if part in args.skip:
            return
        try:
            results[part] = call()
        except Exception as exc:
            traceback.print_exc()
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            results[part] = {"skipped": f"failed: {type(exc).__name__}: {first_line}", "failed": True}
            log(f"{part}: failed ({type(exc).__name__}), recorded in the results; the run goes on")
        save(results)

    with services.s3_server(workdir) as endpoint, services.postgres_database() as pg_url:
        log(f"S3 server at {endpoint.endpoint}, Postgres database {pg_url.rsplit('/', 1)[-1]}")
        attempt("discovery", lambda: run_discovery(args, endpoint, workdir))
        attempt("staging", lambda: run_staging(args, endpoint, pg_url))
        attempt("launch", lambda: run_launch(args, endpoint, pg_url))

    def end_to_end_part() -> dict:
        from bench import end_to_end

        return end_to_end.run(workdir, args.e2e_drops, args.e2e_singles, args.sensor_interval, log)

    attempt("end_to_end", end_to_end_part)
    return results | {part: {"skipped": reason} for part, reason in skipped.items()}


def run_discovery(args, endpoint: services.S3Endpoint, workdir: Path) -> dict:
    services.create_bucket(endpoint, "bench-discovery")
    # The sensor never opens the metadata DB: a path that is never created stands in for it.
    env = services.platform_environment(f"sqlite:///{workdir / 'unused.db'}", endpoint, "bench-discovery")
    with services.environment(env | {"DISCOVERY_MODE": "listing"}):
        from bench import discovery

        result = discovery.run(
            endpoint, "bench-discovery", args.discovery_sizes, args.objects_per_group, args.repeats, log
        )
    services.create_bucket(endpoint, "bench-discovery-wide")
    with services.environment(env | {"DISCOVERY_MODE": "listing", "MINIO_BUCKET": "bench-discovery-wide"}):
        result["group_sizes"] = discovery.run_group_sizes(
            endpoint,
            "bench-discovery-wide",
            max(args.discovery_sizes),
            args.discovery_wide_per_group,
            result["sizes"][-1],
        )
    if args.discovery_events_size:
        result["events"] = run_discovery_events(args, endpoint, workdir, env)
    return result


def run_discovery_events(args, endpoint: services.S3Endpoint, workdir: Path, env: dict[str, str]) -> dict:
    services.create_bucket(endpoint, "bench-events")
    with services.nats_server(workdir) as nats_url:
        events_env = {
            "MINIO_BUCKET": "bench-events",
            "DISCOVERY_MODE": "events",
            "NATS_URL": nats_url,
            "EVENTS_STREAM": "BENCH_INBOX_EVENTS",
            "EVENTS_SUBJECT": "bench.inbox",
            # No scheduled pass in the middle of the measurement, however long the load took.
            "RECONCILE_MINUTES": "600",
        }
        with services.environment(env | events_env):
            from bench import discovery

            return discovery.run_events(
                endpoint, "bench-events", args.discovery_events_size, args.repeats, workdir / "bridge.log", log
            )


def run_staging(args, endpoint: services.S3Endpoint, pg_url: str) -> dict:
    services.create_bucket(endpoint, "bench-staging")
    with services.environment(services.platform_environment(pg_url, endpoint, "bench-staging")):
        from bench import staging

        return staging.run(endpoint, "bench-staging", pg_url, args.staging_mib, args.repeats, log)


def run_launch(args, endpoint: services.S3Endpoint, pg_url: str) -> dict:
    services.create_bucket(endpoint, "bench-launch")
    with services.environment(services.platform_environment(pg_url, endpoint, "bench-launch")):
        from bench import launch

        return launch.run(args.launch_repeats, log)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.smoke and not args.out:
        # A smoke run is no measurement: it never replaces the committed results.
        args.out = services.REPO / "bench/results/smoke"
    json_path = args.out / "benchmarks.json" if args.out else services.REPO / "bench/results/benchmarks.json"
    md_path = args.out / "benchmarks.md" if args.out else services.REPO / "docs/benchmarks.md"
    if args.render:
        md_path.write_text(report.render(json.loads(args.render.read_text()), args.render))
        log(f"wrote {md_path}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="hp-bench-"))
    began = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    described = machine.describe()
    partial_path = json_path.with_name("benchmarks.partial.json")

    def document_of(results: dict) -> dict:
        document = {
            "started_at": started_at,
            "wall_seconds": time.monotonic() - began,
            "smoke": args.smoke,
            "options": {k: v for k, v in vars(args).items() if k != "out"},
            "machine": described,
            **results,
        }
        return document | {"targets": report.targets(document)}

    def save(results: dict) -> None:
        partial_path.parent.mkdir(parents=True, exist_ok=True)
        partial_path.write_text(json.dumps(document_of(results), indent=2, default=str) + "\n")

    try:
        results = measure(args, workdir, save)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    document = document_of(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    partial_path.unlink(missing_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report.render(document, json_path))
    log(f"wrote {json_path} and {md_path}")
    failed = [part for part in PARTS if isinstance(results.get(part), dict) and results[part].get("failed")]
    if failed:
        log(f"failed parts (their errors are in the results): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
