"""Launch overhead: the heartbeat worker through PipesSubprocessClient against a bare process.

Floors, each timed from spawn to exit: `python -c pass` (the interpreter alone) and
`python -m workers.heartbeat` (the worker's own start-up and work). Through Dagster: an asset
that calls the launcher, run by `dg.materialize` on an ephemeral instance; the launch is timed
inside the asset (PipesSubprocessClient's whole run) and the materialization as a whole.
Docker (PipesDockerClient against `docker run` of the same image) only where an engine answers.
"""

import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings

import dagster as dg

from bench.services import REPO
from orchestrator.defs.resources import WorkerLauncher, worker_env
from workers.catalogue import worker

LAUNCHED: list[float] = []
IMAGE = "health-intake-heartbeat:latest"
# Dagster's console logger at WARNING, so the benchmark's own lines stay readable.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dg.asset(name="bench_heartbeat")
def bench_heartbeat(context: dg.AssetExecutionContext, launcher: WorkerLauncher) -> dg.MaterializeResult:
    began = time.perf_counter()
    result = launcher.materialize(context=context, worker="heartbeat")
    LAUNCHED.append(time.perf_counter() - began)
    return result


def bare(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - began


def through_pipes(instance: dg.DagsterInstance, launcher: WorkerLauncher) -> tuple[float, float]:
    """(seconds in the launcher, seconds for the whole materialization)."""
    began = time.perf_counter()
    result = dg.materialize([bench_heartbeat], resources={"launcher": launcher}, instance=instance, run_config=QUIET)
    whole = time.perf_counter() - began
    if not result.success:
        raise RuntimeError("the heartbeat materialization failed")
    return LAUNCHED[-1], whole


def measure(variants: dict, repeats: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, call in variants.items():
            value = call()
            for suffix, part in value.items() if isinstance(value, dict) else [("", value)]:
                seconds.setdefault(name + suffix, []).append(part)
    return seconds


def run(repeats: int, log) -> dict:
    python = sys.executable
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    with dg.DagsterInstance.ephemeral() as instance:
        os.environ["WORKER_LAUNCH_MODE"] = "subprocess"
        launcher = WorkerLauncher()

        def pipes() -> dict[str, float]:
            launched, whole = through_pipes(instance, launcher)
            return {"_launch": launched, "_materialization": whole}

        # Warm-up: first imports, the instance's storage, the page cache for every variant.
        through_pipes(instance, launcher)
        bare([python, "-m", "workers.heartbeat"])
        seconds = measure(
            {
                "python_bare": lambda: bare([python, "-c", "pass"]),
                "worker_bare_process": lambda: bare([python, "-m", "workers.heartbeat"]),
                "pipes_subprocess": pipes,
            },
            repeats,
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    worker = medians["worker_bare_process"]
    result = {
        "worker": "heartbeat",
        "repeats": repeats,
        "seconds": medians,
        "all_seconds": seconds,
        "ratio_to_bare_worker": {name: value / worker for name, value in medians.items()},
        "pipes_launch_overhead_seconds": medians["pipes_subprocess_launch"] - worker,
        "materialization_overhead_seconds": medians["pipes_subprocess_materialization"] - worker,
        "docker": docker(repeats, log),
    }
    log(f"launch: {', '.join(f'{k} {v:.3f} s' for k, v in medians.items())}")
    return result


def docker_engine_answers() -> str | None:
    """None when an engine answers, else the reason it does not."""
    if shutil.which("docker") is None:
        return "no docker client installed"
    try:
        import docker as docker_py

        client = docker_py.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine to measure
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:160]})"
    try:
        client.images.get(IMAGE)
    except Exception:  # noqa: BLE001
        return f"an engine answers but the worker image {IMAGE} is not built (Docker mode, images/)"
    return None


def docker(repeats: int, log) -> dict:
    reason = docker_engine_answers()
    if reason:
        log(f"launch: docker part skipped: {reason}")
        return {"skipped": reason}
    env = [arg for name, value in worker_env(worker("heartbeat")).items() for arg in ("-e", f"{name}={value}")]
    network = os.environ.get("WORKER_DOCKER_NETWORK", "host")
    run_command = ["docker", "run", "--rm", f"--network={network}", *env, IMAGE, "python", "-m", "workers.heartbeat"]
    with dg.DagsterInstance.ephemeral() as instance:
        os.environ.update(WORKER_LAUNCH_MODE="docker", WORKER_DOCKER_NETWORK=network)
        launcher = WorkerLauncher()

        def pipes() -> dict[str, float]:
            launched, whole = through_pipes(instance, launcher)
            return {"_launch": launched, "_materialization": whole}

        seconds = measure({"docker_run": lambda: bare(run_command), "pipes_docker": pipes}, repeats)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "image": IMAGE,
        "network": network,
        "seconds": medians,
        "all_seconds": seconds,
        "pipes_launch_overhead_seconds": medians["pipes_docker_launch"] - medians["docker_run"],
    }
