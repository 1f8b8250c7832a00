"""The plain per-record loop (``LagoStream._sync_plain``) writes what the SDK's loop writes.

Streams without children or partitions whose records the fast writer takes skip the SDK's
per-record machinery. Each test runs the same sync both ways (``client.PLAIN_LOOP``) and
compares every line but ``time_extracted``, and checks the plain loop really ran.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
from typing import Any

import pytest
from singer_sdk import Stream
from singer_sdk.singerlib import RecordMessage
from singer_sdk.singerlib.encoding import SimpleSingerWriter
from tap_lago import client
from tap_lago.replication import SeenKeys
from tap_lago.streams import BillableMetricsStream, EventsStream
from tap_lago.tap import TapLago
from tap_lago.writer import LagoMessageWriter

from tests.tap.conftest import SyncResult, run_tap, tap_config


def lines(result: SyncResult) -> list[dict[str, Any]]:
    """Every message, without ``time_extracted`` and the table version (the run's time).

    Whether a version is there is kept.
    """
    out = []
    for message in result.messages:
        message.pop("time_extracted", None)
        if "version" in message:
            message["version"] = "(the sync's start)"
        out.append(message)
    return out


def without_sync_times(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages, STATE values without what depends on the moment of the sync.

    The events bookmark is the end of the last window read (the sync's start), signposts
    are the sync's start, and lifetime usage's ``to_datetime`` the time of its request.
    """
    for message in messages:
        if message["type"] == "STATE":
            for name, state in message["value"].get("bookmarks", {}).items():
                for part in [state, *state.get("partitions", [])]:
                    part.pop("replication_key_signpost", None)
                if name == "events":
                    state.pop("replication_key_value", None)
        if message["type"] == "RECORD" and message["stream"] == "subscription_lifetime_usage":
            message["record"].pop("to_datetime", None)
    return messages


def both_ways(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], streams: set[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(SDK loop's messages, plain loop's messages, streams the plain loop synced)."""
    plain: list[str] = []
    real = client.LagoStream._sync_plain

    def counted(self: client.LagoStream) -> Any:
        plain.append(self.name)
        return real(self)

    monkeypatch.setattr(client.LagoStream, "_sync_plain", counted)
    monkeypatch.setattr(client, "PLAIN_LOOP", False)
    sdk = lines(run_tap(config, streams=streams))
    assert not plain
    monkeypatch.setattr(client, "PLAIN_LOOP", True)
    ours = lines(run_tap(config, streams=streams))
    return without_sync_times(sdk), without_sync_times(ours), plain


def test_a_whole_sync_writes_the_same_lines_either_way(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stream: the same RECORD, STATE, SCHEMA and ACTIVATE_VERSION lines in the
    same order, a STATE every ``STATE_MSG_FREQUENCY`` records included."""
    monkeypatch.setattr(Stream, "STATE_MSG_FREQUENCY", 7)
    sdk, ours, plain = both_ways(monkeypatch, tap_config(sandbox, max_concurrency=1))
    assert sum(m["type"] == "RECORD" for m in sdk) > 1000, "too little synced"
    assert ours == sdk
    assert {"events", "billable_metrics", "taxes"} <= set(plain)
    assert "customers" not in plain, "a stream with child streams took the plain loop"


def test_odd_records_are_shaped_and_written_the_same_way(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undeclared fields, amounts as text, a null key, values the SDK's conformance would
    change: the plain loop shapes and writes them as the SDK's loop does."""
    odd_events: list[dict[str, Any]] = [
        {"transaction_id": "t1", "external_subscription_id": "s1",
         "timestamp": "2026-01-01T00:00:00Z", "code": "c", "new_field": {"x": 1},
         "precise_total_amount_cents": "12.50"},
        {"transaction_id": None, "external_subscription_id": "s1",
         "timestamp": "2026-01-01T00:00:01Z", "code": "c"},
        {"transaction_id": "t3", "external_subscription_id": "s1",
         "timestamp": "2026-01-01T00:00:02Z", "code": "c", "precise_total_amount_cents": "n/a"},
        {"transaction_id": "t4", "external_subscription_id": "s1",
         "timestamp": "2026-01-01T00:00:03Z", "code": "c", "precise_total_amount_cents": 7},
    ]  # fmt: skip
    odd_metrics: list[dict[str, Any]] = [
        {"lago_id": "m1", "code": "a", "recurring": 1, "created_at": "2026-01-01T00:00:00Z"},
        {"lago_id": "m2", "code": "b", "recurring": "yes", "created_at": "2026-01-01T00:00:00Z",
         "filters": [{"key": "k", "values": ["v"], "extra": True}]},
        {"lago_id": "m3", "code": "c", "recurring": False, "weighted_interval": None,
         "created_at": "2026-01-01T00:00:00Z", "rounding_precision": decimal.Decimal("2")},
    ]  # fmt: skip

    def canned(rows: list[dict[str, Any]]) -> Any:
        def get_records(self: Any, context: Any) -> Any:
            for row in rows:
                yield dict(row)

        return get_records

    monkeypatch.setattr(EventsStream, "get_records", canned(odd_events))
    monkeypatch.setattr(BillableMetricsStream, "get_records", canned(odd_metrics))
    sdk, ours, plain = both_ways(
        monkeypatch, tap_config(sandbox), streams={"events", "billable_metrics"}
    )
    records = [m for m in sdk if m["type"] == "RECORD"]
    assert len(records) == 6, "the null-key event is skipped, every other row written"
    assert any("_unknown_fields" in m["record"] for m in records)
    assert ours == sdk
    assert sorted(plain) == ["billable_metrics", "events"]


@pytest.mark.parametrize(
    "record",
    [
        {"a": 'é ✓ \u2028 "quoted" \\ tab\t', "n": None, "b": True, "i": 2**62},
        {"amount": decimal.Decimal("12.50"), "tiny": decimal.Decimal("1E-7"), "f": 0.1},
        {1: "a non-text key", "big": 2**70, "nested": {"list": [1, {"x": []}]}},
    ],
)
@pytest.mark.parametrize("version", [None, 1764000000])
def test_record_writer_lines_hold_what_the_sdk_writer_writes(
    record: dict[Any, Any], version: int | None, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The plain loop's writer: one line, the SDK writer's keys in its order, the same
    values (decimals and big integers exact)."""
    now = dt.datetime.now(dt.timezone.utc)
    message = RecordMessage(stream="events", record=record, version=version, time_extracted=now)
    sdk = json.loads(SimpleSingerWriter().serialize_message(message), parse_float=decimal.Decimal)
    LagoMessageWriter().record_writer("events", version)(record)
    sys.stdout.flush()
    out = capsysbinary.readouterr().out.decode()
    assert out.count("\n") == 1 and out.endswith("\n")
    ours = json.loads(out, parse_float=decimal.Decimal)
    assert list(ours) == list(sdk)
    ours.pop("time_extracted")
    sdk.pop("time_extracted")
    assert ours == sdk


def test_repeated_keys_are_dropped_whether_key_fields_are_there_or_not(
    sandbox: Any,
) -> None:
    """The dedupe reads keys at C speed; a record lacking a key field gets the same key as
    one holding null there, as the per-field reading gives."""
    stream = TapLago(config=tap_config(sandbox), parse_env_config=False).streams["events"]
    assert isinstance(stream, EventsStream)
    seen = SeenKeys()
    rows: list[dict[str, Any]] = [
        {"transaction_id": "a", "external_subscription_id": "s"},
        {"transaction_id": "a", "external_subscription_id": "s"},
        {"transaction_id": "a"},
        {"transaction_id": "a", "external_subscription_id": None},
        {"external_subscription_id": "s"},
        {"transaction_id": None, "external_subscription_id": "s"},
    ]
    fast, slow = stream._key_getter(), stream._key_function()
    assert fast is not None and slow is not None
    kept = list(seen.fresh(rows, fast, slow, stream.progress))
    assert kept == [rows[0], rows[2], rows[4]]
    assert seen.duplicates == 3
