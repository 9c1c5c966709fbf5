"""Events mode through its worst minutes: the bridge, the NATS server and the S3 server die at
random points of a burst of drops, and every drop still ends staged exactly once.

Real `./dev_up.sh` in a fresh copy with DISCOVERY_MODE=events. The S3 server, NATS and the bridge
are the test's own (dev_up.sh uses what already answers, and starts a bridge only beside a
SeaweedFS of its own), so the test can kill them: the bridge and NATS with SIGKILL, restarted on
the same port and store; the S3 server stopped and started again, as in test_outages. The faults
fall between puts, seeded: the seed is printed, and EVENT_OUTAGES_SEED=<seed> replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.events_services import NatsServer, events_environment, stream_messages
from tests.helpers import staged_state
from tests.reliability.test_convergence import Platform
from tests.services import fresh_copy, port_is_free
from workers.store import ensure_bucket

pytestmark = pytest.mark.slow  # ./dev_up.sh in a fresh copy

DROPS = 10  # on 2 shared cores each drop's run takes ~15 s: 20 drops took 10 minutes
FAULTS = ("bridge", "nats", "s3") * 2
SEED = int(os.environ.get("EVENT_OUTAGES_SEED") or random.SystemRandom().randrange(2**32))
CONVERGE_TIMEOUT = 480
MARKER = ("_SUCCESS", b"")


@dataclass(frozen=True)
class Fault:
    """`kind` dies just before put number `at`; the bridge or NATS stays down for `down_puts` more
    puts and at least `down_seconds` (the S3 server for `down_seconds`: nothing can be put)."""

    at: int
    kind: str
    down_puts: int
    down_seconds: float


def plan(rng: random.Random, puts: int) -> list[Fault]:
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    spots = sorted(rng.sample(range(1, puts), len(kinds)))
    pairs = zip(spots, kinds, strict=True)
    return [Fault(at, kind, rng.randint(0, 6), round(rng.uniform(1, 8), 1)) for at, kind in pairs]


class Bridge:
    """`python -m workers.bridge` for the platform's bucket, SIGKILLed and started again by the test."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Returns once it has subscribed to the filer's log."""
        seen = self.subscriptions()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.bridge"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while self.subscriptions() <= seen:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def subscriptions(self) -> int:
        return self.log.read_text().count("bridge: subscribed") if self.log.exists() else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Burst:
    """The platform and the three processes the test kills."""

    def __init__(self, platform: Platform, nats: NatsServer, bridge: Bridge):
        self.platform, self.nats, self.bridge = platform, nats, bridge
        self.s3_up = True

    def put(self, key: str, body: bytes) -> None:
        self.platform.s3.client().put_object(Bucket=self.platform.bucket, Key=key, Body=body)

    def kill(self, kind: str) -> None:
        print(f"event outages: killing {kind}", flush=True)
        if kind == "bridge":
            self.bridge.kill()
        elif kind == "nats":
            self.nats.kill()
        else:
            self.platform.stop_s3()

    def revive(self, kind: str) -> None:
        print(f"event outages: starting {kind} again", flush=True)
        if kind == "bridge":
            self.bridge.start()
        elif kind == "nats":
            self.nats.start()
            deadline = time.monotonic() + 30
            while port_is_free(self.nats.port):  # its log's "ready" may be an earlier start's
                assert time.monotonic() < deadline, self.nats.log.read_text()[-2000:]
                time.sleep(0.2)
        else:
            self.platform.start_s3()


def burst_drops(rng: random.Random) -> dict[str, dict[str, bytes]]:
    """Distinct bytes in every file: the same bytes again from one submitter would be registered
    as a duplicate of the earlier drop, not staged."""
    return {
        f"inbox/acme/unknown/burst-{n:02d}/": {
            "claims.csv": os.urandom(rng.randint(200, 4000)),
            "members.csv": os.urandom(rng.randint(200, 4000)),
        }
        for n in range(DROPS)
    }


def puts_of(drops: dict[str, dict[str, bytes]]) -> list[tuple[str, bytes]]:
    """Each drop's files, then its marker, as a partner puts them."""
    return [(group + name, body) for group, files in drops.items() for name, body in [*files.items(), MARKER]]


def run_burst(burst: Burst, puts: list[tuple[str, bytes]], faults: list[Fault], rng: random.Random) -> None:
    """The puts in order, with the faults between them; every process is back at the end."""
    pending = {f.at: f for f in faults}
    down: list[tuple[int, float, Fault]] = []  # put index and time after which to revive
    for index, (key, body) in enumerate(puts):
        for until, after, fault in list(down):
            if index >= until and time.monotonic() >= after:
                burst.revive(fault.kind)
                down.remove((until, after, fault))
        if (fault := pending.get(index)) is not None:
            for _, _, earlier in down:  # one fault at a time: the earlier one ends first
                burst.revive(earlier.kind)
            down.clear()
            burst.kill(fault.kind)
            if fault.kind == "s3":
                time.sleep(fault.down_seconds)
                burst.revive("s3")
            else:
                down.append((index + fault.down_puts, time.monotonic() + fault.down_seconds, fault))
        burst.put(key, body)
        time.sleep(rng.uniform(0, 0.4))
    for _, after, fault in down:
        time.sleep(max(0.0, after - time.monotonic()))
        burst.revive(fault.kind)


