"""Helpers for tap-lago tests: run the tap in-process and collect its Singer messages."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import pytest
from tap_lago import transport
from tap_lago.tap import TapLago

#: The stream each record list of ``/_sandbox/dump`` maps to, and the API's list scope.
INVOICE_VISIBLE_STATUSES = {"draft", "finalized", "voided", "failed", "pending"}


@dataclass
class SyncResult:
    """The Singer messages one tap run wrote to stdout."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    #: The tap's stdout as written (exact numbers; ``messages`` parse them as floats).
    output: str = ""

    @property
    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Records per stream, in emission order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for msg in self.messages:
            if msg["type"] == "RECORD":
                out.setdefault(msg["stream"], []).append(msg["record"])
        return out

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every STATE value, in order."""
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def last_state(self) -> dict[str, Any]:
        """The final STATE value."""
        return self.states[-1]

    @property
    def schemas(self) -> dict[str, dict[str, Any]]:
        """The SCHEMA message of each stream."""
        return {m["stream"]: m for m in self.messages if m["type"] == "SCHEMA"}

    def keys(self, stream: str, key: tuple[str, ...] = ("lago_id",)) -> list[tuple[Any, ...]]:
        """Primary keys of the records of one stream, in emission order."""
        return [tuple(r[k] for k in key) for r in self.records.get(stream, [])]


def parse_messages(text: str) -> list[dict[str, Any]]:
    """Parse Singer JSON lines."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_tap(
    config: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    streams: set[str] | None = None,
) -> SyncResult:
    """Run a full sync in this process; optionally select only some streams."""
    tap = TapLago(config=config, state=state, parse_env_config=False)
    if streams is not None:
        unknown = streams - set(tap.streams)
        assert not unknown, f"unknown streams {unknown}"
        for name, stream in tap.streams.items():
            stream.selected = name in streams
    buf = io.StringIO()
    with redirect_stdout(buf):
        tap.sync_all()
    return SyncResult(parse_messages(buf.getvalue()), buf.getvalue())


def tap_config(sandbox: Any, **overrides: Any) -> dict[str, Any]:
    """Tap settings pointing at a sandbox; small pages so paging is exercised (events too).

    Unpaced: the sandbox has no gateway limit unless asked (tests/tap/test_pacing.py).
    """
    config: dict[str, Any] = {
        "api_key": sandbox.api_key,
        "api_url": sandbox.url,
        "max_requests_per_second": 0,
        "page_size": 20,
        "request_timeout": 10,
        "max_retries": 8,
    }
    config.update(overrides)
    # Events are paged like the rest unless a test says otherwise (page-ahead, windows).
    config.setdefault("events_page_size", config["page_size"])
    return config


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep exponential backoff waits in tests to tens of milliseconds."""
    monkeypatch.setattr(transport, "BACKOFF_BASE_SECONDS", 0.02)
    monkeypatch.setattr(transport, "BACKOFF_CAP_SECONDS", 0.2)
