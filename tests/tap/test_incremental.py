"""Bookmarks: a second sync emits only what changed; nothing is lost around a sync."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from tap_lago.client import LagoPaginator, parse_datetime

from tests.tap.conftest import SyncResult, parse_messages, run_tap, tap_config
from tests.tap.test_sync import DUMPED_STREAMS, expected_from_dump, key_of

REPO_ROOT = Path(__file__).resolve().parents[2]
INCREMENTAL = {
    "invoices": "updated_at",
    "credit_notes": "updated_at",
    "fees": "created_at",
    "events": "timestamp",
}


def iso_ms(value: dt.datetime) -> str:
    return (
        value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def bookmark(state: dict[str, Any], stream: str) -> dt.datetime:
    return parse_datetime(state["bookmarks"][stream]["replication_key_value"])


def keys(result: SyncResult, stream: str) -> set[tuple[Any, ...]]:
    found = result.keys(stream, key_of(stream))
    assert len(found) == len(set(found)), f"{stream}: a key was emitted twice in one run"
    return set(found)


def test_second_sync_emits_only_what_changed(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed={"seed": 7, "customers": 10, "events": 500})
    config = tap_config(sb, lookback_window_days=1)
    first = run_tap(config)
    state = first.last_state
    before = sb.dump()

    # Changes between the two syncs.
    customer = sb.upsert(
        "customers", {"lago_id": before["customers"][3]["lago_id"], "name": "Renamed"}
    )[0]
    invoice = next(
        i
        for i in before["invoices"]
        if i["status"] == "finalized" and i["payment_status"] != "succeeded"
    )
    paid = sb.upsert("invoices", {"lago_id": invoice["lago_id"], "payment_status": "succeeded"})[0]
    template = before["events"][0]
    late_ts = bookmark(state, "events") - dt.timedelta(hours=2)
    late, fresh = sb.upsert(
        "events",
        [
            {
                **_event_fields(template),
                "transaction_id": "late-event-1",
                "timestamp": iso_ms(late_ts),
            },
            {
                **_event_fields(template),
                "transaction_id": "fresh-event-1",
                "timestamp": iso_ms(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)),
            },
        ],
    )
    fee = sb.upsert("fees", {"lago_invoice_id": invoice["lago_id"]})[0]

    second = run_tap(config, state=state)
    after = sb.dump()

    # The changed objects are emitted, with their new values.
    emitted_customers = {r["lago_id"]: r for r in second.records["customers"]}
    assert emitted_customers[customer["lago_id"]]["name"] == "Renamed"
    emitted_invoices = {r["lago_id"]: r for r in second.records["invoices"]}
    assert emitted_invoices[paid["lago_id"]]["payment_status"] == "succeeded"
    assert (late["transaction_id"], late["external_subscription_id"]) in keys(second, "events")
    assert (fresh["transaction_id"], fresh["external_subscription_id"]) in keys(second, "events")
    assert (fee["lago_id"],) in keys(second, "fees")

    # And nothing else, but for the inclusive bookmark boundary (and the event lookback).
    expected = expected_from_dump(after)
    lookback = dt.timedelta(days=1)
    for stream, field in INCREMENTAL.items():
        since = bookmark(state, stream) - (lookback if stream == "events" else dt.timedelta(0))
        wanted = {k for k, o in expected[stream].items() if parse_datetime(o[field]) >= since}
        assert keys(second, stream) == wanted, stream
        assert len(wanted) < len(expected[stream]) / 2, f"{stream}: second sync re-read too much"
    # Full-table streams are read whole every time.
    assert keys(second, "plans") == set(expected["plans"])
    assert keys(second, "customers") == set(expected["customers"])

    # Bookmarks moved forward and never past the sync's start.
    for stream in INCREMENTAL:
        assert bookmark(second.last_state, stream) >= bookmark(state, stream)
        assert bookmark(second.last_state, stream) <= dt.datetime.now(dt.timezone.utc)


def _event_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("external_subscription_id", "code", "properties")}


def test_events_are_filtered_server_side_from_bookmark_minus_lookback(sandbox: Any) -> None:
    config = tap_config(sandbox, start_date="2026-01-01T00:00:00Z", lookback_window_days=2)
    first = run_tap(config, streams={"events"})
    state = first.last_state
    sandbox.requests(clear=True)
    run_tap(config, state=state, streams={"events"})
    queries = [r["query"] for r in sandbox.requests() if r["path"].endswith("/events")]
    assert queries, "the events endpoint was not called"
    since = bookmark(state, "events") - dt.timedelta(days=2)
    for query in queries:
        params = dict(p.split("=", 1) for p in query.split("&"))
        assert parse_datetime(_unquote(params["timestamp_from"])) == since
        assert "timestamp_to" in params


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


def test_records_inserted_while_paging_are_emitted_now_or_next_time(
    sandbox_factory: Any,
) -> None:
    sb = sandbox_factory(seed={"seed": 11, "customers": 12, "events": 400})
    sb.set_faults([{"path": "/api/v1/", "fault": "latency", "delay_ms": 40}])
    config = tap_config(sb, page_size=10)
    original = expected_from_dump(sb.dump())
    inserted: dict[str, list[tuple[Any, ...]]] = {"customers": [], "events": []}
    renamed: dict[str, str] = {}
    # Customers on the first and the last page: one is read before it changes, one after.
    movers = [c["lago_id"] for c in sb.dump()["customers"]]
    movers = [movers[0], movers[-1]]
    done = threading.Event()

    def writer() -> None:
        template = sb.dump()["events"][0]
        for n in range(60):  # bounded: at most 60 rounds
            if done.wait(0.05):
                return
            for lago_id in (movers[n % 2], movers[(n + 1) % 2]):
                sb.upsert("customers", {"lago_id": lago_id, "name": f"renamed-{n}"})
                renamed[lago_id] = f"renamed-{n}"
            cust = sb.upsert("customers", {"external_id": f"paging-{n}", "name": f"Paging {n}"})[0]
            inserted["customers"].append((cust["lago_id"],))
            now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=500)
            ev = sb.upsert(
                "events",
                {
                    **_event_fields(template),
                    "transaction_id": f"paging-{n}",
                    "timestamp": iso_ms(now),
                },
            )[0]
            inserted["events"].append((ev["transaction_id"], ev["external_subscription_id"]))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        first = run_tap(config, streams={"customers", "events"})
    finally:
        done.set()
        thread.join(timeout=30)
    sb.set_faults([])
    assert inserted["customers"] and inserted["events"], "nothing was inserted during the sync"
    second = run_tap(config, state=first.last_state, streams={"customers", "events"})

    for stream in ("customers", "events"):
        # Shifting pages never lose an object that existed before the sync...
        assert set(original[stream]) <= keys(first, stream), stream
        # ...and every object created during it is emitted by this sync or the next.
        assert set(inserted[stream]) <= keys(first, stream) | keys(second, stream), stream
    # A customer changed during the sync is emitted with its last value, now or next time.
    latest = {r["lago_id"]: r["name"] for run in (first, second) for r in run.records["customers"]}
    assert renamed
    for lago_id, name in renamed.items():
        assert latest[lago_id] == name


def test_change_behind_the_reader_is_emitted_next_time(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record changed after its page was read, while a later one changed before its page
    was read, must not fall under the bookmark (the signpost caps it at the sync's start).
    Invoices: a stream filtered client-side on ``updated_at``."""
    sb = sandbox_factory(seed={"seed": 3, "customers": 12, "events": 0})
    listed = [i["lago_id"] for i in sb.dump()["invoices"] if i["status"] == "finalized"]
    behind, ahead = listed[0], listed[-1]
    original_advance = LagoPaginator.advance
    fired: list[bool] = []

    def advance(self: LagoPaginator, response: Any) -> None:
        original_advance(self, response)
        if not fired and "/invoices" in response.request.path_url:
            fired.append(True)
            sb.upsert("invoices", {"lago_id": behind, "number": "changed-after-read"})
            time.sleep(1.1)  # updated_at has second precision: move to the next second
            sb.upsert("invoices", {"lago_id": ahead, "number": "changed-before-read"})

    monkeypatch.setattr(LagoPaginator, "advance", advance)
    # One page at a time, so "before its page was read" is well defined (with windows read
    # at once, the last page may be read during the sleep; the bookmark rule is the same).
    config = tap_config(sb, page_size=5, max_concurrency=1)
    first = run_tap(config, streams={"invoices"})
    assert fired
    numbers = {r["lago_id"]: r["number"] for r in first.records["invoices"]}
    assert numbers[ahead] == "changed-before-read"
    assert numbers[behind] != "changed-after-read"

    monkeypatch.setattr(LagoPaginator, "advance", original_advance)
    second = run_tap(config, state=first.last_state, streams={"invoices"})
    numbers = {r["lago_id"]: r["number"] for r in second.records["invoices"]}
    assert numbers.get(behind) == "changed-after-read"
    assert ahead not in numbers or numbers[ahead] == "changed-before-read"


