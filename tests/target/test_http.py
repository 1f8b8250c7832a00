"""HTTP behaviour: what a 429 asks is waited, transient failures retried, 403 per record."""

from __future__ import annotations

import pytest
from target_lago.client import LagoClient

from tests.lago_sandbox import Sandbox
from tests.target.conftest import both_event_stores
from tests.target.helpers import (
    dead_letters,
    events_messages,
    posts,
    record,
    run_target,
    schema,
    stored_as,
    usage_rows,
)

BATCH = "/api/v1/events/batch"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the client asks for, instead of sleeping (the pace's gaps of a few ms aside:
    at the default 475 requests/s they are under 25 ms)."""
    asked: list[float] = []

    def sleep(self: LagoClient, seconds: float) -> None:
        if seconds > 0.05:
            asked.append(seconds)

    monkeypatch.setattr(LagoClient, "_sleep", sleep)
    return asked


@pytest.mark.parametrize(
    "case",
    [
        ({"reset_seconds": 7}, 7.0),  # X-RateLimit-Reset
        ({"reset_seconds": 9, "retry_after": 4}, 4.0),  # Retry-After wins when sent
    ],
)
def test_rate_limited_request_waits_what_lago_asks_then_succeeds(
    lago: Sandbox, config: dict, metric_code: str, waits: list[float], case: tuple[dict, float]
) -> None:
    rule, announced = case
    # after 1: the start-up check (an empty batch) goes through first.
    lago.set_faults([{"path": BATCH, "fault": "rate_limit", "count": 1, "after": 1, **rule}])
    run = run_target(config, events_messages(usage_rows(5, ["sub_a"], metric_code)))
    assert run.error is None
    assert len(waits) == 1
    assert announced - 0.05 <= waits[0] <= announced + 0.2
    assert [r["status"] for r in posts(lago)] == [429, 200]
    assert len(lago.dump()["events"]) == 5


def test_a_rate_limit_that_never_lifts_names_the_setting_to_lower(
    lago: Sandbox, config: dict, metric_code: str, waits: list[float]
) -> None:
    lago.set_faults([{"path": BATCH, "fault": "rate_limit", "count": 10, "after": 1}])
    run = run_target(
        {**config, "max_retries": 2}, events_messages(usage_rows(3, ["sub_a"], metric_code))
    )
    assert run.error is not None
    message = str(run.error)
    assert "still failing after 2 retries (last: HTTP 429)" in message
    assert "lower max_requests_per_second" in message
    assert lago.dump()["events"] == []


def test_backoff_grows_exponentially_and_is_bounded(
    lago: Sandbox,
    config: dict,
    metric_code: str,
    waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(LagoClient, "backoff_base", 1.0)
    monkeypatch.setattr(LagoClient, "backoff_max", 6.0)
    lago.set_faults([{"path": BATCH, "fault": "error", "status": 502, "count": 5}])
    run = run_target(config, events_messages(usage_rows(3, ["sub_a"], metric_code)))
    assert run.error is None
    # Full jitter over [wait/2, wait] for waits 1, 2, 4, 6 (capped), 6.
    for asked, ceiling in zip(waits, [1, 2, 4, 6, 6], strict=True):
        assert ceiling / 2 <= asked <= ceiling
    assert len(lago.dump()["events"]) == 3


@both_event_stores
def test_timeouts_and_dropped_connections_are_retried_and_deliver_once(
    lago: Sandbox, config: dict, metric_code: str, event_store: str
) -> None:
    lago.set_faults(
        [
            {"path": BATCH, "fault": "timeout", "delay_ms": 2500, "count": 2},
            {"path": BATCH, "fault": "drop", "count": 2},
            {"path": BATCH, "fault": "lost_response", "count": 2},
        ]
    )
    rows = usage_rows(250, ["sub_a", "sub_b"], metric_code)
    run = run_target({**config, "request_timeout": 1}, events_messages(rows))
    assert run.error is None
    # Lost responses were retried; one stored event read back tells whose write it was.
    assert stored_as(run.counts["events"], event_store) == 250
    assert run.counts["events"]["already_present"] == 0
    assert len(lago.dump()["events"]) == 250
    assert all(rule["fired"] == 2 for rule in lago.faults())


def test_a_403_for_a_premium_feature_rejects_only_that_record(
    lago: Sandbox, config: dict, plan: dict
) -> None:
    subs = [
        {"external_id": "sub_p", "external_customer_id": "cust_p", "plan_code": plan["code"],
         "plan_overrides": {"amount_cents": 1}},
        {"external_id": "sub_q", "external_customer_id": "cust_q", "plan_code": plan["code"]},
    ]  # fmt: skip
    messages = [
        schema("subscriptions", {"external_id": {"type": "string"}}, ["external_id"]),
        *(record("subscriptions", s) for s in subs),
    ]
    run = run_target({**config, "allow_rejections": True}, messages)
    assert run.error is None
    assert [s["external_id"] for s in lago.dump()["subscriptions"]] == ["sub_q"]
    [letter] = dead_letters(config["dead_letter_path"])
    assert (letter["http_status"], letter["error_code"]) == (403, "feature_unavailable")
