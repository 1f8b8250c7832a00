"""The pace (max_requests_per_second) under Lago Cloud's gateway limits, in the sandbox.

The sandbox plays the gateway at a tenth of Cloud's rates (events 50/s, the rest 5/s) so
that a few hundred requests cross a second's budget; the target's pace is scaled the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.lago_sandbox import Sandbox
from tests.target.conftest import CATALOG_ONLY
from tests.target.helpers import events_messages, run_target, usage_rows

LIMITS = {"events": 50, "current_usage": 20, "default": 5}
ROWS = 600  # 120 batches of 5: more than twice a second's budget of the events bucket


@pytest.fixture
def limited(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    """A catalog-only organisation behind a gateway with a tenth of Cloud's limits."""
    return sandbox_factory(seed=CATALOG_ONLY, rate_limits=LIMITS)


def _config(sb: Sandbox, api_key: str, tmp_path: Path, pace: float) -> dict[str, Any]:
    return {
        "api_key": api_key,
        "api_url": sb.url,
        "dead_letter_path": str(tmp_path / "dead_letters.jsonl"),
        "batch_size": 5,
        "max_requests_per_second": pace,
    }


def _rows(sb: Sandbox) -> list[dict[str, Any]]:
    metric = sorted(m["code"] for m in sb.dump()["billable_metrics"])[0]
    return usage_rows(ROWS, ["sub_a", "sub_b"], metric)


def test_a_pace_under_the_limit_gets_no_429(limited: Sandbox, api_key: str, tmp_path: Path) -> None:
    # 94% of the events bucket (the default is 95% of Cloud's 500/s).
    run = run_target(_config(limited, api_key, tmp_path, 47), events_messages(_rows(limited)))
    assert run.error is None
    assert run.counts["events"]["delivered"] == ROWS
    assert len(limited.dump()["events"]) == ROWS
    assert limited.rate_limited() == {"events": 0, "current_usage": 0, "default": 0}
    assert run.target.client.pacer.throttled == 0


def test_unpaced_429s_hold_the_bucket_and_deliver_exactly_once(
    limited: Sandbox, api_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run = run_target(_config(limited, api_key, tmp_path, 0), events_messages(_rows(limited)))
    assert run.error is None
    assert run.counts["events"]["delivered"] == ROWS
    assert len(limited.dump()["events"]) == ROWS
    refused = limited.rate_limited()["events"]
    assert refused > 0
    # One warning per hold, not one per refused request.
    warnings = [r for r in caplog.records if "answered 429" in r.getMessage()]
    assert 1 <= len(warnings) <= refused
    assert len(warnings) < 10


def test_a_pace_over_the_limit_slows_down_without_a_429_storm(
    limited: Sandbox, api_key: str, tmp_path: Path
) -> None:
    # Paced above the gateway's rate (another client sharing the budget looks the same).
    run = run_target(_config(limited, api_key, tmp_path, 200), events_messages(_rows(limited)))
    assert run.error is None
    assert len(limited.dump()["events"]) == ROWS
    pacer = run.target.client.pacer
    assert pacer.throttled > 0
    # Each hold halves the pace; the run ends between the floor and the setting.
    assert 1 <= (pacer.rate("events") or 0) <= 200
    assert limited.rate_limited()["events"] < ROWS / 5
