"""Lago Cloud's gateway limits in the sandbox: per-organisation buckets, 429 with headers."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.lago_sandbox.ratelimits import CLOUD, bucket_of, parse
from tests.sandbox.api import get

SMALL = {"seed": 5, "customers": 3, "events": 0}
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _post_event(sb: Sandbox, n: int) -> requests.Response:
    return requests.post(
        sb.url + "/events",
        json={
            "event": {"transaction_id": f"rl-{n}", "code": "nope", "external_subscription_id": "x"}
        },
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


def test_off_by_default(sandbox_factory: Any) -> None:
    sb: Sandbox = sandbox_factory(SMALL)
    response = get(sb, "/customers")
    assert response.status_code == 200
    assert not set(HEADERS) & set(response.headers)


def test_a_bucket_refuses_over_its_rate_and_the_others_stay_open(sandbox_factory: Any) -> None:
    sb: Sandbox = sandbox_factory(SMALL, rate_limits={"default": 3, "events": 2})
    first = get(sb, "/customers")
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "2"
    statuses = [get(sb, "/plans").status_code for _ in range(4)]
    # The bucket holds one second of its rate: at most 2 more get through right away.
    assert statuses.count(429) >= 2
    refused = get(sb, "/taxes")
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == "1"
    assert refused.json() == {"status": 429, "error": "Too Many Requests"}

    # Event ingestion has a bucket of its own (an unknown metric: 422, still counted).
    assert _post_event(sb, 1).headers["X-RateLimit-Limit"] == "2"
    assert _post_event(sb, 2).status_code != 429
    assert _post_event(sb, 3).status_code == 429
    limited = sb.rate_limited()
    assert limited["events"] == 1 and limited["default"] >= 3

    # After the reset the bucket is usable again.
    time.sleep(int(refused.headers["X-RateLimit-Reset"]))
    assert get(sb, "/customers").status_code == 200


def test_switched_by_the_admin_setting(sandbox_factory: Any) -> None:
    sb: Sandbox = sandbox_factory(SMALL)
    assert sb.configure(rate_limits="cloud")["rate_limits"] == CLOUD
    assert get(sb, "/customers").headers["X-RateLimit-Limit"] == "50"
    sb.configure(rate_limits=None)
    assert "X-RateLimit-Limit" not in get(sb, "/customers").headers
    for bad in ({"posts": 3}, {"default": 0}, "fast"):
        response = requests.post(
            f"{sb.base_url}/_sandbox/settings", json={"rate_limits": bad}, timeout=10
        )
        assert response.status_code == 400, bad


@pytest.mark.parametrize(
    ("method", "path", "bucket"),
    [
        ("POST", "/api/v1/events", "events"),
        ("POST", "/api/v1/events/batch", "events"),
        ("GET", "/api/v1/events", "default"),
        ("GET", "/api/v1/customers/c-1/current_usage", "current_usage"),
        ("GET", "/api/v1/customers/c-1/past_usage", "default"),
        ("POST", "/api/v1/customers", "default"),
    ],
)
def test_buckets_follow_lago_cloud(method: str, path: str, bucket: str) -> None:
    assert bucket_of(method, path) == bucket


def test_partial_rates_take_clouds_figures() -> None:
    assert parse("default=7") == {**CLOUD, "default": 7}
    assert parse(None) is None


def test_command_line_option() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.lago_sandbox",
            "--port",
            "0",
            "--api-key",
            "k",
            "--customers",
            "2",
            "--events",
            "0",
            "--rate-limits",
            "cloud",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split("=", 1)[1]
        response = requests.get(
            f"{url}/customers", headers={"Authorization": "Bearer k"}, timeout=10
        )
        assert response.headers["X-RateLimit-Limit"] == "50"
        assert response.headers["X-RateLimit-Reset"] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
