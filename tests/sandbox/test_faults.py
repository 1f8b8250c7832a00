"""Fault injection: each kind, and the count / probability / after / method / path rules."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

SMALL = {"seed": 2, "customers": 3, "events": 30}


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(SMALL)


def get(sb: Sandbox, path: str = "/customers", timeout: float = 10) -> requests.Response:
    return requests.get(
        sb.url + path, headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=timeout
    )


def post_event(sb: Sandbox, txid: str) -> requests.Response:
    return requests.post(
        sb.url + "/events",
        json={"event": {"transaction_id": txid, "code": "c", "external_subscription_id": "s"}},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=10,
    )


def test_rate_limit_sends_the_headers(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "rate_limit", "count": 1, "reset_seconds": 7}])
    limited = get(sb)
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Limit"].isdigit()
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-RateLimit-Reset"] == "7"
    assert "Retry-After" not in limited.headers
    assert get(sb).status_code == 200


def test_rate_limit_can_add_retry_after(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "rate_limit", "retry_after": 3}])
    assert get(sb).headers["Retry-After"] == "3"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_error_statuses(sb: Sandbox, status: int) -> None:
    sb.set_faults([{"fault": "error", "status": status, "count": 2}])
    for _ in range(2):
        response = get(sb)
        assert response.status_code == status
        assert response.json()["status"] == status
        assert response.json()["error"]
    assert get(sb).status_code == 200


def test_error_defaults_to_503(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "error"}])
    assert get(sb).status_code == 503


def test_latency_delays_then_answers(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "latency", "delay_ms": 300, "count": 1}])
    started = time.monotonic()
    response = get(sb)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_timeout_stalls_past_the_client_timeout(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "timeout", "delay_ms": 2000, "count": 1}])
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(sb, timeout=0.3)
    assert get(sb).status_code == 200


def test_timeout_closes_without_a_response(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "timeout", "delay_ms": 50, "count": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        get(sb)


def test_drop_closes_the_connection_before_handling(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "drop", "method": "POST", "path": "/api/v1/events", "count": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        post_event(sb, "dropped")
    assert all(e["transaction_id"] != "dropped" for e in sb.dump()["events"])
    assert post_event(sb, "dropped").status_code == 200


def test_lost_response_applies_the_write(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "lost_response", "method": "POST", "count": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        post_event(sb, "lost")
    assert [e["transaction_id"] for e in sb.dump()["events"]].count("lost") == 1
    retry = post_event(sb, "lost")
    assert retry.status_code == 422
    assert retry.json()["error_details"] == {"transaction_id": ["value_already_exist"]}


def test_method_and_path_prefix_matching(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "error", "method": "GET", "path": "/api/v1/events"}])
    assert get(sb, "/events").status_code == 503
    assert get(sb, "/events/whatever").status_code == 503
    assert get(sb, "/customers").status_code == 200
    assert post_event(sb, "ok").status_code == 200


def test_after_lets_the_first_requests_through(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "error", "after": 2, "count": 1}])
    statuses = [get(sb).status_code for _ in range(4)]
    assert statuses == [200, 200, 503, 200]


def test_probability_is_reproducible_with_its_seed(sb: Sandbox) -> None:
    rule = {"fault": "error", "probability": 0.5, "seed": 123}
    runs = []
    for _ in range(2):
        sb.set_faults([rule])
        runs.append([get(sb).status_code for _ in range(40)])
    assert runs[0] == runs[1]
    assert 0 < runs[0].count(503) < 40
    sb.set_faults([dict(rule, seed=124)])
    assert [get(sb).status_code for _ in range(40)] != runs[0]


def test_first_firing_rule_wins_and_fired_counts_are_listed(sb: Sandbox) -> None:
    sb.set_faults(
        [
            {"fault": "rate_limit", "count": 1},
            {"fault": "error", "status": 502, "count": 1},
        ]
    )
    assert [get(sb).status_code for _ in range(3)] == [429, 502, 200]
    assert [r["fired"] for r in sb.faults()] == [1, 1]


def test_faults_never_touch_admin_endpoints(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "drop", "path": "/"}])
    assert sb.dump()["customers"]
    assert len(sb.faults()) == 1


def test_empty_rules_clear_everything(sb: Sandbox) -> None:
    sb.set_faults([{"fault": "error"}])
    sb.set_faults([])
    assert get(sb).status_code == 200
    assert sb.faults() == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"fault": "explode"}, "fault must be one of"),
        ({"fault": "error", "status": 418}, "status must be 404, 500, 502 or 503"),
        ({"fault": "error", "probability": 2}, "probability"),
        ({"fault": "error", "count": -1}, "count"),
        ({"fault": "error", "pathh": "/"}, "unknown field"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_message(sb: Sandbox, rule: dict, message: str) -> None:
    response = requests.post(
        sb.base_url + "/_sandbox/faults", json={"rules": [{"fault": "error"}, rule]}, timeout=10
    )
    assert response.status_code == 400
    assert "rule 1" in response.json()["error"]
    assert message in response.json()["error"]
    assert sb.faults() == []


def test_request_log_records_faults_and_missing_responses(sb: Sandbox) -> None:
    sb.requests(clear=True)
    sb.set_faults([{"fault": "drop", "count": 1}, {"fault": "rate_limit", "count": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        get(sb)
    get(sb)
    get(sb)
    log = sb.requests()
    assert [(r["status"], r["fault"]) for r in log] == [
        (None, "drop"),
        (429, "rate_limit"),
        (200, None),
    ]


def test_global_latency_applies_to_every_api_request(sandbox_factory: Any) -> None:
    sb = sandbox_factory(SMALL, latency_ms=200)
    started = time.monotonic()
    assert get(sb, "/nope").status_code == 404
    assert time.monotonic() - started >= 0.2
