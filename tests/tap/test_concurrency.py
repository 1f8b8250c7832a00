"""Pages fetched ahead (``max_concurrency``): same records, same order, faults honoured."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import operator
import threading
import time
from contextlib import redirect_stdout
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from singer_sdk.exceptions import RetriableAPIError
from singer_sdk.singerlib import (
    ActivateVersionMessage,
    Message,
    RecordMessage,
    SchemaMessage,
    StateMessage,
)
from singer_sdk.singerlib.encoding import SimpleSingerWriter
from tap_lago import client, paging
from tap_lago.date_windows import DateWindow
from tap_lago.tap import TapLago
from tap_lago.writer import LagoMessageWriter

from tests.tap.conftest import SyncResult, parse_messages, run_tap, tap_config
from tests.tap.test_sync import listed_by_api

SEED = {"seed": 8, "customers": 12, "events": 400}


def pages_requested(sandbox: Any, path: str) -> list[tuple[int, int | None]]:
    """(page, status) of every request to a list path, in arrival order."""
    out = []
    for entry in sandbox.requests():
        if entry["path"] == path:
            page = int(parse_qs(entry["query"]).get("page", ["1"])[0])
            out.append((page, entry["status"]))
    return out


def count_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the tap's requests in flight; the returned one-item list holds the peak."""
    in_flight, peak = [0], [0]
    lock = threading.Lock()
    real_send = client.LagoStream._send

    def send(self: Any, prepared: Any, context: Any) -> Any:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return real_send(self, prepared, context)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(client.LagoStream, "_send", send)
    return peak


def bookmarks(result: SyncResult) -> dict[str, Any]:
    """Final bookmark values per stream (without the sync-time signposts).

    The events bookmark is the end of the last window read, the sync's start: it differs
    between two runs by design, so it is left out.
    """
    return {
        name: value.get("replication_key_value")
        for name, value in result.last_state["bookmarks"].items()
        if name != "events"
    }


def test_same_records_in_the_same_order_as_one_request_at_a_time(sandbox: Any) -> None:
    """Invoices come in the same order within each issuing_date window (see below)."""
    serial = run_tap(tap_config(sandbox, page_size=20, max_concurrency=1))
    ahead = run_tap(tap_config(sandbox, page_size=20, max_concurrency=4))
    assert serial.records["events"], "nothing synced"
    assert len(serial.records["events"]) > 20 * 8, "too few pages to exercise page-ahead"
    by_id = operator.itemgetter("lago_id")
    expected, got = serial.records, ahead.records
    for records in (expected, got):
        records["invoices"].sort(key=by_id)
    assert without_request_time(got) == without_request_time(expected)
    assert bookmarks(ahead) == bookmarks(serial)


