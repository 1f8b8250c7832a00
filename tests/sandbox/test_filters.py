"""List filters (LAGO_API_BEHAVIOUR.md sections 2 and 3), on the shared read-only sandbox."""

from __future__ import annotations

import pytest

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import ALL_STATUSES, get, listed, ts

EMPTY_META = {
    "current_page": 0,
    "next_page": None,
    "prev_page": None,
    "total_pages": 0,
    "total_count": 0,
}


@pytest.fixture(scope="module")
def dump(sandbox: Sandbox) -> dict[str, list[dict]]:
    return sandbox.dump()


def unprocessable(details: dict) -> dict:
    return {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }


# -- events -------------------------------------------------------------------------------


def test_events_timestamp_window_is_inclusive(sandbox: Sandbox, dump: dict) -> None:
    events = dump["events"]
    low, high = events[300]["timestamp"], events[100]["timestamp"]
    rows = listed(sandbox, "/events", timestamp_from=low, timestamp_to=high)
    expected = [e for e in events if ts(low) <= ts(e["timestamp"]) <= ts(high)]
    assert rows == expected
    assert rows[0]["timestamp"] == high
    assert rows[-1]["timestamp"] == low


def test_events_timestamp_from_alone_and_with_offset(sandbox: Sandbox, dump: dict) -> None:
    events = dump["events"]
    pivot = ts(events[500]["timestamp"])
    rows = listed(sandbox, "/events", timestamp_from="2026-01-01T01:00:00+01:00")
    assert rows == [e for e in events if ts(e["timestamp"]) >= ts("2026-01-01T00:00:00Z")]
    later = listed(sandbox, "/events", timestamp_from=events[500]["timestamp"])
    assert later == [e for e in events if ts(e["timestamp"]) >= pivot]


def test_events_timestamp_to_accepts_a_bare_date(sandbox: Sandbox, dump: dict) -> None:
    cutoff = dump["events"][1000]["timestamp"][:10]
    rows = listed(sandbox, "/events", timestamp_to=cutoff)
    limit = ts(cutoff + "T00:00:00Z")
    assert rows == [e for e in dump["events"] if ts(e["timestamp"]) <= limit]


@pytest.mark.parametrize("name", ["timestamp_from", "timestamp_to"])
def test_events_invalid_timestamp_filter_is_422(sandbox: Sandbox, name: str) -> None:
    response = get(sandbox, "/events", **{name: "yesterday"})
    assert response.status_code == 422
    assert response.json() == unprocessable({name: ["invalid_date"]})


def test_events_by_code_and_subscription(sandbox: Sandbox, dump: dict) -> None:
    sample = dump["events"][0]
    code, sub = sample["code"], sample["external_subscription_id"]
    rows = listed(sandbox, "/events", code=code, external_subscription_id=sub)
    assert rows == [
        e for e in dump["events"] if e["code"] == code and e["external_subscription_id"] == sub
    ]
    assert 0 < len(rows) < len(dump["events"])


# -- invoices and credit notes ------------------------------------------------------------


def visible_invoices(dump: dict) -> list[dict]:
    return [i for i in dump["invoices"] if i["status"] not in {"generating", "open", "closed"}]


def test_invoices_issuing_date_window_inclusive(sandbox: Sandbox, dump: dict) -> None:
    invoices = visible_invoices(dump)
    low, high = invoices[-5]["issuing_date"], invoices[5]["issuing_date"]
    rows = listed(sandbox, "/invoices", issuing_date_from=low, issuing_date_to=high)
    assert rows == [i for i in invoices if low <= i["issuing_date"] <= high]
    assert {rows[0]["issuing_date"], rows[-1]["issuing_date"]} == {high, low}


def test_invoices_invalid_issuing_date_is_silently_ignored(sandbox: Sandbox, dump: dict) -> None:
    rows = listed(sandbox, "/invoices", issuing_date_from="not-a-date")
    assert rows == visible_invoices(dump)


def test_invoices_by_status_payment_status_and_customer(sandbox: Sandbox, dump: dict) -> None:
    invoices = visible_invoices(dump)
    customer = next(
        i["customer"]["external_id"]
        for i in invoices
        if i["status"] == "finalized" and i["payment_status"] == "succeeded"
    )
    rows = listed(
        sandbox,
        "/invoices",
        status="finalized",
        payment_status="succeeded",
        external_customer_id=customer,
    )
    expected = [
        i
        for i in invoices
        if i["status"] == "finalized"
        and i["payment_status"] == "succeeded"
        and i["customer"]["external_id"] == customer
    ]
    assert rows == expected
    assert rows
    voided = listed(sandbox, "/invoices", status="voided")
    assert voided == [i for i in invoices if i["status"] == "voided"]


def test_customer_nested_invoices(sandbox: Sandbox, dump: dict) -> None:
    customer = visible_invoices(dump)[0]["customer"]["external_id"]
    nested = listed(sandbox, f"/customers/{customer}/invoices")
    assert nested == listed(sandbox, "/invoices", external_customer_id=customer)