def staged_groups(platform: Platform) -> set[str]:
    engine = sa.create_engine(platform.env()["METADATA_DB_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT grouping_key FROM submission WHERE status = 'staged'")).scalars().all()
    engine.dispose()
    return set(rows)


def submissions(platform: Platform) -> list[tuple[str, str]]:
    engine = sa.create_engine(platform.env()["METADATA_DB_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT grouping_key, status FROM submission ORDER BY grouping_key")).all()
    engine.dispose()
    return [tuple(row) for row in rows]


@pytest.fixture
def events_platform(tmp_path):
    copy = fresh_copy(tmp_path / "copy")
    (tmp_path / "nats").mkdir()
    nats = NatsServer(tmp_path / "nats").start()
    settings = nats.settings(RECONCILE_MINUTES="1")
    events = events_environment(settings)
    platform = Platform(copy, tmp_path, "event-outages", events)
    ensure_bucket(platform.s3.client(), platform.bucket)
    bridge_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "EVENTS_", "NATS_"))},
        "MINIO_ENDPOINT": platform.s3.endpoint,
        "MINIO_ACCESS_KEY": platform.s3.access_key,
        "MINIO_SECRET_KEY": platform.s3.secret_key,
        "MINIO_BUCKET": platform.bucket,
        **events,
    }
    bridge = Bridge(bridge_env, tmp_path / "bridge.log")
    bridge.start()
    try:
        yield Burst(platform, nats, bridge), settings
    finally:
        bridge.kill()
        platform.close()
        nats.stop()


def test_every_drop_of_a_burst_is_staged_once_while_bridge_nats_and_s3_are_killed(events_platform, ledger):
    burst, settings = events_platform
    rng = random.Random(SEED)
    print(f"\nevent outages: seed {SEED} (EVENT_OUTAGES_SEED={SEED} replays it)", flush=True)
    drops = burst_drops(rng)
    puts = puts_of(drops)
    faults = plan(rng, len(puts))
    print(f"event outages: {len(puts)} puts, faults {faults}", flush=True)
    burst.platform.start()
    assert "inbox discovery: DISCOVERY_MODE=events" in burst.platform.dev.log.read_text()

    began = time.monotonic()
    run_burst(burst, puts, faults, rng)
    burst_seconds = time.monotonic() - began
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while (missing := set(drops) - staged_groups(burst.platform)) and time.monotonic() < deadline:
        time.sleep(5)
    seconds = time.monotonic() - began
    announced = {m.body for m in stream_messages(settings)}
    unannounced = [key for key, _ in puts if not any(key.encode() in body for body in announced)]
    print(
        f"event outages: seed {SEED}: burst {burst_seconds:.0f} s, all staged after {seconds:.0f} s; "
        f"{len(unannounced)} of {len(puts)} puts never reached the stream",
        flush=True,
    )
    assert not missing, f"seed {SEED}: not staged within {CONVERGE_TIMEOUT} s: {sorted(missing)}"
    # The bridge replays the filer's log from its checkpoint: what was put while it or NATS was down is
    # published once they are back, so events mode did not stand on the reconciliation alone.
    assert not unannounced, f"seed {SEED}: puts the stream never had: {unannounced}"

    rows = submissions(burst.platform)
    assert rows == [(group, "staged") for group in sorted(drops)], f"seed {SEED}: {rows}"
    for group, files in drops.items():
        state = staged_state(burst.platform.env(), burst.platform.s3.client(), group, files)
        wrong = state["raw_unrecorded"] + state["raw_unprotected"] + state["raw_extra_versions"]
        ledger.update(files_checked=state["files_checked"], files_lost=state["files_lost"])
        ledger.update(files_duplicated=state["files_duplicated"], inbox_versions_left=state["inbox_versions_left"])
        ledger.update(raw_versions_checked=state["raw_versions_checked"], raw_versions_wrong=wrong)
        assert (state["submissions"], state["staged_submissions"]) == (1, 1), (SEED, group, state)
        assert (state["files_lost"], state["files_duplicated"]) == (0, 0), (SEED, group, state)
        assert state["manifests_ok"], (SEED, group, state)
        assert (state["inbox_left"], state["inbox_rows_unremoved"]) == (0, 0), (SEED, group, state)
        assert (wrong, state["inbox_versions_left"]) == (0, 0), (SEED, group, state)
    ledger.update(event_outage_bursts=1, event_outage_faults=len(faults), event_outage_drops=len(drops))
    ledger.event_outages.append((SEED, len(drops), len(faults), seconds))
