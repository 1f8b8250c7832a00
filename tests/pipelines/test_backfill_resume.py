"""A backfill through Meltano into PostgreSQL, split by end_date, killed, and resumed.

Meltano 4.4.1 stores every STATE the *target* emits as it arrives ("Incremental state has
been updated"). The tap writes a STATE after each events window, but target-postgres (like
every SDK target) forwards STATE only when it drains its sinks: at the end of the run, or
once records are five minutes old. So a run killed within its first five minutes leaves
Meltano with the bookmark of the last completed job, and the rerun starts there: the
windows of completed jobs are never read again. (The tap alone resumes at its last
completed window: tests/tap/test_windows.py.)
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from tap_lago.client import parse_datetime

from tests.lago_sandbox import Sandbox
from tests.pg import PostgresServer
from tests.pipelines.harness import ROOT, Meltano, meltano_bin, table_values

pytestmark = pytest.mark.usefixtures("meltano_installed")

STATE_ID = "dev:tap-lago-to-target-postgres"


def _windows(lago: Sandbox) -> list[tuple[dt.datetime, dt.datetime]]:
    """Distinct (timestamp_from, timestamp_to) of the events pages answered, in order."""
    out = []
    for entry in lago.requests():
        query = parse_qs(entry["query"])
        if entry["path"] == "/api/v1/events" and "timestamp_from" in query:
            window = (
                parse_datetime(query["timestamp_from"][0]),
                parse_datetime(query["timestamp_to"][0]),
            )
            if window not in out:
                out.append(window)
    return out


def _stored_bookmark(meltano: Meltano) -> dt.datetime:
    state = meltano.stored_state(STATE_ID)
    return parse_datetime(state["bookmarks"]["events"]["replication_key_value"])


def test_killed_backfill_resumes_from_the_stored_bookmark(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 13, "customers": 6, "events": 1500, "months": 3})
    events = lago.dump()["events"]
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    start, middle = stamps[0] - dt.timedelta(days=1), stamps[len(stamps) // 2]
    meltano = Meltano(
        workdir,
        source=lago,
        warehouse=warehouse,
        extra_env={
            "TAP_LAGO__SELECT_FILTER": '["events"]',
            "TAP_LAGO_START_DATE": start.isoformat(),
            "TAP_LAGO_END_DATE": middle.isoformat(),
            "TAP_LAGO_EVENTS_WINDOW_DAYS": "5",
            "TAP_LAGO_LOOKBACK_WINDOW_DAYS": "0",
            "TAP_LAGO_PAGE_SIZE": "20",
            "TAP_LAGO_MAX_CONCURRENCY": "1",
        },
    )

    # Job 1: the first half, up to end_date. Meltano stores its final bookmark.
    meltano.run("tap-lago", "target-postgres")
    assert _stored_bookmark(meltano) == middle

    # Job 2: the rest, killed with SIGKILL (the whole process group) after three windows.
    del meltano.extra_env["TAP_LAGO_END_DATE"]
    lago.set_faults([{"path": "/api/v1/events", "fault": "latency", "delay_ms": 30}])
    lago.requests(clear=True)
    proc = subprocess.Popen(
        [meltano_bin(), "run", "tap-lago", "target-postgres"],
        env=meltano.env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_windows(lago)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "job 2 ended before it could be killed"
        assert len(_windows(lago)) >= 4, "job 2 never reached its fourth window"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed = _windows(lago)
    assert killed[0][0] == middle
    assert _stored_bookmark(meltano) == middle  # no STATE reached Meltano before the kill

    # The rerun (--force: the killed job still looks alive) starts at the stored bookmark.
    lago.set_faults([])
    lago.requests(clear=True)
    meltano.run("--force", "tap-lago", "target-postgres")
    windows = _windows(lago)
    assert windows[0][0] == middle
    assert all(low >= middle for low, _ in windows)
    assert _stored_bookmark(meltano) > stamps[-1]

    rows = table_values(warehouse, "lago", "events", '"transaction_id", "external_subscription_id"')
    assert sorted(rows) == sorted(
        (e["transaction_id"], e["external_subscription_id"]) for e in events
    )
