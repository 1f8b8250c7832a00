"""Events: exactly once in effect under faults and replays; bad rows dead-lettered."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from target_lago.actions.events import transaction_id
from target_lago.target import RecordsRejectedError

from tests.lago_sandbox import Sandbox
from tests.target.conftest import both_event_stores
from tests.target.helpers import (
    EVENT_PROPS,
    dead_letters,
    events_messages,
    posts,
    record,
    run_cli,
    run_target,
    schema,
    stored_as,
    subscriptions_for,
    usage_rows,
)

BATCH = "/api/v1/events/batch"


def stored_events(lago: Sandbox) -> list[dict[str, Any]]:
    return lago.dump()["events"]


def expected_id(row: dict[str, Any]) -> str:
    return row.get("transaction_id") or transaction_id(row["code"], row, ["id"])


@both_event_stores
def test_ten_thousand_events_sent_three_times_under_faults_are_stored_once(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, event_store: str
) -> None:
    subs = subscriptions_for(lago, [f"cust_{i}" for i in range(8)], plan["code"])
    rows = usage_rows(10_000, subs, metric_code)
    for row in rows[::4]:  # a quarter of the rows carry their own transaction id
        row["transaction_id"] = f"wh-{row['id']}"
    faults = [
        {"method": "POST", "path": BATCH, "fault": "rate_limit", "probability": 0.08,
         "reset_seconds": 0, "seed": 1},
        {"method": "POST", "path": BATCH, "fault": "error", "status": 503, "probability": 0.08,
         "seed": 2},
        {"method": "POST", "path": BATCH, "fault": "lost_response", "probability": 0.08,
         "seed": 3},
        {"method": "POST", "path": BATCH, "fault": "drop", "probability": 0.04, "seed": 4},
    ]  # fmt: skip
    config = {**config, "max_retries": 10}
    for attempt in range(3):
        if attempt:
            time.sleep(2.5)  # created_at has whole seconds (see test_edges.py)
        lago.set_faults(faults)
        run = run_target(config, events_messages(rows))
        assert run.error is None, f"run {attempt + 1}: {run.error}"
        counts = run.counts["events"]
        assert counts["received"] == 10_000
        assert counts["rejected"] == 0
        assert stored_as(counts, event_store) == 10_000
        if attempt > 0:
            # A replay stores nothing new, and says so even where responses were lost.
            assert counts["delivered"] == 0
        elif event_store == "postgres":
            assert counts["delivered"] == 10_000
        fired = {rule["fault"]: rule["fired"] for rule in lago.faults()}
        assert all(fired[kind] > 0 for kind in ("rate_limit", "error", "lost_response", "drop"))
    lago.set_faults([])

    events = stored_events(lago)
    assert len(events) == 10_000
    keys = {(e["external_subscription_id"], e["transaction_id"]) for e in events}
    assert len(keys) == 10_000
    assert keys == {(r["external_subscription_id"], expected_id(r)) for r in rows}
    assert not dead_letters(config["dead_letter_path"])


def test_batch_mixing_stored_and_new_events_is_settled_by_index(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    rows = usage_rows(300, ["sub_a", "sub_b", "sub_c"], metric_code)
    first = run_target(config, events_messages(rows[::2]))
    assert first.error is None
    assert first.counts["events"]["delivered"] == 150

    second = run_target(config, events_messages(rows))
    assert second.error is None
    assert second.counts["events"] == {
        "received": 300, "delivered": 150, "already_present": 150, "rejected": 0, "skipped": 0,
        "accepted_unverified": 0,
    }  # fmt: skip
    statuses = [r["status"] for r in posts(lago) if r["path"] == BATCH]
    assert 422 in statuses  # Lago refused mixed batches; the new events were resent
    assert len(stored_events(lago)) == 300


@both_event_stores
def test_one_transaction_id_on_two_subscriptions_is_stored_for_each(
    lago: Sandbox, config: dict, metric_code: str, event_store: str
) -> None:
    props = {**EVENT_PROPS, "transaction_id": {"type": "string"}}
    rows = [
        {"id": 1, "transaction_id": "shared-1", "code": metric_code,
         "external_subscription_id": "sub_a", "timestamp": 1_735_689_600},
        {"id": 2, "transaction_id": "shared-1", "code": metric_code,
         "external_subscription_id": "sub_b", "timestamp": 1_735_689_600},
    ]  # fmt: skip
    run = run_target(
        config, [schema("events", props, ["id"]), *(record("events", r) for r in rows)]
    )
    assert run.error is None
    assert stored_as(run.counts["events"], event_store) == 2
    stored = {(e["external_subscription_id"], e["transaction_id"]) for e in stored_events(lago)}
    assert stored == {("sub_a", "shared-1"), ("sub_b", "shared-1")}


def test_malformed_rows_are_dead_lettered_and_the_rest_delivered(
    lago: Sandbox, config: dict, metric_code: str, api_key: str
) -> None:
    rows = usage_rows(400, ["sub_a", "sub_b"], metric_code)
    kinds = [
        ("code", None, "value_is_mandatory"),
        ("timestamp", "2025-02-30T10:00:00Z", "invalid_format"),
        ("external_subscription_id", None, "value_is_mandatory"),
        ("timestamp", "yesterday", "invalid_format"),
        ("timestamp", None, "value_is_mandatory"),
    ]
    bad: dict[int, tuple[str, str]] = {}
    for n, i in enumerate(range(7, 400, 20)):  # 20 rows of 400: 5 %
        field, value, code = kinds[n % len(kinds)]
        rows[i][field] = value
        bad[rows[i]["id"]] = (field, code)

    run = run_target(config, events_messages(rows))

    assert isinstance(run.error, RecordsRejectedError)
    assert "20 record(s) rejected" in str(run.error)
    assert run.counts["events"]["delivered"] == 380
    assert run.counts["events"]["rejected"] == 20
    stored_ids = {e["transaction_id"] for e in stored_events(lago)}
    assert stored_ids == {expected_id(r) for r in rows if r["id"] not in bad}

    letters = dead_letters(config["dead_letter_path"])
    assert {line["record"]["id"] for line in letters} == set(bad)
    for line in letters:
        field, code = bad[line["record"]["id"]]
        assert line["stream"] == "events"
        assert line["action"] == "events"
        assert line["http_status"] is None  # refused before sending
        assert line["error_code"] == "invalid_record"
        assert line["details"] == {field: [code]}
        assert field in line["message"]
        assert dt.datetime.fromisoformat(line["time"]).tzinfo is not None
    assert api_key not in Path(config["dead_letter_path"]).read_text()


def test_allow_rejections_exits_cleanly_with_the_same_deliveries(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    rows = usage_rows(10, ["sub_a"], metric_code)
    rows[3]["code"] = ""
    run = run_target({**config, "allow_rejections": True}, events_messages(rows))
    assert run.error is None
    assert len(stored_events(lago)) == 9
    assert len(dead_letters(config["dead_letter_path"])) == 1


def test_timestamps_in_every_accepted_form_become_lago_seconds(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    forms: dict[int, tuple[Any, str]] = {
        1: ("2025-01-01T10:00:00.123Z", "2025-01-01T10:00:00.123"),
        2: ("2025-01-01T12:00:00+02:00", "2025-01-01T10:00:00"),
        3: ("2025-01-02", "2025-01-02T00:00:00"),
        4: (1_735_725_600, "2025-01-01T10:00:00"),
        5: (1_735_725_600.5, "2025-01-01T10:00:00.500"),
        6: ("1735725600.25", "2025-01-01T10:00:00.250"),
        7: ("2025-01-01 10:00:00", "2025-01-01T10:00:00"),
    }
    rows = [
        {"id": i, "code": metric_code, "external_subscription_id": "sub_a", "timestamp": ts}
        for i, (ts, _) in forms.items()
    ]
    run = run_target(config, events_messages(rows))
    assert run.error is None
    got = {
        e["transaction_id"]: dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        for e in stored_events(lago)
    }
    for row in rows:
        want = dt.datetime.fromisoformat(forms[row["id"]][1]).replace(tzinfo=dt.timezone.utc)
        assert got[expected_id(row)] == want, row


def test_properties_are_kept_or_built_and_read_only_fields_dropped(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    props = {
        "id": {"type": "integer"},
        "code": {"type": "string"},
        "external_subscription_id": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "region": {"type": ["string", "null"]},
        "units": {"type": ["number", "null"]},
        "properties": {"type": ["object", "null"]},
        "transaction_id": {"type": ["string", "null"]},
        "lago_id": {"type": ["string", "null"]},
        "lago_customer_id": {"type": ["string", "null"]},
        "lago_subscription_id": {"type": ["string", "null"]},
        "created_at": {"type": ["string", "null"]},
    }
    built = {
        "id": 1,
        "code": metric_code,
        "external_subscription_id": "sub_a",
        "timestamp": "2025-01-01T00:00:00Z",
        "region": "eu",
        "units": 3,
        "properties": None,
    }
    tap_shaped = {
        "id": 2,
        "transaction_id": "tx-from-tap",
        "code": metric_code,
        "external_subscription_id": "sub_a",
        "timestamp": "2025-01-01T00:00:01.500Z",
        "properties": {"units": "7"},
        "lago_id": "11111111-1111-1111-1111-111111111111",
        "lago_customer_id": None,
        "lago_subscription_id": None,
        "created_at": "2025-01-01T00:00:02Z",
        "region": "ignored-when-properties-given",
    }
    run = run_target(
        config,
        [schema("events", props, ["id"]), record("events", built), record("events", tap_shaped)],
    )
    assert run.error is None
    events = {e["transaction_id"]: e for e in stored_events(lago)}
    assert events[expected_id(built)]["properties"] == {"id": 1, "region": "eu", "units": 3}
    copied = events["tx-from-tap"]
    assert copied["properties"] == {"units": "7"}
    assert copied["lago_id"] != tap_shaped["lago_id"]
    assert copied["timestamp"].startswith("2025-01-01T00:00:01.5")


def test_the_same_row_makes_the_same_event_whatever_its_other_columns_and_stream_name(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    rows = usage_rows(500, ["sub_a", "sub_b"], metric_code)
    first = run_target(config, events_messages(rows))
    assert first.error is None
    assert first.counts["events"]["delivered"] == 500
    # A column added upstream, then the stream renamed: the ids come from `code` and the
    # key columns only, so nothing is sent again as a new event.
    loaded = [{**row, "loaded_at": "2026-11-29T10:00:00Z"} for row in rows]
    props = {**EVENT_PROPS, "loaded_at": {"type": "string"}}
    for stream in ("events", "billing-usage"):
        messages = [schema(stream, props, ["id"]), *(record(stream, r) for r in loaded)]
        run = run_target({**config, "stream_actions": {"billing-*": "events"}}, messages)
        assert run.error is None
        assert run.counts[stream]["delivered"] == 0
        assert run.counts[stream]["already_present"] == 500
    assert len(stored_events(lago)) == 500


def test_a_stream_without_transaction_id_or_key_columns_is_refused_at_its_schema(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = usage_rows(5, ["sub_a"], metric_code)
    props = {k: v for k, v in EVENT_PROPS.items() if k != "transaction_id"}
    messages = [schema("usage", props), *(record("usage", r) for r in rows)]
    cfg = {**config, "stream_actions": {"usage": "events"}}
    refused = run_cli(tmp_path, cfg, messages)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "Stream 'usage' has no transaction_id column and no key properties" in (
        refused.stderr
    )
    assert 'transaction_id_columns setting, e.g. {"usage": ["id"]}' in refused.stderr
    assert stored_events(lago) == []
    # Named columns make it work, and give the same ids as key properties would.
    named = run_target({**cfg, "transaction_id_columns": {"us*": ["id"]}}, messages)
    assert named.error is None
    assert named.counts["usage"]["delivered"] == 5
    assert {e["transaction_id"] for e in stored_events(lago)} == {expected_id(r) for r in rows}


def test_properties_typed_as_text_by_stream_maps_are_read_as_json_objects(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    # A stream map such as `"properties": "{'units': quantity}"` declares a string type
    # while its records carry an object; a warehouse may also hold the JSON as text.
    props = {
        "id": {"type": "integer"},
        "code": {"type": "string"},
        "external_subscription_id": {"type": "string"},
        "timestamp": {"type": "string"},
        "properties": {"type": ["string", "null"]},
    }
    base = {"code": metric_code, "external_subscription_id": "sub_a"}
    rows = [
        {**base, "id": 1, "timestamp": "2025-02-01T00:00:00Z", "properties": {"units": 2}},
        {**base, "id": 2, "timestamp": "2025-02-01T00:00:01Z", "properties": '{"units": 5}'},
        {**base, "id": 3, "timestamp": "2025-02-01T00:00:02Z", "properties": "not json"},
    ]
    run = run_target(
        config, [schema("events", props, ["id"]), *(record("events", r) for r in rows)]
    )
    stored = {e["transaction_id"]: e["properties"] for e in stored_events(lago)}
    assert stored == {expected_id(rows[0]): {"units": 2}, expected_id(rows[1]): {"units": 5}}
    assert isinstance(run.error, RecordsRejectedError)
    [letter] = dead_letters(config["dead_letter_path"])
    assert letter["record"]["id"] == 3
    assert letter["details"] == {"properties": ["invalid_type"]}
