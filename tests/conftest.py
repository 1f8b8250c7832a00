"""Shared pytest fixtures: the Lago sandbox, started once per session."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lago_sandbox import Sandbox

API_KEY = "test-api-key"
SESSION_SEED = {"seed": 42, "customers": 20, "events": 2000}

SandboxFactory = Callable[..., Sandbox]


@pytest.fixture(scope="session")
def api_key() -> str:
    """The API key every sandbox of the session accepts."""
    return API_KEY


@pytest.fixture(scope="session")
def sandbox(api_key: str) -> Iterator[Sandbox]:
    """A shared, read-only sandbox (seed 42, 20 customers, 2000 events). Do not write to it."""
    with Sandbox(api_key, seed=dict(SESSION_SEED)) as running:
        yield running


@pytest.fixture(scope="session")
def sandbox_factory(api_key: str) -> Iterator[SandboxFactory]:
    """``sandbox_factory(seed=None, latency_ms=0, event_store="postgres", rate_limits=None)``.

    A fresh started sandbox, for tests that write or inject faults. Every sandbox it made
    is stopped at the end of the session.
    """
    made: list[Sandbox] = []

    def factory(
        seed: dict[str, Any] | None = None,
        latency_ms: int = 0,
        event_store: str = "postgres",
        rate_limits: Any = None,
    ) -> Sandbox:
        running = Sandbox(
            api_key,
            seed=seed,
            latency_ms=latency_ms,
            event_store=event_store,
            rate_limits=rate_limits,
        )
        running.start()
        made.append(running)
        return running

    yield factory
    stoppers = [threading.Thread(target=running.stop) for running in made]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(timeout=30)

