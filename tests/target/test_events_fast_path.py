"""The events fast path (`target_lago.fastpath`) gives exactly what the SDK path gives.

The same input goes once through the fast path and once with it switched off: the
requests sent, the events stored, the dead letters, the STATE and the counts must be the
same. Records the fast path cannot take (stream maps, odd values, schema keywords it
does not compile) fall back to the SDK path in order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from target_lago import fastpath
from target_lago.actions.events import SeenEvents
from target_lago.client import LagoClient
from target_lago.fastpath import Timestamps
from target_lago.mapping import to_epoch
from target_lago.target import TargetLago

from tests.lago_sandbox import Sandbox
from tests.target.conftest import CATALOG_ONLY
from tests.target.helpers import dead_letters

STREAM = "usage"
PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "code": {"type": ["string", "integer", "null"]},
    "external_subscription_id": {"type": ["string", "null"]},
    "external_customer_id": {"type": ["string", "null"]},
    "transaction_id": {"type": ["string", "integer", "null"]},
    "timestamp": {},
    "units": {"type": ["number", "null"]},
    "region": {"type": ["string", "null"]},
    "flag": {"type": ["boolean", "null"]},
    "precise_total_amount_cents": {},
    "note": {},
    "level": {"type": ["integer", "null"], "minimum": 0},  # judged by jsonschema
    "properties": {},
    "_sdc_extracted_at": {"type": ["string", "null"]},
    "_sdc_deleted_at": {"type": ["string", "null"]},
}
BASE = 1_735_689_600  # 2025-01-01T00:00:00Z
_REQUEST = LagoClient.request
_TAKE = fastpath._Plan.take


def _iso(seconds: int, fraction: str = "", zone: str = "Z") -> str:
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).replace(tzinfo=None)
    return moment.isoformat() + fraction + zone


def variant_lines(code: str, count: int) -> list[str]:
    """RECORD lines (raw JSON text: some number literals a float would not keep)."""
    out = []
    for i in range(count):
        kind = i % 40
        sub = ("sub_a", "sub_b")[i % 2]
        fields: dict[str, str] = {
            "id": str(i),
            "code": json.dumps(code),
            "external_subscription_id": json.dumps(sub),
            "timestamp": json.dumps(_iso(BASE + i * 61, f".{i % 1000:03d}")),
            "units": f"{(i % 97) / 4}",
            "region": json.dumps(("eu-west", "us-east", None)[i % 3]),
        }
        if kind == 1:
            fields["timestamp"] = json.dumps(_iso(BASE + i, ".123456"))
        elif kind == 2:
            fields["timestamp"] = json.dumps(_iso(BASE + i, "", "+00:00"))
        elif kind == 3:
            fields["timestamp"] = json.dumps(_iso(BASE + i, ".5", "+05:30"))
        elif kind == 4:
            fields["timestamp"] = json.dumps(_iso(BASE + i, "", ""))
        elif kind == 5:
            fields["timestamp"] = json.dumps("2025-03-09")
        elif kind == 6:
            fields["timestamp"] = f"{BASE + i}.25"
        elif kind == 7:
            fields["timestamp"] = json.dumps(str(BASE + i))
        elif kind == 8:
            fields["units"] = "0.1000000000000000055511151231257827"
        elif kind == 9:
            fields["units"] = "1e2"
        elif kind == 10:
            fields["note"] = '{"a": [1, 2.5, {"b": null}]}'
        elif kind == 11:
            fields["region"] = json.dumps("z\u00fcrich \u2603")
        elif kind == 12:
            fields["region"] = json.dumps("nul\u0000here")
        elif kind == 13:
            fields["transaction_id"] = json.dumps(f"given-{i}")
        elif kind == 14:
            fields["transaction_id"] = str(900_000 + i)
        elif kind == 15:
            fields["code"] = "12345"  # no such billable metric: Lago refuses it
        elif kind == 16:
            fields["precise_total_amount_cents"] = json.dumps("12.50")
        elif kind == 17:
            fields["properties"] = '{"units": 3, "tier": "gold", "ratio": 0.5, "none": null}'
        elif kind == 18:
            fields["properties"] = json.dumps('{"a": 1}')
        elif kind == 19:
            del fields["timestamp"]
        elif kind == 20:
            del fields["external_subscription_id"]
            fields["external_customer_id"] = json.dumps("cust_nobody")
        elif kind == 21:
            fields["units"] = json.dumps("lots")
        elif kind == 22:
            fields["level"] = "-1"
        elif kind == 23:
            fields["level"] = "5"
        elif kind == 24:
            fields["_sdc_extracted_at"] = json.dumps("2025-01-01T00:00:00Z")
            fields["_sdc_deleted_at"] = "null"
            fields["_sdc_sequence"] = "17"
        elif kind == 25:
            fields["extra"] = json.dumps("not in the schema")
        elif kind == 26:
            fields["flag"] = "true"
        elif kind == 27:  # the same row again: Lago already holds it
            fields["id"] = str(i - 27)
            fields.update(_row_fields(code, i - 27))
        elif kind == 28:  # the same key with other content
            fields["id"] = str(i - 28)
            fields["units"] = "999.5"
        elif kind == 29:
            fields["transaction_id"] = json.dumps("  ")
        elif kind == 30:
            fields["code"] = json.dumps("  ")
        elif kind == 31:
            fields["units"] = "123456789012345678901234567890"
        elif kind == 32:
            fields["timestamp"] = json.dumps("2025-02-30T00:00:00Z")
        elif kind == 33:
            fields["id"] = json.dumps(str(i))
        elif kind == 34:
            fields["timestamp"] = json.dumps("2025-01-01 10:00:00")
        elif kind == 35:
            fields["units"] = "2.0"
        elif kind == 36:
            fields["timestamp"] = str(BASE + i)
        body = ", ".join(f'"{name}": {value}' for name, value in fields.items())
        out.append(f'{{"type": "RECORD", "stream": "{STREAM}", "record": {{{body}}}}}')
    return out


def _row_fields(code: str, i: int) -> dict[str, str]:
    return {
        "code": json.dumps(code),
        "external_subscription_id": json.dumps(("sub_a", "sub_b")[i % 2]),
        "timestamp": json.dumps(_iso(BASE + i * 61, f".{i % 1000:03d}")),
        "units": f"{(i % 97) / 4}",
        "region": json.dumps(("eu-west", "us-east", None)[i % 3]),
    }


def singer_text(code: str, count: int, state_every: int = 150) -> str:
    schema = {"type": "object", "properties": PROPERTIES}
    head = {"type": "SCHEMA", "stream": STREAM, "schema": schema, "key_properties": ["id"]}
    lines = [json.dumps(head)]
    for n, line in enumerate(variant_lines(code, count), start=1):
        lines.append(line)
        if n % state_every == 0:
            lines.append(json.dumps({"type": "STATE", "value": {"rows": n}}))
    lines.append(json.dumps({"type": "STATE", "value": {"rows": count}}))
    return "\n".join(lines) + "\n"


class Outcome:
    """What one run did: requests, stored events, dead letters, STATE, counts."""

    def __init__(self, lago: Sandbox, target: TargetLago, stdout: str, sent: list) -> None:
        self.requests = sent
        volatile = {"lago_id", "created_at"}
        self.events = sorted(
            (json.dumps({k: v for k, v in e.items() if k not in volatile}, sort_keys=True))
            for e in lago.dump()["events"]
        )
        self.states = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        self.counts = {
            name: {k: v for k, v in vars(stats).items() if not k.startswith("_")}
            for name, stats in target.report.streams.items()
        }


def run(
    lago: Sandbox,
    config: dict[str, Any],
    text: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    fast: bool,
) -> tuple[Outcome, list[dict[str, Any]], int]:
    """One in-process run; returns its outcome, its dead letters and the records taken fast."""
    lago.reset(CATALOG_ONLY)
    Path(config["dead_letter_path"]).unlink(missing_ok=True)
    sent: list[tuple[str, str, bytes]] = []
    original = _REQUEST

    def recording(self: LagoClient, method: str, path: str, data: Any, **kw: Any) -> Any:
        sent.append((method, path, data or b""))
        return original(self, method, path, data, **kw)

    taken = 0
    take = _TAKE

    def counting(self: Any, record: dict, line: str) -> bool:
        nonlocal taken
        done = take(self, record, line)
        taken += done
        return done

    monkeypatch.setattr(LagoClient, "request", recording)
    monkeypatch.setattr(fastpath._Plan, "take", counting)
    monkeypatch.setattr(fastpath, "ENABLED", fast)
    target = TargetLago(config=config)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(Exception):
        target.listen(io.StringIO(text))
    letters = [
        {k: v for k, v in letter.items() if k != "time"}
        for letter in dead_letters(config["dead_letter_path"])
    ]
    letters.sort(key=lambda letter: json.dumps(letter, sort_keys=True))
    return Outcome(lago, target, out.getvalue(), sent), letters, taken


def event_row(code: str, i: int, **extra: Any) -> dict[str, Any]:
    """A plain usage row keyed by `id` (two subscriptions, a quarter past each minute)."""
    return {
        "id": i,
        "code": code,
        "external_subscription_id": ("sub_a", "sub_b")[i % 2],
        "timestamp": _iso(BASE + i * 61, ".250"),
        "units": i,
        **extra,
    }


def both_ways(lago: Sandbox, config: dict, text: str, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(fast outcome, its dead letters, SDK-path outcome, its dead letters, records taken fast)."""
    fast, fast_letters, taken = run(lago, config, text, monkeypatch, fast=True)
    slow, slow_letters, _ = run(lago, config, text, monkeypatch, fast=False)
    return fast, fast_letters, slow, slow_letters, taken