def test_credit_notes_issuing_date_and_customer(sandbox: Sandbox) -> None:
    notes = listed(sandbox, "/credit_notes")
    low = sorted(n["issuing_date"] for n in notes)[len(notes) // 2]
    rows = listed(sandbox, "/credit_notes", issuing_date_from=low)
    assert rows == [n for n in notes if n["issuing_date"] >= low]
    assert listed(sandbox, "/credit_notes", issuing_date_to="garbage") == notes
    customer = notes[0]["customer"]["external_id"]
    mine = listed(sandbox, "/credit_notes", external_customer_id=customer)
    assert mine == [n for n in notes if n["customer"]["external_id"] == customer]
    assert listed(sandbox, f"/customers/{customer}/credit_notes") == mine


# -- fees ---------------------------------------------------------------------------------


def test_fees_created_at_window_inclusive(sandbox: Sandbox, dump: dict) -> None:
    fees = dump["fees"]
    low, high = fees[10]["created_at"], fees[-10]["created_at"]
    rows = listed(sandbox, "/fees", created_at_from=low, created_at_to=high)
    assert rows == [f for f in fees if ts(low) <= ts(f["created_at"]) <= ts(high)]
    assert rows[0]["created_at"] == low


def test_fees_invalid_created_at_is_422(sandbox: Sandbox) -> None:
    response = get(sandbox, "/fees", created_at_to="31/12/2025")
    assert response.status_code == 422
    assert response.json() == unprocessable({"created_at_to": ["invalid_date"]})


def test_fees_by_type_subscription_and_customer(sandbox: Sandbox, dump: dict) -> None:
    fees = dump["fees"]
    charge = [f for f in fees if f["item"]["type"] == "charge"]
    assert listed(sandbox, "/fees", fee_type="charge") == charge
    sample = charge[0]
    rows = listed(
        sandbox,
        "/fees",
        external_subscription_id=sample["external_subscription_id"],
        external_customer_id=sample["external_customer_id"],
    )
    assert rows == [
        f
        for f in fees
        if f["external_subscription_id"] == sample["external_subscription_id"]
        and f["external_customer_id"] == sample["external_customer_id"]
    ]


# -- subscriptions, wallets, applied coupons ---------------------------------------------


def test_subscriptions_by_customer_and_plan(sandbox: Sandbox, dump: dict) -> None:
    subs = dump["subscriptions"]
    sample = next(s for s in subs if s["status"] == "active")
    rows = listed(
        sandbox,
        "/subscriptions",
        external_customer_id=sample["external_customer_id"],
        **{"status[]": ALL_STATUSES},
    )
    assert rows == [s for s in subs if s["external_customer_id"] == sample["external_customer_id"]]
    by_plan = listed(sandbox, "/subscriptions", plan_code=sample["plan_code"])
    assert by_plan == [
        s for s in subs if s["plan_code"] == sample["plan_code"] and s["status"] == "active"
    ]
    assert listed(sandbox, "/subscriptions", external_customer_id="nobody") == []
    nested = listed(
        sandbox,
        f"/customers/{sample['external_customer_id']}/subscriptions",
        **{"status[]": ALL_STATUSES},
    )
    assert nested == rows


def test_wallets_by_customer(sandbox: Sandbox, dump: dict) -> None:
    wallet = dump["wallets"][0]
    rows = listed(sandbox, "/wallets", external_customer_id=wallet["external_customer_id"])
    assert rows == [
        w for w in dump["wallets"] if w["external_customer_id"] == wallet["external_customer_id"]
    ]
    assert listed(sandbox, f"/customers/{wallet['external_customer_id']}/wallets") == rows


def test_wallets_unknown_customer_is_404(sandbox: Sandbox) -> None:
    response = get(sandbox, "/wallets", external_customer_id="nobody")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "error": "Not Found", "code": "customer_not_found"}


def test_wallet_transactions_belong_to_their_wallet(sandbox: Sandbox, dump: dict) -> None:
    wallet = dump["wallets"][0]
    rows = listed(sandbox, f"/wallets/{wallet['lago_id']}/wallet_transactions")
    expected = [t for t in dump["wallet_transactions"] if t["lago_wallet_id"] == wallet["lago_id"]]
    assert rows == expected
    assert rows
    inbound = listed(
        sandbox,
        f"/wallets/{wallet['lago_id']}/wallet_transactions",
        transaction_type="inbound",
    )
    assert inbound == [t for t in expected if t["transaction_type"] == "inbound"]


def test_applied_coupons_by_customer_and_code(sandbox: Sandbox, dump: dict) -> None:
    sample = dump["applied_coupons"][0]
    rows = listed(
        sandbox,
        "/applied_coupons",
        external_customer_id=sample["external_customer_id"],
        **{"coupon_code[]": [sample["coupon_code"]]},
    )
    assert rows == [
        a
        for a in dump["applied_coupons"]
        if a["external_customer_id"] == sample["external_customer_id"]
        and a["coupon_code"] == sample["coupon_code"]
    ]
    assert sample in rows


@pytest.mark.parametrize("nested", ["subscriptions", "invoices", "credit_notes", "wallets"])
def test_nested_list_of_unknown_customer_is_404(sandbox: Sandbox, nested: str) -> None:
    response = get(sandbox, f"/customers/nobody/{nested}")
    assert response.status_code == 404
    assert response.json()["code"] == "customer_not_found"


def test_filters_that_match_nothing_give_the_empty_meta(sandbox: Sandbox) -> None:
    body = get(sandbox, "/fees", fee_type="no_such_type").json()
    assert body == {"fees": [], "meta": EMPTY_META}
