"""Cash collection and organisation streams: payments, payment requests and receipts,
payment methods, billing entities, features, plan entitlements, webhook endpoints."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft7Validator
from tap_lago.client import parse_datetime
from tap_lago.streams import CustomersStream, PlansStream
from tap_lago.tap import TapLago

from tests.tap.conftest import SyncResult, parse_messages, run_tap, tap_config
from tests.tap.test_first_run import run_cli
from tests.tap.test_sync import expected_from_dump, key_of

SEED = {"seed": 21, "customers": 8, "events": 50}
STREAMS = (
    "payments",
    "payment_requests",
    "payment_receipts",
    "payment_methods",
    "billing_entities",
    "features",
    "entitlements",
    "webhook_endpoints",
)


def _catalog(config: dict[str, Any], selected: set[str]) -> dict[str, Any]:
    """The tap's catalog with only ``selected`` streams selected."""
    catalog = TapLago(config=config, parse_env_config=False).catalog_dict
    for entry in catalog["streams"]:
        for item in entry["metadata"]:
            if item["breadcrumb"] == []:
                item["metadata"]["selected"] = entry["tap_stream_id"] in selected
    return catalog


def _cli_sync(
    tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None = None
) -> SyncResult:
    """A sync of the new streams through the ``tap-lago`` console script."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(_catalog(config, set(STREAMS))))
    args = ["--catalog", str(catalog)]
    if state is not None:
        state_path = tmp_path / "state.json"
        state_path.write_text(json.dumps(state))
        args += ["--state", str(state_path)]
    proc, _ = run_cli(tmp_path, config, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SyncResult(parse_messages(proc.stdout), proc.stdout)


@pytest.fixture(scope="module")
def lago(sandbox_factory: Any) -> Any:
    return sandbox_factory(seed=SEED)


@pytest.fixture(scope="module")
def first_sync(lago: Any, tmp_path_factory: pytest.TempPathFactory) -> SyncResult:
    config = tap_config(lago, page_size=5, lookback_window_days=0)
    return _cli_sync(tmp_path_factory.mktemp("first"), config)


def test_records_are_the_sandbox_objects_and_fit_the_emitted_schema(
    lago: Any, first_sync: SyncResult
) -> None:
    expected = expected_from_dump(lago.dump())
    assert set(first_sync.records) == set(STREAMS)
    for stream in STREAMS:
        records = first_sync.records[stream]
        keyed = {tuple(r[k] for k in key_of(stream)): r for r in records}
        assert len(keyed) == len(records), f"{stream}: a key was emitted twice"
        assert keyed == expected[stream], stream
        schema = first_sync.schemas[stream]
        assert schema["key_properties"] == list(key_of(stream))
        validator = Draft7Validator(schema["schema"])
        errors = [e.message for r in records for e in validator.iter_errors(r)]
        assert not errors, f"{stream}: {errors[:3]}"
    # The server's nulls and class names, kept as sent.
    payments = first_sync.records["payments"]
    assert {p["type"] for p in payments} == {"manual", "provider"}
    assert any(p["reference"] is None for p in payments)
    assert any(p["payment_provider_type"] == "PaymentProviders::StripeProvider" for p in payments)


def test_receipts_are_incremental_and_the_rest_full_table(first_sync: SyncResult) -> None:
    activated = {m["stream"] for m in first_sync.messages if m["type"] == "ACTIVATE_VERSION"}
    assert activated == set(STREAMS) - {"payment_receipts"}
    assert first_sync.schemas["payment_receipts"]["bookmark_properties"] == ["created_at"]
    bookmarks = first_sync.last_state["bookmarks"]
    assert bookmarks["payment_receipts"]["replication_key"] == "created_at"
    for stream in set(STREAMS) - {"payment_receipts"}:
        assert not first_sync.schemas[stream].get("bookmark_properties"), stream
        assert "replication_key_value" not in bookmarks.get(stream, {}), stream


def test_a_second_receipts_sync_reads_one_page_and_only_the_new(
    lago: Any, first_sync: SyncResult, tmp_path: Path
) -> None:
    config = tap_config(lago, page_size=5, lookback_window_days=0)
    state = first_sync.last_state
    mark = parse_datetime(state["bookmarks"]["payment_receipts"]["replication_key_value"])
    on_mark = {
        r["lago_id"]
        for r in first_sync.records["payment_receipts"]
        if parse_datetime(r["created_at"]) == mark
    }
    first_pages = [r for r in lago.requests(clear=True) if r["path"].endswith("/payment_receipts")]
    assert len(first_pages) > 2, "the first sync reads every page"

    again = run_tap(config, state=state, streams={"payment_receipts"})
    assert {r["lago_id"] for r in again.records.get("payment_receipts", [])} == on_mark
    pages = [r for r in lago.requests(clear=True) if r["path"].endswith("/payment_receipts")]
    assert len(pages) == 1, "paging stops at the first receipt older than the bookmark"

    payment = lago.dump()["payments"][0]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = lago.upsert("payment_receipts", {"payment": payment, "created_at": now})[0]
    third = run_tap(config, state=again.last_state, streams={"payment_receipts"})
    assert {r["lago_id"] for r in third.records["payment_receipts"]} == on_mark | {new["lago_id"]}


def test_child_streams_skip_a_parent_gone_meanwhile(
    sandbox_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A customer and a plan deleted after their list was read, before their children."""
    lago = sandbox_factory(seed=SEED)
    dump = lago.dump()
    customer = dump["payment_methods"][0]["external_customer_id"]
    plan = dump["entitlements"][0]["plan_code"]
    doomed = {"external_customer_id": customer, "plan_code": plan}
    headers = {"Authorization": f"Bearer {lago.api_key}"}

    def deleting(original: Any, path: str, field: str) -> Any:
        def get_child_context(self: Any, record: dict[str, Any], context: Any) -> Any:
            child = original(self, record, context)
            if child[field] == doomed[field]:
                gone = requests.delete(f"{lago.url}/{path}/{child[field]}", headers=headers)
                assert gone.status_code in (200, 404)
            return child

        return get_child_context

    for stream, path, field in (
        (CustomersStream, "customers", "external_customer_id"),
        (PlansStream, "plans", "plan_code"),
    ):
        patched = deleting(stream.get_child_context, path, field)
        monkeypatch.setattr(stream, "get_child_context", patched)
    # One request at a time: no child request is started ahead, before the deletion.
    with caplog.at_level(logging.WARNING):
        result = run_tap(
            tap_config(lago, max_concurrency=1), streams={"payment_methods", "entitlements"}
        )

    methods = result.records["payment_methods"]
    kept = [m for m in dump["payment_methods"] if m["external_customer_id"] != customer]
    assert {m["lago_id"] for m in methods} == {m["lago_id"] for m in kept}
    entitlements = result.records["entitlements"]
    assert {e["plan_code"] for e in entitlements} == {
        e["plan_code"] for e in dump["entitlements"]
    } - {plan}
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert any(f"/customers/{customer}/payment_methods" in m and "404" in m for m in skipped)
    assert any(f"/plans/{plan}/entitlements" in m and "plan_not_found" in m for m in skipped)