@pytest.mark.parametrize("share", [None, "2/3"])
def test_the_fast_path_sends_stores_and_rejects_exactly_what_the_sdk_path_does(
    lago: Sandbox,
    config: dict,
    metric_code: str,
    monkeypatch: pytest.MonkeyPatch,
    share: str | None,
) -> None:
    text = singer_text(metric_code, 1_200)
    # One request at a time: which of two copies of an event in different requests Lago
    # stores first would otherwise depend on timing.
    config = {**config, "stream_actions": {STREAM: "events"}, "batch_size": 50, "max_in_flight": 1}
    if share:
        config["partition"] = share

    fast, fast_letters, taken = run(lago, config, text, monkeypatch, fast=True)
    slow, slow_letters, none_taken = run(lago, config, text, monkeypatch, fast=False)

    assert none_taken == 0
    assert taken > 700  # most rows are plain (or another share's): the fast path took them
    assert fast.requests == slow.requests  # byte for byte, the same requests in order
    assert fast.events == slow.events
    assert fast_letters == slow_letters
    assert fast.states == slow.states
    assert fast.counts == slow.counts
    counts = fast.counts[STREAM]
    assert counts["rejected"] == len(fast_letters) > 0
    assert counts["already_present"] > 0
    assert counts["received"] == 1_200
    assert (counts["skipped_by_partition"] > 0) == bool(share)
    reasons = {letter["error_code"] for letter in fast_letters}
    assert {"invalid_record", "conflicting_duplicate"} <= reasons


