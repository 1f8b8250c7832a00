"""Events in time windows: oldest first, a bookmark per completed window, end_date jobs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from tap_lago.client import MAX_WINDOWS, parse_datetime

from tests.tap.conftest import run_tap, tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = {"seed": 13, "customers": 6, "events": 900, "months": 3}
EVENTS = "/api/v1/events"


def event_windows(sandbox: Any) -> list[tuple[dt.datetime, dt.datetime]]:
    """(timestamp_from, timestamp_to) of each page request of the events list, in order.

    ``timestamp_to`` reaches the last microsecond of its millisecond (``….999999Z`` for a
    bound of ``….999``): the bound is given here as that millisecond.
    """
    out = []
    for entry in sandbox.requests():
        query = parse_qs(entry["query"])
        if entry["path"] == EVENTS and "timestamp_from" in query and entry["status"] == 200:
            high = query["timestamp_to"][0]
            assert high.endswith("999Z"), high
            upper = parse_datetime(high)
            out.append(
                (
                    parse_datetime(query["timestamp_from"][0]),
                    upper.replace(microsecond=upper.microsecond // 1000 * 1000),
                )
            )
    return out


def event_keys(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["transaction_id"], r["external_subscription_id"]) for r in records}


def test_windows_run_oldest_first_and_each_moves_the_bookmark(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SEED)
    sb.requests(clear=True)
    result = run_tap(tap_config(sb, events_window_days=10, page_size=50), streams={"events"})
    assert event_keys(result.records["events"]) == event_keys(sb.dump()["events"])

    windows = list(dict.fromkeys(event_windows(sb)))
    assert len(windows) >= 9  # three months of events, ten days at a time
    assert windows == sorted(windows)
    assert all(high - low <= dt.timedelta(days=10) for low, high in windows)
    oldest = min(parse_datetime(e["timestamp"]) for e in sb.dump()["events"])
    assert windows[0][0] == oldest.replace(microsecond=oldest.microsecond // 1000 * 1000)

    # After each window, a STATE whose events bookmark is that window's end.
    marks = [
        s["bookmarks"]["events"].get("replication_key_value")
        for s in result.states
        if "events" in s.get("bookmarks", {})
    ]
    ends = [parse_datetime(m) for m in dict.fromkeys(m for m in marks if m)]
    assert ends == [high for _, high in windows]
    assert "progress_markers" not in result.last_state["bookmarks"]["events"]


def test_a_long_span_is_read_in_at_most_max_windows(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed={**SEED, "months": 6})
    sb.requests(clear=True)
    # Six months in windows of one day would be some 180 windows.
    result = run_tap(tap_config(sb, events_window_days=1, page_size=100), streams={"events"})
    windows = list(dict.fromkeys(event_windows(sb)))
    assert 90 <= len(windows) <= MAX_WINDOWS
    assert windows == sorted(windows)
    assert event_keys(result.records["events"]) == event_keys(sb.dump()["events"])


def test_end_date_splits_a_backfill_into_jobs(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SEED)
    events = sb.dump()["events"]
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    start, middle = stamps[0] - dt.timedelta(days=1), stamps[len(stamps) // 2]
    base = tap_config(
        sb,
        start_date=start.isoformat(),
        events_window_days=15,
        lookback_window_days=0,
        page_size=50,
    )

    first = run_tap({**base, "end_date": middle.isoformat()}, streams={"events", "fees"})
    bookmarks = first.last_state["bookmarks"]
    assert parse_datetime(bookmarks["events"]["replication_key_value"]) == middle
    assert parse_datetime(bookmarks["fees"]["replication_key_value"]) <= middle
    assert all(parse_datetime(r["timestamp"]) <= middle for r in first.records["events"])
    assert all(parse_datetime(r["created_at"]) <= middle for r in first.records["fees"])

    sb.requests(clear=True)
    second = run_tap(base, state=first.last_state, streams={"events"})
    assert min(low for low, _ in event_windows(sb)) == middle
    together = event_keys(first.records["events"]) | event_keys(second.records["events"])
    assert together == event_keys(events)
    overlap = event_keys(first.records["events"]) & event_keys(second.records["events"])
    assert all(parse_datetime(t) == middle for t in _stamps(events, overlap))


def test_an_end_date_without_a_time_reads_the_whole_of_that_day(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SEED)
    events = sb.dump()["events"]
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    day = stamps[len(stamps) // 2].date()
    on_the_day = [s for s in stamps if s.date() == day]
    assert on_the_day and max(on_the_day).time() > dt.time(0, 0)
    config = tap_config(
        sb, start_date=(stamps[0] - dt.timedelta(days=1)).isoformat(), lookback_window_days=0
    )

    result = run_tap({**config, "end_date": day.isoformat()}, streams={"events"})

    read = sorted(parse_datetime(r["timestamp"]) for r in result.records["events"])
    assert read == [s for s in stamps if s.date() <= day]  # the day's last event included
    mark = parse_datetime(result.last_state["bookmarks"]["events"]["replication_key_value"])
    assert mark == dt.datetime.combine(day, dt.time(23, 59, 59, 999_000), dt.timezone.utc)


def test_a_bookmark_past_end_date_reads_nothing_and_says_why(
    sandbox_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A job handed another job's newer bookmark (parallel runs of one extractor)."""
    sb = sandbox_factory(seed=SEED)
    stamps = sorted(parse_datetime(e["timestamp"]) for e in sb.dump()["events"])
    end = stamps[len(stamps) // 2]
    later = (stamps[-1] + dt.timedelta(days=1)).isoformat()
    state = {
        "bookmarks": {"events": {"replication_key": "timestamp", "replication_key_value": later}}
    }
    config = tap_config(sb, start_date=stamps[0].isoformat(), end_date=end.isoformat())

    with caplog.at_level(logging.WARNING):
        result = run_tap(config, state=state, streams={"events"})

    assert result.records.get("events", []) == []
    warnings = [r.getMessage() for r in caplog.records if "past end_date" in r.getMessage()]
    assert len(warnings) == 1
    assert "clear this job's state" in warnings[0]
    assert "inherit_from" in warnings[0]


def test_an_event_in_the_last_millisecond_of_a_job_is_read_by_that_job(
    sandbox_factory: Any,
) -> None:
    """Lago keeps microseconds: an event at ….9996 is neither before ….999 nor at the next
    job's start; the job ending at ….999 reads it, the next one does not."""
    sb = sandbox_factory(seed=SEED)
    events = sb.dump()["events"]
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    cut = stamps[len(stamps) // 2].replace(microsecond=0) + dt.timedelta(seconds=1)
    end = cut - dt.timedelta(milliseconds=1)
    seam = cut - dt.timedelta(microseconds=400)
    sb.upsert("events", {**events[0], "transaction_id": "seam", "timestamp": seam.isoformat()})
    base = tap_config(sb, lookback_window_days=0, events_window_days=15)

    older = run_tap(
        {**base, "start_date": stamps[0].isoformat(), "end_date": end.isoformat()},
        streams={"events"},
    )
    newer = run_tap({**base, "start_date": cut.isoformat()}, streams={"events"})

    readers = [
        name
        for name, run in (("older", older), ("newer", newer))
        if "seam" in {r["transaction_id"] for r in run.records["events"]}
    ]
    assert readers == ["older"]


def test_jobs_run_at_once_keep_their_own_bookmarks(sandbox_factory: Any, tmp_path: Path) -> None:
    """A backfill split over processes run at once (README "Scaling a backfill out"): each
    job ends 1 ms before the next starts and keeps its own state; together they read every
    event once, no bookmark passes its job's end_date, and a job run again from its own
    state reads nothing of the others' ranges."""
    sb = sandbox_factory(seed=SEED)
    events = sb.dump()["events"]
    stamps = sorted(parse_datetime(e["timestamp"]) for e in events)
    cuts = [stamps[0], stamps[len(stamps) // 3], stamps[2 * len(stamps) // 3]]
    ms = dt.timedelta(milliseconds=1)
    jobs = []
    for number, low in enumerate(cuts):
        config = tap_config(
            sb, start_date=low.isoformat(), lookback_window_days=0, max_requests_per_second=0
        )
        if number + 1 < len(cuts):
            config["end_date"] = (cuts[number + 1] - ms).isoformat()
        path = tmp_path / f"job{number}.json"
        path.write_text(json.dumps(config))
        jobs.append(path)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(_events_only_catalog(jobs[0])))

    def start(config: Path, state: Path | None = None) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "tap_lago", "--config", str(config)]
        command += ["--catalog", str(catalog), *(["--state", str(state)] if state else [])]
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT
        )

    running = [start(job) for job in jobs]
    outputs = [proc.communicate(timeout=300)[0] for proc in running]
    assert all(proc.returncode == 0 for proc in running)
    results = [[json.loads(line) for line in out.splitlines()] for out in outputs]
    keys = [event_keys([m["record"] for m in r if m["type"] == "RECORD"]) for r in results]
    assert set().union(*keys) == event_keys(events)
    assert sum(len(k) for k in keys) == len(event_keys(events)), "an event was read twice"
    states = [[m["value"] for m in r if m["type"] == "STATE"][-1] for r in results]
    for number, state in enumerate(states[:-1]):
        mark = parse_datetime(state["bookmarks"]["events"]["replication_key_value"])
        assert mark == cuts[number + 1] - ms

    state_path = tmp_path / "state0.json"
    state_path.write_text(json.dumps(states[0]))
    again, _ = start(jobs[0], state_path).communicate(timeout=300)
    reread = [json.loads(line) for line in again.splitlines()]
    assert all(
        parse_datetime(m["record"]["timestamp"]) <= cuts[1] - ms
        for m in reread
        if m["type"] == "RECORD"
    )


def _stamps(events: list[dict[str, Any]], keys: set[tuple[str, str]]) -> list[str]:
    return [
        e["timestamp"]
        for e in events
        if (e["transaction_id"], e["external_subscription_id"]) in keys
    ]


def test_a_killed_backfill_resumes_at_its_last_completed_window(
    sandbox_factory: Any, tmp_path: Path
) -> None:
    sb = sandbox_factory(seed=SEED)
    sb.set_faults([{"path": EVENTS, "fault": "latency", "delay_ms": 15}])
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(tap_config(sb, events_window_days=7, lookback_window_days=0, page_size=20))
    )
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(_events_only_catalog(config)))
    command = [sys.executable, "-m", "tap_lago", "--config", str(config), "--catalog", str(catalog)]

    # Kill the first run (SIGKILL) once four windows were committed.
    sb.requests(clear=True)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT
    )
    assert proc.stdout is not None
    emitted: set[tuple[str, str]] = set()
    state, committed = None, []
    for line in proc.stdout:
        message = json.loads(line)
        if message["type"] == "RECORD":
            emitted |= event_keys([message["record"]])
        elif message["type"] == "STATE":
            mark = message["value"]["bookmarks"].get("events", {}).get("replication_key_value")
            if mark and mark not in committed:
                committed.append(mark)
                state = message["value"]
                if len(committed) == 4:
                    break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert state is not None and len(committed) == 4, "the run ended before four windows"
    killed_windows = list(dict.fromkeys(event_windows(sb)))
    bookmark = parse_datetime(committed[-1])

    # The rerun starts at that window's end: no completed window is asked again.
    sb.requests(clear=True)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    rerun = subprocess.run(
        [*command, "--state", str(state_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ},
        check=False,
    )
    sb.set_faults([])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    windows = list(dict.fromkeys(event_windows(sb)))
    assert windows and windows[0][0] == bookmark
    assert not set(windows) & set(killed_windows[:4])
    for line in rerun.stdout.splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            emitted |= event_keys([message["record"]])
    assert emitted == event_keys(sb.dump()["events"])


def _events_only_catalog(config: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tap_lago", "--config", str(config), "--discover"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=True,
    )
    catalog = json.loads(proc.stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] == "events"
    return dict(catalog)