def without_request_time(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The records, but for lifetime usage's ``to_datetime`` (the time of each request)."""
    for record in records.get("subscription_lifetime_usage", []):
        record.pop("to_datetime")
    return records


def test_a_slow_api_gets_pages_requested_ahead_in_the_same_order(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page-ahead is off while pages come fast and starts when the API makes the tap wait:
    then page requests overlap, and the records are those of a one-at-a-time run."""
    sb = sandbox_factory(seed=SEED)
    serial = run_tap(tap_config(sb, max_concurrency=1), streams={"events"})
    sb.set_faults([{"path": "/api/v1/events", "fault": "latency", "delay_ms": 50}])
    peak = count_requests_in_flight(monkeypatch)
    ahead = run_tap(tap_config(sb, max_concurrency=4), streams={"events"})
    sb.set_faults([])

    assert len(serial.records["events"]) > 20 * 8, "too few pages to exercise page-ahead"
    assert ahead.records == serial.records
    assert bookmarks(ahead) == bookmarks(serial)
    assert peak[0] > 1, "page requests never overlapped"


def test_page_ahead_keeps_going_past_a_stale_total_pages(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``total_pages`` only bounds the fetch-ahead; ``next_page`` decides where the walk ends."""
    sb = sandbox_factory(seed=SEED, latency_ms=30)  # slow enough for page-ahead to start
    real_meta = paging.response_meta

    def understated(response: Any) -> dict[str, Any]:
        meta = dict(real_meta(response))
        if meta.get("total_pages"):
            meta["total_pages"] = 1  # as if the count were cached from long ago
        return meta

    monkeypatch.setattr(paging, "response_meta", understated)
    result = run_tap(tap_config(sb, page_size=25, max_concurrency=4), streams={"events"})
    assert len(result.records["events"]) == len(sb.dump()["events"])


def test_faults_under_concurrency_lose_nothing_and_keep_the_order(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SEED)
    baseline = run_tap(tap_config(sb, max_concurrency=1, page_size=20), streams={"events"})
    sb.requests(clear=True)
    sb.set_faults(
        [
            {
                "path": "/api/v1/events",
                "fault": "rate_limit",
                "reset_seconds": 1,
                "count": 2,
                "after": 3,
            },
            {"path": "/api/v1/events", "fault": "error", "status": 503, "count": 3, "after": 6},
            {"path": "/api/v1/events", "fault": "drop", "count": 2, "after": 9},
            {"path": "/api/v1/events", "fault": "latency", "delay_ms": 20},
        ]
    )
    result = run_tap(
        tap_config(sb, max_concurrency=4, page_size=20, request_timeout=5), streams={"events"}
    )
    fired = {r["fault"]: r["fired"] for r in sb._admin("GET", "faults")["rules"]}
    sb.set_faults([])

    assert fired["rate_limit"] == 2
    assert fired["error"] == 3
    assert fired["drop"] == 2
    assert result.records["events"] == baseline.records["events"]
    assert bookmarks(result) == bookmarks(baseline)
    # Every page that failed was asked again and finally answered.
    answered = {page for page, status in pages_requested(sb, "/api/v1/events") if status == 200}
    failed = {page for page, status in pages_requested(sb, "/api/v1/events") if status != 200}
    assert failed
    assert failed <= answered


def test_a_429_pauses_the_other_workers(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 429 asking for 2 s, no other request starts within those 2 s (except one a
    worker may have been starting at that very moment), then the sync completes."""
    sb = sandbox_factory(seed=SEED)
    workers, reset = 4, 2
    sb.set_faults(
        [
            {
                "path": "/api/v1/events",
                "fault": "rate_limit",
                "reset_seconds": reset,
                "count": 1,
                "after": 4,
            },
            {"path": "/api/v1/events", "fault": "latency", "delay_ms": 50},
        ]
    )
    starts: list[float] = []
    limited_at: list[float] = []
    real_request = client.LagoStream._send

    def request(self: Any, prepared: Any, context: Any) -> Any:
        starts.append(time.monotonic())
        try:
            return real_request(self, prepared, context)
        except RetriableAPIError as exc:
            if exc.response is not None and exc.response.status_code == 429:
                limited_at.append(time.monotonic())
            raise

    monkeypatch.setattr(client.LagoStream, "_send", request)
    result = run_tap(tap_config(sb, max_concurrency=workers, page_size=10), streams={"events"})
    sb.set_faults([])

    assert len(result.records["events"]) == len(sb.dump()["events"])
    assert len(limited_at) == 1
    pause = (limited_at[0], limited_at[0] + reset - 0.1)
    during = [t for t in starts if pause[0] < t < pause[1]]
    assert len(during) <= workers - 1, f"{len(during)} requests started during the pause"
    assert sum(t > pause[1] for t in starts) > workers, "too few requests after the pause"


def test_rows_inserted_while_paging_are_not_lost(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page read before its predecessor, with rows inserted in between, is read again.

    Page 2 is held back while page 3 is read; rows inserted at the top of the list right
    then push page 2's last rows into page 3. Without the re-read they would be in
    neither page as read. Every request is slowed a little, so page-ahead (which stays
    off while pages arrive fast) is on from page 2. Page 2 itself is held back, whichever
    request reaches the sandbox first.
    """
    sb = sandbox_factory(seed={"seed": 5, "customers": 40, "events": 0}, latency_ms=50)
    original = {c["lago_id"] for c in sb.dump()["customers"]}
    sb.requests(clear=True)
    inserted: list[str] = []
    lock = threading.Lock()
    real_request = client.LagoStream._send

    def page(prepared: Any) -> str | None:
        url = urlsplit(str(prepared.url))
        if not url.path.endswith("/customers"):
            return None
        return (parse_qs(url.query).get("page") or ["1"])[0]

    def request(self: Any, prepared: Any, context: Any) -> Any:
        if page(prepared) == "2" and not inserted:
            time.sleep(2.0)  # until page 3 is read and the rows are inserted
        response = real_request(self, prepared, context)
        if page(prepared) == "3":
            with lock:
                if not inserted:
                    new = [{"external_id": f"mid-sync-{i}", "name": f"new {i}"} for i in range(3)]
                    inserted.extend(c["lago_id"] for c in sb.upsert("customers", new))
        return response

    monkeypatch.setattr(client.LagoStream, "_send", request)
    result = run_tap(tap_config(sb, page_size=5, max_concurrency=4), streams={"customers"})

    assert inserted, "nothing was inserted during the sync"
    emitted = {r["lago_id"] for r in result.records["customers"]}
    assert original <= emitted, sorted(original - emitted)
    pages = [page for page, status in pages_requested(sb, "/api/v1/customers") if status == 200]
    assert pages.count(3) >= 2, f"page 3 was not read again: {pages}"


def test_child_requests_run_ahead_and_each_is_made_once(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Children of a page of parents are requested concurrently, each exactly once, and the
    records are those of a one-at-a-time run, in the same order."""
    sb = sandbox_factory(seed=SEED)
    streams = {"subscriptions", "customer_usage", "wallets", "wallet_transactions"}
    serial = run_tap(tap_config(sb, max_concurrency=1), streams=streams)
    sb.set_faults([{"path": "/api/v1/customers/", "fault": "latency", "delay_ms": 30}])
    sb.requests(clear=True)
    peak = count_requests_in_flight(monkeypatch)
    ahead = run_tap(tap_config(sb, max_concurrency=4), streams=streams)
    sb.set_faults([])

    active = [s for s in sb.dump()["subscriptions"] if s["status"] == "active"]
    assert len(active) > 4
    assert ahead.records == serial.records
    assert len(ahead.records["customer_usage"]) == len(active)
    usage_requests = [r for r in sb.requests() if r["path"].endswith("/current_usage")]
    assert len(usage_requests) == len(active)  # prefetched, then taken: never asked twice
    assert peak[0] > 1, "child requests never overlapped"


def invoice_windows(sandbox: Any) -> dict[DateWindow, list[int]]:
    """Pages of /invoices requested per issuing_date window, in arrival order (no probes)."""
    out: dict[DateWindow, list[int]] = {}
    for entry in sandbox.requests():
        query = parse_qs(entry["query"])
        if entry["path"] != "/api/v1/invoices" or query.get("per_page") == ["1"]:
            continue
        low, high = (query.get(f"issuing_date_{side}", [None])[0] for side in ("from", "to"))
        window = DateWindow(
            dt.date.fromisoformat(low) if low else None,
            dt.date.fromisoformat(high) if high else None,
        )
        out.setdefault(window, []).append(int(query["page"][0]))
    return out


def within(window: DateWindow, invoice: dict[str, Any]) -> bool:
    date = dt.date.fromisoformat(invoice["issuing_date"])
    return (window.low is None or date >= window.low) and (
        window.high is None or date <= window.high
    )


def test_invoices_are_read_in_windows_each_in_page_order(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invoices (newest first, count cached by Lago) are read in issuing_date windows at
    once, each one page at a time: the records are those of a serial read, each window's in
    the serial read's order, and every date is in exactly one window."""
    sb = sandbox_factory(seed=SEED)
    serial = run_tap(tap_config(sb, page_size=5, max_concurrency=1), streams={"invoices"})
    sb.requests(clear=True)
    sb.set_faults([{"path": "/api/v1/invoices", "fault": "latency", "delay_ms": 20}])
    peak = count_requests_in_flight(monkeypatch)
    windowed = run_tap(tap_config(sb, page_size=5, max_concurrency=4), streams={"invoices"})
    sb.set_faults([])

    by_id = operator.itemgetter("lago_id")
    assert len(serial.records["invoices"]) > 5 * 8, "too few pages for windows"
    assert sorted(windowed.records["invoices"], key=by_id) == sorted(
        serial.records["invoices"], key=by_id
    )
    assert bookmarks(windowed) == bookmarks(serial)
    windows = invoice_windows(sb)
    # Page 1 of the whole list comes first; the newest window takes it as its own page 1.
    assert windows.pop(DateWindow()) == [1]
    assert len(windows) >= 3, windows
    for window, pages in windows.items():
        # In page order, each page once.
        first = 2 if window.high is None else 1
        assert pages == list(range(first, first + len(pages))), (window, pages)
        in_window = [r for r in windowed.records["invoices"] if within(window, r)]
        assert in_window == [r for r in serial.records["invoices"] if within(window, r)]
    for invoice in serial.records["invoices"]:
        assert sum(within(window, invoice) for window in windows) == 1, invoice["issuing_date"]
    assert peak[0] > 1, "windows were never read at the same time"


def test_invoices_inserted_while_windows_are_read_lose_nothing(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after page 1 of an older window is read, invoices are inserted at the top of
    that window and of the newest one: rows shift down within their window, and a walk in
    page order reads every invoice that existed before (the shifted ones twice, once
    emitted)."""
    sb = sandbox_factory(seed=SEED)
    original = {i["lago_id"] for i in sb.dump()["invoices"] if listed_by_api("invoices", i)}
    sb.set_faults([{"path": "/api/v1/invoices", "fault": "latency", "delay_ms": 20}])
    inserted: list[str] = []
    lock = threading.Lock()
    real_send = client.LagoStream._send

    def send(self: Any, prepared: Any, context: Any) -> Any:
        response = real_send(self, prepared, context)
        query = parse_qs(urlsplit(str(prepared.url)).query)
        if "/invoices" in str(prepared.url) and query.get("page") == ["1"]:
            high = query.get("issuing_date_to", [None])[0]
            with lock:
                if high and query.get("per_page") != ["1"] and not inserted:
                    new = [
                        {"issuing_date": high, "status": "finalized"},
                        {"issuing_date": dt.date.today().isoformat(), "status": "finalized"},
                    ]
                    inserted.extend(i["lago_id"] for i in sb.upsert("invoices", new))
        return response

    monkeypatch.setattr(client.LagoStream, "_send", send)
    result = run_tap(tap_config(sb, page_size=5, max_concurrency=4), streams={"invoices"})
    sb.set_faults([])

    assert inserted, "nothing was inserted while the windows were read"
    emitted = [r["lago_id"] for r in result.records["invoices"]]
    assert original <= set(emitted), sorted(original - set(emitted))
    assert len(emitted) == len(set(emitted)), "an invoice was emitted twice"


def test_invoices_bookmark_waits_for_every_window(sandbox_factory: Any) -> None:
    """A window that cannot be read fails the sync, and no STATE carries an invoices
    bookmark, although other windows' records were emitted: the next run reads it all."""
    sb = sandbox_factory(seed=SEED)
    sb.set_faults([{"path": "/api/v1/invoices", "fault": "error", "status": 500, "after": 9}])
    tap = TapLago(
        config=tap_config(sb, page_size=5, max_concurrency=4, max_retries=1),
        parse_env_config=False,
    )
    for name, stream in tap.streams.items():
        stream.selected = name == "invoices"
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(RetriableAPIError):
        tap.sync_all()
    sb.set_faults([])
    messages = parse_messages(out.getvalue())
    assert any(m["type"] == "RECORD" for m in messages), "no window was read before the error"
    for state in (m["value"] for m in messages if m["type"] == "STATE"):
        assert "replication_key_value" not in state.get("bookmarks", {}).get("invoices", {})


def test_max_concurrency_must_be_positive(sandbox: Any) -> None:
    from singer_sdk.exceptions import ConfigValidationError
    from tap_lago.tap import TapLago

    with pytest.raises(ConfigValidationError) as excinfo:
        TapLago(config=tap_config(sandbox, max_concurrency=0), parse_env_config=False)
    assert any("max_concurrency" in error for error in excinfo.value.errors)


# The write path ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"a": 'é ✓ \u2028 "quoted" \\ tab\t', "n": None, "b": True, "i": 2**62},
        {"amount": decimal.Decimal("12.50"), "tiny": decimal.Decimal("1E-7"), "f": 0.1},
        {"nested": {"list": [1, 2.5, {"x": []}], "empty": {}}, "when": "2026-01-01T00:00:00Z"},
    ],
)
def test_record_lines_match_the_sdk_writer(record: dict[str, Any]) -> None:
    """The orjson line holds what the SDK's writer would have printed: same keys, same
    values (decimals exact), one line; only non-ASCII text is UTF-8 instead of escapes."""
    message = RecordMessage(
        stream="events",
        record=record,
        time_extracted=dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc),
    )
    ours = LagoMessageWriter().serialize_message(message)
    sdk = SimpleSingerWriter().serialize_message(message)
    assert len(ours.splitlines()) == 1
    assert json.loads(ours, parse_float=decimal.Decimal) == json.loads(
        sdk, parse_float=decimal.Decimal
    )
    if sdk.encode().decode("unicode_escape") == sdk:  # nothing escaped: byte for byte
        assert ours == sdk


@pytest.mark.parametrize(
    "message",
    [
        SchemaMessage(
            stream="customer_usage",
            schema={"type": "object", "properties": {"a": {"type": ["null", "string"]}}},
            key_properties=["a"],
        ),
        StateMessage(value={"bookmarks": {"fees": {"replication_key_value": None}}}),
        ActivateVersionMessage(stream="plans", version=1764000000),
        RecordMessage(stream="taxes", record={"a": None}, version=3),
    ],
    ids=operator.attrgetter("type"),
)
def test_other_lines_match_the_sdk_writer_byte_for_byte(message: Message) -> None:
    """SCHEMA, STATE and ACTIVATE_VERSION lines (written without the SDK's deep copy) are
    the SDK writer's, byte for byte, and leave the message as it was."""
    before = message.to_dict()
    assert LagoMessageWriter().serialize_message(message) == (
        SimpleSingerWriter().serialize_message(message)
    )
    assert message.to_dict() == before


def test_records_off_their_schema_still_get_the_sdk_conformance(
    sandbox_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A record with a field the schema lacks takes the SDK path: the field is dropped."""
    sb = sandbox_factory(seed={"seed": 2, "customers": 3, "events": 0})
    target = sb.dump()["customers"][0]["lago_id"]
    sb.upsert("customers", {"lago_id": target, "not_in_the_schema": 1})
    listed = requests.get(
        f"{sb.url}/customers", headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=10
    ).json()["customers"]
    assert any("not_in_the_schema" in c for c in listed), "the sandbox did not keep the field"
    result = run_tap(tap_config(sb), streams={"customers"})
    assert len(result.records["customers"]) == 3
    assert all("not_in_the_schema" not in r for r in result.records["customers"])
    assert json.dumps(result.records["customers"])  # still plain JSON


# First pages fetched ahead of their stream's turn ----------------------------------------


def message_sequence(result: SyncResult) -> list[tuple[str, str | None]]:
    """(type, stream) of every message but STATE, in order (records as their stream)."""
    return [(m["type"], m.get("stream")) for m in result.messages if m["type"] != "STATE"]


def test_first_pages_fetched_ahead_change_nothing_but_the_wait(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stream's records, their order, the messages around them and the bookmarks are
    those of a run that reads each page at its stream's turn; no request is made twice.

    Pages fetched ahead: every stream's first, a parent's next ones (with their children's
    requests), and further pages of the streams to sync next as streams start."""
    sb = sandbox_factory(seed=SEED)
    sb.set_faults([{"path": "/api/v1/", "fault": "latency", "delay_ms": 10}])
    config = tap_config(sb, max_concurrency=4, start_date="2020-01-01T00:00:00Z")
    skip = set(TapLago(config=config, parse_env_config=False).streams) - {
        "taxes", "billable_metrics", "plans", "customers", "wallets", "wallet_transactions",
        "subscriptions", "customer_usage", "credit_notes", "fees", "invoices", "gross_revenue",
    }  # fmt: skip
    streams = set(TapLago(config=config, parse_env_config=False).streams) - skip
    real = TapLago.fetch_first_pages_ahead
    monkeypatch.setattr(TapLago, "fetch_first_pages_ahead", lambda self, current: None)
    sb.requests(clear=True)
    at_their_turn = run_tap(config, streams=streams)
    requests_at_their_turn = sorted(r["path"] for r in sb.requests(clear=True))

    taken = []
    real_attempt = paging.PagingStream._attempt

    def attempt(self: Any, prepared: Any, context: Any) -> Any:
        if context is None and self.prefetching and str(prepared.url) in self._prefetched:
            page = int(parse_qs(urlsplit(str(prepared.url)).query).get("page", ["1"])[0])
            taken.append((self.name, page))
        return real_attempt(self, prepared, context)

    monkeypatch.setattr(TapLago, "fetch_first_pages_ahead", real)
    monkeypatch.setattr(paging.PagingStream, "_attempt", attempt)
    ahead = run_tap(config, streams=streams)
    requests_ahead = sorted(r["path"] for r in sb.requests(clear=True))
    sb.set_faults([])

    assert at_their_turn.records["fees"] and at_their_turn.records["credit_notes"]
    for result in (at_their_turn, ahead):
        result.records["invoices"].sort(key=operator.itemgetter("lago_id"))
    assert ahead.records == at_their_turn.records
    assert message_sequence(ahead) == message_sequence(at_their_turn)
    assert ahead.last_state == at_their_turn.last_state
    assert requests_ahead == requests_at_their_turn  # each first page asked for once
    # The incremental streams too: their first request is worked out before their turn.
    first = {"taxes", "plans", "subscriptions", "credit_notes", "fees", "invoices"}
    assert first <= {name for name, page in taken if page == 1}
    assert any(page > 1 for name, page in taken), "no page but the first was read ahead"


def test_an_error_on_a_page_fetched_ahead_surfaces_at_its_streams_turn(
    sandbox_factory: Any,
) -> None:
    """A stream refused for good (here: a key that may not read analytics) fails the run
    only when its turn comes: every earlier stream is complete, its own output is empty."""
    sb = sandbox_factory(seed={"seed": 5, "customers": 4, "events": 0})
    sb.configure(premium=True, read_denied=["analytic"])
    config = tap_config(sb, max_concurrency=4)
    tap = TapLago(config=config, parse_env_config=False)
    order = ["taxes", "customers", "coupons", "gross_revenue"]
    for name, stream in tap.streams.items():
        stream.selected = name in order
    buf = io.StringIO()
    sb.requests(clear=True)
    with redirect_stdout(buf), pytest.raises(Exception, match="read_action_not_allowed") as exc:
        tap.sync_all()
    assert "gross_revenue" in str(exc.value)
    result = SyncResult(parse_messages(buf.getvalue()), buf.getvalue())
    dump = sb.dump()
    for name in ("taxes", "customers"):
        assert len(result.records[name]) == len(dump[name]) > 0, name
    assert not any(
        m.get("stream") == "gross_revenue"
        for m in result.messages[1:]
        if m["type"] in {"RECORD", "ACTIVATE_VERSION"}
    )
    analytics = [r for r in sb.requests() if r["path"].endswith("/analytics/gross_revenue")]
    assert len(analytics) == 1  # fetched ahead, refused once, the error raised from it