def test_stream_maps_send_the_stream_the_sdk_way(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = singer_text(metric_code, 200)
    mapped = {
        **config,
        "stream_actions": {STREAM: "events"},
        "stream_maps": {STREAM: {"source": "'mapped'"}},
        "max_in_flight": 1,
    }

    fast, fast_letters, taken = run(lago, mapped, text, monkeypatch, fast=True)
    slow, slow_letters, _ = run(lago, mapped, text, monkeypatch, fast=False)

    assert taken == 0
    assert fast.requests == slow.requests
    assert fast_letters == slow_letters
    assert fast.events == slow.events
    assert sum(json.loads(e)["properties"].get("source") == "mapped" for e in fast.events) > 100


def test_a_stream_with_record_metadata_or_unchecked_schema_keywords_goes_the_sdk_way(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = singer_text(metric_code, 100)
    with_metadata = {**config, "stream_actions": {STREAM: "events"}, "add_record_metadata": True}
    _, _, taken = run(lago, with_metadata, text, monkeypatch, fast=True)
    assert taken == 0

    schema = {
        "type": "object",
        "properties": {"id": {"$ref": "#/$defs/id"}},
        "$defs": {"id": {"type": "integer"}},
    }
    referenced = text.split("\n", 1)[1]
    head = {"type": "SCHEMA", "stream": STREAM, "schema": schema, "key_properties": ["id"]}
    plain = {**config, "stream_actions": {STREAM: "events"}}
    fast, fast_letters, taken = run(
        lago, plain, json.dumps(head) + "\n" + referenced, monkeypatch, fast=True
    )
    slow, slow_letters, _ = run(
        lago, plain, json.dumps(head) + "\n" + referenced, monkeypatch, fast=False
    )
    assert taken == 0
    assert fast.events == slow.events
    assert fast_letters == slow_letters


# Pieces ---------------------------------------------------------------------------------


def _stamps() -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(3_000):
        seconds = rng.randrange(0, 4_000_000_000)
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).replace(tzinfo=None)
        fraction = rng.choice(["", f".{rng.randrange(1000):03d}", f".{rng.randrange(10**6):06d}"])
        zone = rng.choice(["Z", "", "+00:00", "+01:00", "-00:00"])
        out.append(moment.isoformat() + fraction + zone)
    out += [
        "2025-01-01T00:00:60Z",
        "2025-02-30T10:00:00Z",
        "2025-01-01T24:00:00Z",
        "2025-01-01T00:00:00.1234Z",
        "2025-01-01T00:00:00.000000Z",
        "2025-01-01T00:00:00.000Z",
        "2025-01-01T00:00:00.120Z",
        "\uff11\uff19\uff17\uff10-01-01T00:00:00Z",  # full-width digits
        "2025-01-01T00:00:00 Z",
        "2025-01-01T00:00:00Zjunk",
        "1969-12-31T23:59:59Z",
        "5138-11-16T09:46:40Z",
        "5138-11-16T09:45:40Z",
        "5138-11-15T23:59:59.999Z",  # the last day read by parts: it ends before the limit
        "2024-02-29T23:59:59Z",
        "2023-02-29T00:00:00Z",
        "2025-01-01T23:60:00Z",
        "2025-01-01T7:00:00.000Z",
    ]
    return out


def _reading(read: Any, text: str) -> Any:
    try:
        return read(text)
    except ValueError as exc:
        return f"ValueError: {exc}"


def test_timestamps_read_by_parts_equal_to_epoch() -> None:
    times = Timestamps()
    for _ in range(2):  # learning, then remembered
        for text in _stamps():
            assert _reading(times.epoch, text) == _reading(to_epoch, text), text


def test_the_fast_reader_keeps_only_floats_the_sdk_would_send_as_floats() -> None:
    for text in ["0.5", "12.250", "-0.0", "1234567890.12345", "0.0000000000001"]:
        assert isinstance(fastpath._float(text), float)
    for text in ["1e2", "1E-5", "0.1000000000000000055511151231257827", "0.000000000000001"]:
        assert not isinstance(fastpath._float(text), float)


def test_the_run_memory_of_events_is_compact_and_catches_a_changed_duplicate() -> None:
    seen = SeenEvents(limit=1_000, kept=100)
    for n in range(900):  # rotates its generations once
        assert seen.check(hash(("s", f"t{n}")), n, b"x") == (False, None)
    assert seen.check(hash(("s", "t899")), 899, b"x") == (False, None)  # same content
    conflict, earlier = seen.check(hash(("s", "t899")), 7, b"y")
    assert conflict
    assert earlier == b"x"
    assert seen.check(hash(("s", "t100")), 1, b"z")[0]  # still known, in the older half
    assert seen._new[0].nbytes == 8 * 1024  # 2 x 8 bytes an event, at most half full
