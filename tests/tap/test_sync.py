"""A full sync of a seeded sandbox emits exactly what the organisation holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft7Validator

from tests.lago_sandbox.objects import RESOURCES
from tests.tap.conftest import SyncResult, run_tap, tap_config

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "tap-lago" / "tap_lago" / "schemas"

EVENT_KEY = ("transaction_id", "external_subscription_id")
#: Invoices the list endpoint shows (BEHAVIOUR §1: generating/open/closed/deleted hidden).
VISIBLE_INVOICE_STATUSES = {"draft", "finalized", "voided", "failed", "pending"}
DUMPED_STREAMS = RESOURCES


#: Primary keys other than ``lago_id``.
KEYS = {"events": EVENT_KEY, "features": ("code",), "entitlements": ("plan_code", "code")}


def key_of(stream: str) -> tuple[str, ...]:
    return KEYS.get(stream, ("lago_id",))


def schema_of(stream: str) -> dict[str, Any]:
    return json.loads((SCHEMAS_DIR / f"{stream}.json").read_text(encoding="utf-8"))


def listed_by_api(stream: str, obj: dict[str, Any]) -> bool:
    """Whether Lago's list endpoint serves a dumped object (its default scope)."""
    if stream == "invoices":
        return obj["status"] in VISIBLE_INVOICE_STATUSES
    if stream == "credit_notes":
        # Only finalized credit notes are listed; the API shape has no status field and
        # the sandbox marks a draft by its error_details.
        return not obj.get("error_details")
    return True


def expected_from_dump(dump: dict[str, list[dict[str, Any]]]) -> dict[str, dict[tuple, dict]]:
    """Dumped objects the tap must emit, keyed by primary key, cut to schema fields."""
    out: dict[str, dict[tuple, dict]] = {}
    for stream in DUMPED_STREAMS:
        props = schema_of(stream)["properties"]
        out[stream] = {
            tuple(o[k] for k in key_of(stream)): {
                k: _as_emitted(props[k], v) for k, v in o.items() if k in props
            }
            for o in dump[stream]
            if listed_by_api(stream, o)
        }
    return out


def _as_emitted(prop: dict[str, Any], value: Any) -> Any:
    """A dumped value as the tap emits it: decimal strings as numbers (parsed as floats)."""
    if isinstance(value, str) and prop.get("type") == ["number", "null"]:
        return float(value)
    return value


def by_key(result: SyncResult, stream: str) -> dict[tuple, dict]:
    records = result.records.get(stream, [])
    keyed = {tuple(r[k] for k in key_of(stream)): r for r in records}
    assert len(keyed) == len(records), f"{stream}: a primary key was emitted twice"
    return keyed


@pytest.fixture(scope="module")
def full_sync(sandbox: Any) -> SyncResult:
    return run_tap(tap_config(sandbox, page_size=25))


def test_full_sync_emits_exactly_the_dumped_objects(sandbox: Any, full_sync: SyncResult) -> None:
    expected = expected_from_dump(sandbox.dump())
    for stream in DUMPED_STREAMS:
        got = by_key(full_sync, stream)
        assert set(got) == set(expected[stream]), f"{stream}: emitted keys differ from the dump"
        mismatched = [k for k in got if got[k] != expected[stream][k]]
        assert not mismatched, f"{stream}: records differ from the dump, e.g. {mismatched[:1]}"
        assert got, f"{stream}: the seeded sandbox should hold some {stream}"


def test_list_scopes_match_what_the_api_serves(sandbox: Any) -> None:
    """The dump-based expectation agrees with the API's own (unpaged) listing."""
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    expected = expected_from_dump(sandbox.dump())
    for stream in ("invoices", "credit_notes"):
        body = requests.get(
            f"{sandbox.url}/{stream}",
            params={"per_page": 100000},
            headers=headers,
            timeout=30,
        ).json()
        listed = {(o["lago_id"],) for o in body[stream]}
        assert listed == set(expected[stream]), stream


def test_subscriptions_in_every_status(sandbox: Any, full_sync: SyncResult) -> None:
    statuses = {s["status"] for s in sandbox.dump()["subscriptions"]}
    assert {"active", "terminated"} <= statuses, "seed should hold several statuses"
    assert {r["status"] for r in full_sync.records["subscriptions"]} == statuses


def test_customer_usage_for_each_active_subscription(sandbox: Any, full_sync: SyncResult) -> None:
    active = {
        (s["external_customer_id"], s["external_id"])
        for s in sandbox.dump()["subscriptions"]
        if s["status"] == "active"
    }
    usage = full_sync.records["customer_usage"]
    assert {(u["external_customer_id"], u["external_subscription_id"]) for u in usage} == active
    keys = [
        (u["external_customer_id"], u["external_subscription_id"], u["from_datetime"])
        for u in usage
    ]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("stream", [*DUMPED_STREAMS, "customer_usage"])
def test_every_record_validates_against_its_stream_schema(
    full_sync: SyncResult, stream: str
) -> None:
    validator = Draft7Validator(schema_of(stream))
    errors = [
        f"{r.get('lago_id') or r.get('transaction_id')}: {e.json_path}: {e.message}"
        for r in full_sync.records.get(stream, [])
        for e in validator.iter_errors(r)
    ]
    assert not errors, f"{stream}: {len(errors)} violations, e.g. {errors[:3]}"


def test_schema_messages_declare_keys_and_bookmarks(full_sync: SyncResult) -> None:
    schemas = full_sync.schemas
    assert schemas["events"]["key_properties"] == list(EVENT_KEY)
    assert schemas["events"]["bookmark_properties"] == ["timestamp"]
    assert schemas["invoices"]["bookmark_properties"] == ["updated_at"]
    assert not schemas["customers"].get("bookmark_properties")  # full table
    assert schemas["fees"]["bookmark_properties"] == ["created_at"]
    assert schemas["customer_usage"]["key_properties"] == [
        "external_customer_id",
        "external_subscription_id",
        "from_datetime",
    ]
    bookmarks = full_sync.last_state["bookmarks"]
    for stream, key in (
        ("events", "timestamp"),
        ("fees", "created_at"),
        ("invoices", "updated_at"),
        ("credit_notes", "updated_at"),
    ):
        assert bookmarks[stream]["replication_key"] == key
        assert bookmarks[stream]["replication_key_value"]
        assert "progress_markers" not in bookmarks[stream]


def test_pages_are_read_until_next_page_is_null(sandbox: Any) -> None:
    """Every list is read page by page with per_page = page_size; nothing is re-requested."""
    sandbox.requests(clear=True)
    run_tap(tap_config(sandbox, page_size=7), streams={"customers"})
    log = [r for r in sandbox.requests() if r["path"].endswith("/customers")]
    customers = len(sandbox.dump()["customers"])
    pages = -(-customers // 7)
    assert [r["status"] for r in log] == [200] * pages
    assert all("per_page=7" in r["query"] for r in log)
    assert [f"page={n}" in r["query"] for n, r in enumerate(log, start=1)] == [True] * pages
