"""The pace (max_requests_per_second) under Lago Cloud's gateway limits, in the sandbox.

The sandbox plays the gateway at half of Cloud's rate for reads (25 requests/s), and a
sync reads about 60 pages, several seconds of that budget.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lago_sandbox import Sandbox
from tests.tap.conftest import run_tap, tap_config

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"events": 100, "current_usage": 40, "default": 25}
SEED = {"seed": 3, "customers": 12, "events": 600}


@pytest.fixture
def limited(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    """An organisation behind a gateway with half of Cloud's read limit."""
    return sandbox_factory(seed=SEED, rate_limits=LIMITS)


def _sync(sb: Sandbox, pace: float) -> list[dict]:
    config = tap_config(sb, max_requests_per_second=pace, page_size=10, max_concurrency=4)
    result = run_tap(config, streams={"events"})
    return result.records["events"]


def test_a_pace_under_the_limit_gets_no_429(limited: Sandbox) -> None:
    records = _sync(limited, 24)  # 96% of the bucket, as the default is of Cloud's 50/s
    assert len(records) == len(limited.dump()["events"])
    assert limited.rate_limited()["default"] == 0


def test_unpaced_reads_are_refused_then_complete_exactly(limited: Sandbox) -> None:
    records = _sync(limited, 0)
    events = limited.dump()["events"]
    assert sorted(r["transaction_id"] for r in records) == sorted(
        e["transaction_id"] for e in events
    )
    assert limited.rate_limited()["default"] > 0


def test_both_plugins_carry_the_same_pacing_module() -> None:
    tap = (ROOT / "tap-lago" / "tap_lago" / "pacing.py").read_text()
    target = (ROOT / "target-lago" / "target_lago" / "pacing.py").read_text()
    assert tap == target
