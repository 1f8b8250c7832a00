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


class _Clock:
    """A monotonic clock the test moves by hand (sleep moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    from tap_lago import pacing

    fake = _Clock()
    monkeypatch.setattr(pacing.time, "monotonic", lambda: fake.now)
    return fake


def test_requests_are_spaced_evenly_per_bucket(clock: _Clock) -> None:
    from tap_lago.pacing import Pacer

    pacer = Pacer(48, reference="default")
    for _ in range(5):
        pacer.wait("default", clock.sleep)
    assert clock.slept == pytest.approx([1 / 48] * 4)
    clock.slept.clear()
    pacer.wait("current_usage", clock.sleep)  # another bucket: its own pace, no wait
    assert clock.slept == []
    assert pacer.rate("current_usage") == pytest.approx(48 * 4)


def test_a_429_holds_halves_once_a_second_then_the_pace_climbs_back(clock: _Clock) -> None:
    from tap_lago.pacing import Pacer

    pacer = Pacer(40, reference="default")
    assert pacer.limited("default", 2.0) is True
    assert pacer.rate("default") == pytest.approx(20)
    # 429s answered meanwhile to requests already in flight change nothing more.
    assert pacer.limited("default", 2.0) is False
    assert pacer.rate("default") == pytest.approx(20)
    pacer.wait("default", clock.sleep)  # held until the reset
    assert clock.slept == [pytest.approx(2.0)]
    for _ in range(49):
        pacer.acknowledged("default")
    assert pacer.rate("default") == pytest.approx(20 + 49 * 0.4)
    for _ in range(10):
        pacer.acknowledged("default")
    assert pacer.rate("default") == pytest.approx(40)  # never above the setting
    assert pacer.throttled == 2


def test_unpaced_buckets_still_hold_for_a_429(clock: _Clock) -> None:
    from tap_lago.pacing import Pacer

    pacer = Pacer(0)
    pacer.wait("events", clock.sleep)
    assert clock.slept == []
    pacer.limited("events", 1.5)
    assert pacer.rate("events") is None
    pacer.wait("events", clock.sleep)
    assert clock.slept == [pytest.approx(1.5)]
