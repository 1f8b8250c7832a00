"""Fixtures for target-lago tests: an empty Lago organisation and ways to run the target."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from target_lago.client import LagoClient

from tests.lago_sandbox import Sandbox

CATALOG_ONLY = {"customers": 0, "events": 0}
EVENT_STORES = ["postgres", "clickhouse"]
#: Mark a test to run against both of Lago's event stores (the `event_store` fixture).
both_event_stores = pytest.mark.parametrize("event_store", EVENT_STORES, indirect=True)


@pytest.fixture(scope="session")
def target_orgs(sandbox_factory: Callable[..., Sandbox]) -> Callable[[str], Sandbox]:
    """One catalog-only sandbox per event store, shared by the target tests."""
    made: dict[str, Sandbox] = {}

    def get(event_store: str) -> Sandbox:
        if event_store not in made:
            made[event_store] = sandbox_factory(seed=CATALOG_ONLY, event_store=event_store)
        return made[event_store]

    return get


@pytest.fixture
def event_store(request: pytest.FixtureRequest) -> str:
    """The event store of the test's organisation: postgres unless parametrized."""
    return str(getattr(request, "param", "postgres"))


@pytest.fixture
def lago(target_orgs: Callable[[str], Sandbox], event_store: str) -> Iterator[Sandbox]:
    """An empty organisation (same plans and metrics as any seeded one), no faults."""
    target_org = target_orgs(event_store)
    target_org.set_faults([])
    target_org.reset(CATALOG_ONLY)
    target_org.requests(clear=True)
    yield target_org
    target_org.set_faults([])


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep retry waits short in in-process runs (the policy itself is unchanged)."""
    monkeypatch.setattr(LagoClient, "backoff_base", 0.01)
    monkeypatch.setattr(LagoClient, "backoff_max", 0.05)


@pytest.fixture
def config(lago: Sandbox, api_key: str, tmp_path: Path) -> dict[str, Any]:
    """Target settings pointing at the empty organisation (unpaced: the sandbox has no
    gateway limit unless asked, see test_pacing.py)."""
    return {
        "api_key": api_key,
        "api_url": lago.url,
        "max_requests_per_second": 0,
        "dead_letter_path": str(tmp_path / "dead_letters.jsonl"),
        "max_retries": 6,
        "request_timeout": 10,
    }


@pytest.fixture
def plan(lago: Sandbox) -> dict[str, Any]:
    """A plan of the catalog (the cheapest, so other plans are upgrades)."""
    plans = sorted(lago.dump()["plans"], key=lambda p: (p["amount_cents"], p["code"]))
    return plans[0]


@pytest.fixture
def metric_code(lago: Sandbox) -> str:
    """Code of a billable metric of the catalog."""
    return sorted(m["code"] for m in lago.dump()["billable_metrics"])[0]
