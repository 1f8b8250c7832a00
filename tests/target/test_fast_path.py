"""The fast path: compiled validation, fast timestamps and ids, many requests in flight.

Each shortcut must give exactly the answer of the slow path it replaces, and exactly-once
delivery must hold with 8 requests in flight under faults.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import io
import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pendulum
import pytest
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks.core import JSONSchemaValidator
from target_lago.actions.events import transaction_id
from target_lago.client import LagoClient, LagoEndpointError
from target_lago.inflight import InFlight
from target_lago.mapping import to_epoch
from target_lago.target import RecordsRejectedError, TargetLago
from target_lago.validation import RecordValidator

from tests.lago_sandbox import Sandbox
from tests.target.conftest import both_event_stores
from tests.target.helpers import (
    EVENT_PROPS,
    dead_letters,
    record,
    run_target,
    schema,
    state,
    stored_as,
    usage_rows,
)

BATCH = "/api/v1/events/batch"

# Validation ----------------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "i": {"type": "integer"},
            "n": {"type": ["number", "null"]},
            "s": {"type": "string", "format": "date-time", "description": "text"},
            "b": {"type": "boolean"},
            "o": {"type": "object"},
            "a": {"type": "array"},
            "any": {},
        },
    },
    {  # keywords the fast path does not compile: checked per property by jsonschema
        "type": "object",
        "properties": {
            "i": {"type": "integer", "minimum": 0},
            "e": {"enum": ["a", "b"]},
            "o": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "l": {"type": "array", "items": {"type": "string"}},
            "u": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
        "required": ["i"],
    },
    {  # closed objects and references
        "type": "object",
        "properties": {"i": {"$ref": "#/$defs/count"}, "s": {"type": "string"}},
        "$defs": {"count": {"type": "integer"}},
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"s": {"type": "string"}}, "additionalProperties": False},
]
VALUES: list[Any] = [
    None, True, False, 0, -3, 7, 5.0, 2.5, decimal.Decimal("2.5"), decimal.Decimal("4"),
    "", "a", "2025-01-01T00:00:00Z", {}, {"x": 1}, {"x": "1"}, [], ["a"], [1],
]  # fmt: skip


def _verdict(validator: Any, rec: dict[str, Any]) -> str | None:
    try:
        validator.validate(rec)
    except InvalidRecord as exc:
        return exc.error_message
    return None


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_compiled_validation_accepts_and_refuses_exactly_what_jsonschema_does(
    index: int,
) -> None:
    stream_schema = SCHEMAS[index]
    fast = RecordValidator(stream_schema)
    full = JSONSchemaValidator(stream_schema)
    names = [*stream_schema["properties"], "extra"]
    checked = 0
    for name in names:
        for value in VALUES:
            for rec in ({name: value}, {"i": 1, name: value}):
                expected = _verdict(full, rec)
                got = _verdict(fast, rec)
                assert (got is None) == (expected is None), (stream_schema, rec, got, expected)
                if expected is not None:  # jsonschema's own words, plus the field
                    assert got is not None
                    assert expected in got
                checked += 1
    assert checked == 2 * len(names) * len(VALUES)


def test_a_value_of_the_wrong_type_is_dead_lettered_naming_its_field(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    props = {**EVENT_PROPS, "units": {"type": ["number", "null"]}}
    rows = usage_rows(250, ["sub_a", "sub_b"], metric_code)
    bad_ids = {rows[i]["id"] for i in (3, 120, 249)}
    for row in rows:
        if row["id"] in bad_ids:
            row["units"] = "lots"

    run = run_target(
        config, [schema("events", props, ["id"]), *(record("events", r) for r in rows)]
    )

    assert isinstance(run.error, RecordsRejectedError)
    assert run.counts["events"]["delivered"] == 247
    assert run.counts["events"]["rejected"] == 3
    assert len(lago.dump()["events"]) == 247
    letters = dead_letters(config["dead_letter_path"])
    assert {line["record"]["id"] for line in letters} == bad_ids
    for line in letters:
        assert line["stream"] == "events"
        assert line["http_status"] is None
        assert line["details"] == {"units": ["schema_validation"]}
        assert "field 'units'" in line["message"]
        assert "'lots' is not of type" in line["message"]


# Mapping -------------------------------------------------------------------------------


def _reference_epoch(text: str) -> int | str:
    """Epoch seconds of an ISO-8601 text, the slow way (pendulum and Decimal)."""
    parsed = pendulum.parse(text)
    assert isinstance(parsed, dt.datetime)
    moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    seconds = decimal.Decimal(int(moment.replace(microsecond=0).timestamp()))
    seconds += decimal.Decimal(moment.microsecond).scaleb(-6)
    if seconds == seconds.to_integral_value():
        return int(seconds)
    return format(seconds.normalize(), "f")


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-01T00:00:00Z",
        "2025-01-01T00:00:00.000Z",
        "2025-03-09T13:14:15.120Z",
        "2025-03-09T13:14:15.000120Z",
        "2025-03-09T13:14:15.5Z",  # one fraction digit: not the fast form
        "2025-03-09T13:14:15+05:30",
        "2025-03-09T13:14:15.250-08:00",
        "2025-03-09T13:14:15",
        "2025-03-09",
        "2024-02-29T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
    ],
)
def test_timestamps_read_fast_equal_the_slow_reading(text: str) -> None:
    assert to_epoch(text) == _reference_epoch(text)


@pytest.mark.parametrize("text", ["2025-02-30T10:00:00Z", "2025-01-01T24:00:00Z", "soon"])
def test_impossible_timestamps_are_still_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not ISO-8601"):
        to_epoch(text)


def test_derived_transaction_ids_never_change_between_versions() -> None:
    # Pinned since ids stopped depending on the stream name (0.2): a changed id would
    # store a replayed row twice.
    assert transaction_id("api_calls", {"id": 1}, ["id"]) == (
        "tl-30d8a71a874cd3587ad090ce6dca09e51c422a58"
    )
    row = {"id": "row-\u00e9-7", "day": "2025-01-01", "loaded_at": "2026-01-01"}
    assert transaction_id("storage", row, ["id", "day"]) == (
        "tl-bb44ad165440d0a07f50bf335c7f0bfc281d1195"
    )
    assert transaction_id("api_calls", {"id": 1.5}, ["id"]) == (
        "tl-0848ec91ecb8778f4175f5715ea269551b7d7afb"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"id": 1}, {"id": 1.0}),
        ({"id": 1}, {"id": "1"}),
        ({"id": 1}, {"id": Decimal("1.00")}),
        ({"id": 7, "day": "2025-01-01T00:00:00Z"}, {"id": 7, "day": "2025-01-01T00:00:00+00:00"}),
        ({"id": 7, "day": "2025-01-01T01:00:00+01:00"}, {"id": 7, "day": "2025-01-01T00:00:00"}),
        ({"id": 2.50}, {"id": "2.5"}),
    ],
)
def test_a_key_written_another_way_keeps_its_transaction_id(one: dict, other: dict) -> None:
    columns = sorted(one)
    assert transaction_id("api_calls", one, columns) == transaction_id("api_calls", other, columns)


def test_numbers_keep_their_exact_value_through_the_fast_reader(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    props = {**EVENT_PROPS, "properties": {}}
    line = json.dumps(
        record("events", {"id": 1, "code": metric_code, "external_subscription_id": "sub_a"})
    )
    # Number literals written as a warehouse export would write them (not via a float).
    line = line[:-2] + (
        ', "timestamp": 1735689600.25, "properties": {"ratio": 0.1, '
        '"exact": 0.12345678901234567890123, "big": 123456789012345678901234567890, '
        '"whole": 2.0}}}'
    )
    target_input = json.dumps(schema("events", props, ["id"])) + "\n" + line + "\n"

    with contextlib.redirect_stdout(io.StringIO()):
        TargetLago(config=config).listen(io.StringIO(target_input))

    (event,) = lago.dump()["events"]
    assert event["properties"] == {
        "ratio": 0.1,
        "exact": "0.12345678901234567890123",  # a float would round it: kept as text
        "big": 123456789012345678901234567890,
        "whole": 2.0,
    }
    assert event["timestamp"].startswith("2025-01-01T00:00:00.25")


# Requests in flight --------------------------------------------------------------------


@both_event_stores
def test_eight_requests_in_flight_under_faults_store_each_event_exactly_once(
    lago: Sandbox,
    config: dict,
    metric_code: str,
    monkeypatch: pytest.MonkeyPatch,
    event_store: str,
) -> None:
    busy = 0
    peak = 0
    lock = threading.Lock()
    original_post = LagoClient.post

    def counting_post(self: LagoClient, path: str, body: Any) -> Any:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        try:
            return original_post(self, path, body)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(LagoClient, "post", counting_post)
    rows = usage_rows(6_000, ["sub_a", "sub_b", "sub_c"], metric_code)
    messages: list[dict[str, Any]] = [schema("events", EVENT_PROPS, ["id"])]
    for n, row in enumerate(rows, start=1):
        messages.append(record("events", row))
        if n % 1_000 == 0:
            messages.append(state({"rows": n}))
    # Each fault fires a few times, at different points of the run; every other batch
    # takes 40 ms, so that 8 requests overlap.
    faults = [
        {"method": "POST", "path": BATCH, "fault": "rate_limit", "after": 5, "count": 3,
         "reset_seconds": 0},
        {"method": "POST", "path": BATCH, "fault": "error", "status": 502, "after": 12,
         "count": 3},
        {"method": "POST", "path": BATCH, "fault": "lost_response", "after": 20, "count": 4},
        {"method": "POST", "path": BATCH, "fault": "drop", "after": 30, "count": 3},
        {"method": "POST", "path": BATCH, "fault": "latency", "delay_ms": 40},
    ]  # fmt: skip
    lago.set_faults(faults)

    run = run_target({**config, "max_in_flight": 8, "max_retries": 10}, messages)

    assert run.error is None
    fired = {rule["fault"]: rule["fired"] for rule in lago.faults()}
    assert [fired[kind] for kind in ("rate_limit", "error", "lost_response", "drop")] == [
        3,
        3,
        4,
        3,
    ]
    assert peak == 8  # the pool was kept full, and never beyond the setting
    counts = run.counts["events"]
    assert counts["received"] == 6_000
    assert stored_as(counts, event_store) == 6_000
    assert counts["already_present"] == 0
    assert counts["rejected"] == 0
    lago.set_faults([])
    events = lago.dump()["events"]
    assert len(events) == 6_000
    assert {e["transaction_id"] for e in events} == {
        transaction_id(r["code"], r, ["id"]) for r in rows
    }
    assert run.states[-1] == {"rows": 6_000}
    assert not Path(config["dead_letter_path"]).exists()


def test_submissions_wait_only_when_workers_and_backlog_are_full() -> None:
    release = threading.Event()
    started: list[int] = []
    pool = InFlight(2, backlog=2)
    try:

        def task(n: int) -> None:
            started.append(n)
            release.wait(30)

        for n in range(4):  # 2 running, 2 waiting: none of these submissions blocks
            pool.submit(task, n)
        fifth = threading.Thread(target=pool.submit, args=(started.append, 4))
        fifth.start()
        fifth.join(0.5)
        assert fifth.is_alive()  # a fifth batch waits: memory stays bounded
        assert sorted(started) == [0, 1]  # and only 2 requests are in flight
        release.set()
        fifth.join(30)
        assert not fifth.is_alive()
        pool.wait_all()
        assert sorted(started) == [0, 1, 2, 3, 4]
    finally:
        release.set()
        pool.close()


# Transport -----------------------------------------------------------------------------


class _ClosingHandler(BaseHTTPRequestHandler):
    """Answers every POST with 200, then closes the kept-alive connection without notice."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[tuple[str, int]]] = set()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).connections.add(self.client_address)
        body = b'{"events": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # no "Connection: close": the client cannot know

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v1"
        client = LagoClient(url, "key", timeout=5, max_retries=0)  # a failure would raise
        for _ in range(3):
            assert client.post("/events/batch", {"events": [{"transaction_id": "t"}]}).ok
            time.sleep(0.2)  # let the server's close reach the idle connection
        client.stop()
        assert len(_ClosingHandler.connections) == 3  # each request on a fresh connection
    finally:
        server.shutdown()
        server.server_close()


def test_a_proxy_from_the_environment_is_honoured(
    lago: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    direct = LagoClient(lago.url, lago.api_key, timeout=5, max_retries=0)
    assert direct.post("/events/batch", {"events": [{"transaction_id": "p", "code": "c"}]}).ok
    direct.stop()

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    proxied = LagoClient(lago.url, lago.api_key, timeout=5, max_retries=0)
    with pytest.raises(LagoEndpointError, match="ProxyError"):
        proxied.post("/events/batch", {"events": [{"transaction_id": "q", "code": "c"}]})
    proxied.stop()
    monkeypatch.delenv("HTTP_PROXY")  # the sandbox's own helpers go direct again
    assert [e["transaction_id"] for e in lago.dump()["events"]] == ["p"]