# The tap's console entry point, with a STATE message every 20 records (the SDK default is
# 10,000) so that kills land between mid-stream STATE messages too.
_CLI = (
    "from tap_lago.client import LagoStream; LagoStream.STATE_MSG_FREQUENCY = 20; "
    "from tap_lago.tap import TapLago; TapLago.cli()"
)


def _run_cli(config_path: Path, state_path: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _CLI, "--config", str(config_path)]
    if state_path is not None:
        args += ["--state", str(state_path)]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill_after(
    proc: subprocess.Popen[str], stream: str, records: int, sig: signal.Signals
) -> list[dict[str, Any]]:
    """Read messages until ``records`` records of ``stream`` went by, then send ``sig``.

    After SIGKILL nothing more is read (what was still in the pipe counts as lost); after
    SIGTERM the rest of the output is read, as an orchestrator would, including the STATE
    the tap writes on termination.
    """
    assert proc.stdout is not None
    messages: list[dict[str, Any]] = []
    seen = 0
    for line in proc.stdout:
        message = json.loads(line)
        messages.append(message)
        if message["type"] == "RECORD" and message["stream"] == stream:
            seen += 1
            if seen >= records:
                break
    proc.send_signal(sig)
    if sig == signal.SIGTERM:
        for line in proc.stdout:
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the exit
                break
    proc.wait(timeout=30)
    assert seen >= records, f"the sync ended before {records} {stream} records"
    return messages


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_sync_killed_mid_stream_resumes_from_last_state_without_loss(
    sandbox_factory: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    sb = sandbox_factory(seed={"seed": 5, "customers": 10, "events": 600})
    sb.set_faults([{"path": "/api/v1/", "fault": "latency", "delay_ms": 5}])
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tap_config(sb, page_size=15)))
    expected = expected_from_dump(sb.dump())

    # Kill three runs at different points, each resuming from the previous one's state.
    emitted: dict[str, set[tuple[Any, ...]]] = {s: set() for s in DUMPED_STREAMS}
    state: dict[str, Any] | None = None
    for stream, count in (("customers", 4), ("events", 250), ("fees", 100)):
        state_path = None
        if state is not None:
            state_path = tmp_path / f"state-{stream}.json"
            state_path.write_text(json.dumps(state))
        messages = _kill_after(_run_cli(config_path, state_path), stream, count, sig)
        _collect(messages, emitted)
        states = [m["value"] for m in messages if m["type"] == "STATE"]
        state = states[-1] if states else state

    state_path = tmp_path / "state-final.json"
    state_path.write_text(json.dumps(state))
    proc = _run_cli(config_path, state_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    final = parse_messages(out)
    _collect(final, emitted)

    for stream in DUMPED_STREAMS:
        missing = set(expected[stream]) - emitted[stream]
        assert not missing, f"{stream}: {len(missing)} records lost across the kills"
    final_state = [m["value"] for m in final if m["type"] == "STATE"][-1]
    for stream in INCREMENTAL:
        assert "progress_markers" not in final_state["bookmarks"][stream]


def _collect(messages: list[dict[str, Any]], into: dict[str, set[tuple[Any, ...]]]) -> None:
    for m in messages:
        if m["type"] == "RECORD" and m["stream"] in into:
            into[m["stream"]].add(tuple(m["record"][k] for k in key_of(m["stream"])))


def test_first_sync_starts_at_start_date(sandbox: Any) -> None:
    dump = sandbox.dump()
    stamps = sorted(i["updated_at"] for i in dump["invoices"])
    start = parse_datetime(stamps[len(stamps) // 2])
    config = tap_config(sandbox, start_date=iso_ms(start), lookback_window_days=1)
    sandbox.requests(clear=True)
    result = run_tap(config, streams={"invoices", "credit_notes", "fees", "events"})

    day_before = (start - dt.timedelta(days=1)).date()
    invoice_queries = [r["query"] for r in sandbox.requests() if r["path"].endswith("/invoices")]
    assert invoice_queries
    # Every request skips older issuing dates (windows read at once start later still).
    lows = [parse_qs(q).get("issuing_date_from", [""])[0] for q in invoice_queries]
    assert day_before.isoformat() in lows
    assert all(low >= day_before.isoformat() for low in lows), lows

    expected = expected_from_dump(dump)
    since = {
        "invoices": start,
        "credit_notes": start,
        "fees": start,
        "events": start - dt.timedelta(days=1),
    }
    for stream, field in INCREMENTAL.items():
        wanted = {
            k
            for k, o in expected[stream].items()
            if parse_datetime(o[field]) >= since[stream]
            and (
                stream not in {"invoices", "credit_notes"}
                or dt.date.fromisoformat(o["issuing_date"]) >= day_before
            )
        }
        assert keys(result, stream) == wanted, stream
        assert wanted, f"{stream}: pick a start_date with data after it"
