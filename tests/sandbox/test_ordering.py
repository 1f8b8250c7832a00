"""Ordering and default scope of each list endpoint (LAGO_API_BEHAVIOUR.md section 1)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import ALL_STATUSES, listed, ts

SMALL = {"seed": 7, "customers": 8, "events": 200}


def assert_sorted(rows: list[dict], key: Any, what: str) -> None:
    keys = [key(r) for r in rows]
    assert keys == sorted(keys), f"{what} is not in the server's order"
    assert len(rows) > 1, f"{what}: too few rows to prove an order"


def created_desc_key(r: dict) -> tuple:
    return (-ts(r["created_at"]), r["lago_id"])


@pytest.mark.parametrize(
    "path", ["/customers", "/billable_metrics", "/plans", "/add_ons", "/wallets"]
)
def test_created_at_desc_then_id(sandbox: Sandbox, path: str) -> None:
    assert_sorted(listed(sandbox, path), created_desc_key, path)


def test_events_by_timestamp_desc_then_transaction_id(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/events")
    assert_sorted(rows, lambda r: (-ts(r["timestamp"]), r["transaction_id"]), "/events")


def test_fees_are_the_only_ascending_list(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/fees")
    assert_sorted(rows, lambda r: (ts(r["created_at"]), r["lago_id"]), "/fees")
    assert ts(rows[0]["created_at"]) < ts(rows[-1]["created_at"])


def test_taxes_by_name(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/taxes")
    assert_sorted(rows, lambda r: (r["name"], -ts(r["created_at"]), r["lago_id"]), "/taxes")


def test_invoices_by_issuing_date_desc_then_created_at_desc(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/invoices")
    assert_sorted(
        rows,
        lambda r: (-ts(r["issuing_date"] + "T00:00:00Z"), *created_desc_key(r)),
        "/invoices",
    )


def test_coupons_active_before_terminated_then_expiration(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/coupons")
    statuses = ["terminated" if r["terminated_at"] else "active" for r in rows]
    assert "terminated" in statuses
    assert statuses == sorted(statuses)  # "active" < "terminated"
    active = [r for r in rows if not r["terminated_at"]]
    kinds = [r["expiration"] for r in active]
    assert kinds == sorted(kinds, key=["no_expiration", "time_limit"].index)


def test_subscriptions_by_subscription_at_desc(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/subscriptions", **{"status[]": ALL_STATUSES})
    assert_sorted(
        rows, lambda r: (-ts(r["subscription_at"]), *created_desc_key(r)), "/subscriptions"
    )


def test_subscriptions_default_to_active_only(sandbox: Sandbox) -> None:
    every = sandbox.dump()["subscriptions"]
    assert {s["status"] for s in every} > {"active"}
    rows = listed(sandbox, "/subscriptions")
    assert rows == [s for s in every if s["status"] == "active"]


def test_subscriptions_status_array_selects_statuses(sandbox: Sandbox) -> None:
    every = sandbox.dump()["subscriptions"]
    rows = listed(sandbox, "/subscriptions", **{"status[]": ["terminated", "pending"]})
    expected = [s for s in every if s["status"] in ("terminated", "pending")]
    assert expected
    assert rows == expected


def test_subscriptions_scalar_status_is_ignored(sandbox: Sandbox) -> None:
    rows = listed(sandbox, "/subscriptions", status="terminated")
    assert rows
    assert {s["status"] for s in rows} == {"active"}


def test_subscriptions_invalid_status_value_means_no_filter(sandbox: Sandbox) -> None:
    every = sandbox.dump()["subscriptions"]
    rows = listed(sandbox, "/subscriptions", **{"status[]": ["active", "bogus"]})
    assert rows == every


def test_invoices_hide_generating_open_and_closed(sandbox: Sandbox) -> None:
    every = sandbox.dump()["invoices"]
    hidden = {"generating", "open", "closed", "deleted"}
    assert {i["status"] for i in every} & hidden, "the seed should hold hidden invoices"
    rows = listed(sandbox, "/invoices")
    assert rows == [i for i in every if i["status"] not in hidden]


def test_credit_notes_list_only_finalized(sandbox: Sandbox) -> None:
    every = sandbox.dump()["credit_notes"]
    drafts = [c for c in every if c.get("error_details")]
    assert drafts, "the seed should hold draft credit notes"
    rows = listed(sandbox, "/credit_notes")
    assert rows == [c for c in every if not c.get("error_details")]


def test_wallets_include_terminated(sandbox_factory: Any) -> None:
    sb = sandbox_factory(SMALL)
    wallet = listed(sb, "/wallets")[0]
    sb.upsert("wallets", {"lago_id": wallet["lago_id"], "status": "terminated"})
    statuses = {w["lago_id"]: w["status"] for w in listed(sb, "/wallets")}
    assert statuses[wallet["lago_id"]] == "terminated"


def test_new_rows_land_in_order_after_writes(sandbox_factory: Any) -> None:
    sb = sandbox_factory(SMALL)
    before = listed(sb, "/events")
    newest = ts(before[0]["timestamp"]) + 60
    oldest = ts(before[-1]["timestamp"]) - 60
    response = requests.post(
        sb.url + "/events/batch",
        json={
            "events": [
                {"transaction_id": "late", "code": "api_calls", "timestamp": newest},
                {"transaction_id": "early", "code": "api_calls", "timestamp": oldest},
            ]
        },
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    after = listed(sb, "/events")
    assert after[0]["transaction_id"] == "late"
    assert after[-1]["transaction_id"] == "early"
    assert after[1:-1] == before
