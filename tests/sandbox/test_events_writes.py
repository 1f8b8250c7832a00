"""POST /events and POST /events/batch (LAGO_API_BEHAVIOUR.md section 4)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

SMALL = {"seed": 3, "customers": 3, "events": 50}
EVENT_KEYS = [
    "lago_id",
    "transaction_id",
    "lago_customer_id",
    "code",
    "timestamp",
    "precise_total_amount_cents",
    "properties",
    "lago_subscription_id",
    "external_subscription_id",
    "created_at",
]


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(SMALL)


def post(sb: Sandbox, path: str, body: Any) -> requests.Response:
    return requests.post(
        sb.url + path, json=body, headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=30
    )


def errors(details: dict) -> dict:
    return {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }


def stored(sb: Sandbox) -> list[dict]:
    return sb.dump()["events"]


def test_single_event_is_stored_and_echoed(sb: Sandbox) -> None:
    response = post(
        sb,
        "/events",
        {
            "event": {
                "transaction_id": "tx-1",
                "code": "api_calls",
                "external_subscription_id": "sub_00001",
                "timestamp": 1651240791.123,
                "properties": {"region": "eu", "count": 3},
                "precise_total_amount_cents": "123.45",
                "external_customer_id": "dropped",
            }
        },
    )
    assert response.status_code == 200
    event = response.json()["event"]
    assert list(response.json()) == ["event"]
    assert list(event) == EVENT_KEYS
    assert event["timestamp"] == "2022-04-29T13:59:51.123Z"
    assert event["precise_total_amount_cents"] == "123.45"
    assert event["lago_customer_id"] is None
    assert event["lago_subscription_id"] is None
    assert "external_customer_id" not in event
    assert event in stored(sb)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1651240791, "2022-04-29T13:59:51.000Z"),
        ("1651240791.5", "2022-04-29T13:59:51.500Z"),
        (1651240791.0, "2022-04-29T13:59:51.000Z"),
    ],
)
def test_numeric_timestamps_in_seconds(sb: Sandbox, timestamp: Any, expected: str) -> None:
    response = post(
        sb, "/events", {"event": {"transaction_id": "t", "code": "c", "timestamp": timestamp}}
    )
    assert response.status_code == 200
    assert response.json()["event"]["timestamp"] == expected


def test_missing_timestamp_uses_the_receive_time(sb: Sandbox) -> None:
    event = post(sb, "/events", {"event": {"transaction_id": "t", "code": "c"}}).json()["event"]
    assert event["timestamp"][:16] == event["created_at"][:16]
    assert len(event["timestamp"]) == len("2022-04-29T13:59:51.123Z")


@pytest.mark.parametrize("timestamp", ["2024-01-01T00:00:00Z", "", "soon", True])
def test_non_numeric_timestamp_is_invalid_format(sb: Sandbox, timestamp: Any) -> None:
    response = post(
        sb, "/events", {"event": {"transaction_id": "t", "code": "c", "timestamp": timestamp}}
    )
    assert response.status_code == 422
    assert response.json() == errors({"timestamp": ["invalid_format"]})


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("100", "100.0"), (100, "100.0"), ("12.50", "12.5"), ("abc", "0.0"), (None, None)],
)
def test_precise_total_amount_cents_as_the_server_renders_it(
    sb: Sandbox, amount: Any, expected: str | None
) -> None:
    body = {"event": {"transaction_id": "t", "code": "c", "precise_total_amount_cents": amount}}
    response = post(sb, "/events", body)
    assert response.status_code == 200
    assert response.json()["event"]["precise_total_amount_cents"] == expected


def test_required_fields(sb: Sandbox) -> None:
    response = post(sb, "/events", {"event": {"timestamp": 1, "properties": {}}})
    assert response.status_code == 422
    assert response.json() == errors(
        {"transaction_id": ["value_is_mandatory"], "code": ["value_is_mandatory"]}
    )
    response = post(sb, "/events", {"event": {"transaction_id": "  ", "code": "c"}})
    assert response.json() == errors({"transaction_id": ["value_is_mandatory"]})


def test_unknown_subscription_or_code_is_accepted(sb: Sandbox) -> None:
    body = {"event": {"transaction_id": "t", "code": "nope", "external_subscription_id": "x"}}
    assert post(sb, "/events", body).status_code == 200


@pytest.mark.parametrize("body", [{}, {"event": None}, {"event": {}}, {"events": [{}]}])
def test_missing_event_root_is_400(sb: Sandbox, body: dict) -> None:
    response = post(sb, "/events", body)
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "BadRequest: param is missing or the value is empty or invalid: event",
    }


def test_duplicate_per_subscription_is_422_and_null_subscriptions_never_collide(
    sb: Sandbox,
) -> None:
    first = {"transaction_id": "dup", "code": "c", "external_subscription_id": "sub_00001"}
    assert post(sb, "/events", {"event": first}).status_code == 200
    again = post(sb, "/events", {"event": dict(first, code="other")})
    assert again.status_code == 422
    assert again.json() == errors({"transaction_id": ["value_already_exist"]})
    other_sub = dict(first, external_subscription_id="sub_00002")
    assert post(sb, "/events", {"event": other_sub}).status_code == 200
    for _ in range(2):
        body = {"event": {"transaction_id": "no-sub", "code": "c"}}
        assert post(sb, "/events", body).status_code == 200
    assert sum(1 for e in stored(sb) if e["transaction_id"] == "no-sub") == 2


def batch_event(i: int, **extra: Any) -> dict:
    return {
        "transaction_id": f"b-{i}",
        "code": "api_calls",
        "external_subscription_id": "sub_00001",
        "timestamp": 1700000000 + i,
        **extra,
    }


def test_batch_success_echoes_events_in_order_without_meta(sb: Sandbox) -> None:
    before = len(stored(sb))
    response = post(sb, "/events/batch", {"events": [batch_event(i) for i in range(100)]})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["events"]
    assert [e["transaction_id"] for e in body["events"]] == [f"b-{i}" for i in range(100)]
    assert all(list(e) == EVENT_KEYS for e in body["events"])
    assert len(stored(sb)) == before + 100


def test_batch_of_101_is_too_many(sb: Sandbox) -> None:
    before = stored(sb)
    response = post(sb, "/events/batch", {"events": [batch_event(i) for i in range(101)]})
    assert response.status_code == 422
    assert response.json() == errors({"events": ["too_many_events"]})
    assert stored(sb) == before


@pytest.mark.parametrize("body", [{}, {"events": []}, {"events": None}, {"event": {}}])
def test_batch_without_events_is_no_events(sb: Sandbox, body: dict) -> None:
    response = post(sb, "/events/batch", body)
    assert response.status_code == 422
    assert response.json() == errors({"events": ["no_events"]})


def test_batch_phase_one_reports_every_bad_index_and_stores_nothing(sb: Sandbox) -> None:
    before = stored(sb)
    events = [
        batch_event(0),
        batch_event(1, timestamp="2024-01-01"),
        {"code": "c"},
        batch_event(3),
        {"transaction_id": "x", "timestamp": ""},
    ]
    response = post(sb, "/events/batch", {"events": events})
    assert response.status_code == 422
    assert response.json() == errors(
        {
            "1": {"timestamp": ["invalid_format"]},
            "2": {"transaction_id": ["value_is_mandatory"]},
            "4": {"code": ["value_is_mandatory"], "timestamp": ["invalid_format"]},
        }
    )
    assert stored(sb) == before


def test_batch_phase_two_duplicates_roll_back_the_whole_batch(sb: Sandbox) -> None:
    assert post(sb, "/events", {"event": batch_event(5)}).status_code == 200
    before = stored(sb)
    events = [batch_event(i) for i in range(8)]
    events.append(dict(batch_event(2), external_subscription_id="another-sub"))
    response = post(sb, "/events/batch", {"events": events})
    assert response.status_code == 422
    assert response.json() == errors(
        {
            "5": {"transaction_id": ["value_already_exist"]},
            "8": {"transaction_id": ["value_already_exist"]},
        }
    )
    assert stored(sb) == before


def test_batch_duplicates_are_checked_only_after_field_validation(sb: Sandbox) -> None:
    assert post(sb, "/events", {"event": batch_event(0)}).status_code == 200
    response = post(sb, "/events/batch", {"events": [batch_event(0), batch_event(1, code="")]})
    assert response.json()["error_details"] == {"1": {"code": ["value_is_mandatory"]}}


def test_resending_a_batch_without_its_duplicates_succeeds(sb: Sandbox) -> None:
    assert (
        post(sb, "/events/batch", {"events": [batch_event(i) for i in range(3)]}).status_code == 200
    )
    mixed = [batch_event(i) for i in range(6)]
    details = post(sb, "/events/batch", {"events": mixed}).json()["error_details"]
    assert sorted(details) == ["0", "1", "2"]
    rest = [e for i, e in enumerate(mixed) if str(i) not in details]
    response = post(sb, "/events/batch", {"events": rest})
    assert response.status_code == 200
    ids = {e["transaction_id"] for e in stored(sb)}
    assert {f"b-{i}" for i in range(6)} <= ids


def test_clickhouse_store_answers_duplicates_200_and_lists_them_deduplicated(
    sandbox_factory: Any,
) -> None:
    sb = sandbox_factory({"customers": 0, "events": 0}, event_store="clickhouse")
    event = {
        "transaction_id": "tx-ch",
        "code": "api_calls",
        "external_subscription_id": "sub_1",
        "timestamp": 1700000000,
        "properties": {"units": 1},
    }
    first = post(sb, "/events/batch", {"events": [event, event]})
    assert first.status_code == 200, first.text
    answered = first.json()["events"]
    assert [e["lago_id"] for e in answered] == [None, None]
    assert [e["created_at"] for e in answered] == [None, None]
    # The same (subscription, code, transaction id, timestamp): one event, the latest wins.
    again = post(sb, "/events", {"event": {**event, "properties": {"units": 5}}})
    assert again.status_code == 200, again.text
    assert [e["properties"] for e in stored(sb)] == [{"units": 5}]
    # Another timestamp is another event: billed twice.
    later = post(sb, "/events/batch", {"events": [{**event, "timestamp": 1700000060}]})
    assert later.status_code == 200, later.text
    events = stored(sb)
    assert sorted(e["timestamp"] for e in events) == [
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:14:20.000Z",
    ]
    assert all(e["lago_id"] and e["created_at"] for e in events)
    # Phase 1 validation still applies.
    bad = post(sb, "/events/batch", {"events": [{**event, "code": ""}]})
    assert bad.status_code == 422
    assert bad.json()["error_details"] == {"0": {"code": ["value_is_mandatory"]}}
