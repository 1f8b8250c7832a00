"""HTTP behaviour: retries under faults, rate-limit waits, auth failures, vanished parents."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import backoff._sync
import pytest
import requests
from singer_sdk.exceptions import RetriableAPIError
from tap_lago.tap import TapLago

from tests.tap.conftest import SyncResult, run_tap, tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_SEED = {"seed": 21, "customers": 8, "events": 300}


def fired(sandbox: Any) -> dict[str, int]:
    body = requests.get(f"{sandbox.base_url}/_sandbox/faults", timeout=10).json()
    return {f"{r['fault']} {r.get('path', '')}": r["fired"] for r in body["rules"]}


def record_sets(result: SyncResult) -> dict[str, dict[tuple[Any, ...], str]]:
    out: dict[str, dict[tuple[Any, ...], str]] = {}
    for stream, records in result.records.items():
        key = result.schemas[stream]["key_properties"]
        for record in records:
            if stream == "subscription_lifetime_usage":
                record.pop("to_datetime")  # the time of the request
        out[stream] = {tuple(r[k] for k in key): json.dumps(r, sort_keys=True) for r in records}
        assert len(out[stream]) == len(records), f"{stream}: duplicate keys"
    return out


def test_records_under_faults_equal_the_fault_free_run(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SMALL_SEED)
    baseline = run_tap(tap_config(sb))
    sb.set_faults(
        [
            {"path": "/api/v1/customers", "fault": "rate_limit", "count": 3, "reset_seconds": 0},
            {"path": "/api/v1/events", "fault": "error", "status": 503, "count": 3},
            {"path": "/api/v1/events", "fault": "error", "status": 502, "count": 1, "after": 4},
            {"path": "/api/v1/invoices", "fault": "drop", "count": 2},
            {"path": "/api/v1/fees", "fault": "timeout", "delay_ms": 2500, "count": 2},
            {"path": "/api/v1/subscriptions", "fault": "error", "status": 500, "count": 2},
            {"path": "/api/v1/wallets", "fault": "rate_limit", "reset_seconds": 0, "count": 2},
            {"path": "/api/v1/", "fault": "latency", "delay_ms": 30, "probability": 0.3},
            {"path": "/api/v1/", "fault": "drop", "probability": 0.05, "seed": 3, "count": 5},
        ]
    )
    faulted = run_tap(tap_config(sb, request_timeout=1))
    counts = fired(sb)
    sb.set_faults([])

    for rule, n in counts.items():
        if not rule.startswith(("latency", "drop /api/v1/ ")):
            assert n >= 1, f"fault rule {rule!r} never fired"
    assert record_sets(faulted) == record_sets(baseline)


def _recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits the retry loop asks for, without sleeping.

    Only the retry loop's: with no time passing, the pacer would also wait out the hold a
    429 puts on its bucket (in a real run the retry's wait has already covered it).
    """
    sleeps: list[float] = []
    monkeypatch.setattr(backoff._sync, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.mark.parametrize(
    ("rule", "minimum"),
    [
        ({"reset_seconds": 7}, 7.0),
        ({"reset_seconds": 2, "retry_after": 5}, 5.0),
    ],
    ids=["x-ratelimit-reset", "retry-after"],
)
def test_429_waits_what_the_server_asks(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch, rule: dict[str, Any], minimum: float
) -> None:
    sb = sandbox_factory(seed=SMALL_SEED)
    sb.set_faults([{"path": "/api/v1/taxes", "fault": "rate_limit", "count": 2, **rule}])
    sleeps = _recorded_sleeps(monkeypatch)
    result = run_tap(tap_config(sb), streams={"taxes"})
    assert len(result.records["taxes"]) == len(sb.dump()["taxes"])
    assert len(sleeps) == 2
    assert all(minimum <= s <= minimum + 1 for s in sleeps), sleeps
    statuses = [r["status"] for r in sb.requests() if r["path"].endswith("/taxes")]
    assert statuses == [429, 429, 200]


def test_server_errors_back_off_exponentially_with_jitter(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = sandbox_factory(seed=SMALL_SEED)
    sb.set_faults([{"path": "/api/v1/taxes", "fault": "error", "status": 503, "count": 4}])
    monkeypatch.setattr("tap_lago.transport.BACKOFF_BASE_SECONDS", 1.0)
    monkeypatch.setattr("tap_lago.transport.BACKOFF_CAP_SECONDS", 60.0)
    sleeps = _recorded_sleeps(monkeypatch)
    run_tap(tap_config(sb), streams={"taxes"})
    assert len(sleeps) == 4
    for attempt, wait in enumerate(sleeps):
        ceiling = 2.0**attempt
        assert ceiling / 2 <= wait <= ceiling, (attempt, wait)


def test_retries_stop_at_max_retries_with_a_clear_error(sandbox_factory: Any) -> None:
    sb = sandbox_factory(seed=SMALL_SEED)
    sb.set_faults([{"path": "/api/v1/taxes", "fault": "error", "status": 503}])
    with pytest.raises(RetriableAPIError) as excinfo:
        run_tap(tap_config(sb, max_retries=2), streams={"taxes"})
    message = str(excinfo.value)
    assert "503" in message
    assert f"{sb.url}/taxes" in message
    assert [r["status"] for r in sb.requests() if r["path"].endswith("/taxes")] == [503] * 3


def test_bad_key_fails_fast_naming_url_and_status_without_the_key(
    sandbox: Any, tmp_path: Path
) -> None:
    secret = "sk-live-0123456789abcdef-not-the-right-key"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**tap_config(sandbox), "api_key": secret}))
    sandbox_requests_before = len(sandbox.requests())
    proc = subprocess.run(
        [sys.executable, "-m", "tap_lago", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert secret not in output
    assert "HTTP 401" in proc.stderr
    assert f"GET {sandbox.url}/" in proc.stderr
    assert "api_key" in proc.stderr
    # Fails at once: one request, no retries.
    new = sandbox.requests()[sandbox_requests_before:]
    assert [r["status"] for r in new] == [401]


def test_child_of_a_vanished_parent_is_logged_and_skipped(
    sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tap = TapLago(config=tap_config(sandbox), parse_env_config=False)
    gone = "00000000-0000-4000-8000-000000000000"
    with caplog.at_level(logging.WARNING):
        transactions = list(tap.streams["wallet_transactions"].get_records({"wallet_id": gone}))
        usage = list(
            tap.streams["customer_usage"].get_records(
                {"external_customer_id": "no-such-customer", "external_subscription_id": "x"}
            )
        )
    assert transactions == []
    assert usage == []
    skipped = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(skipped) == 2
    assert any(f"/wallets/{gone}/wallet_transactions" in m and "404" in m for m in skipped)
    # The parent still exists for every wallet the sandbox holds: those are read.
    wallet = sandbox.dump()["wallets"][0]["lago_id"]
    read = list(tap.streams["wallet_transactions"].get_records({"wallet_id": wallet}))
    assert read
    assert {r["lago_wallet_id"] for r in read if isinstance(r, dict)} == {wallet}
