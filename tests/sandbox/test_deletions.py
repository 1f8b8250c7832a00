"""DELETE of customers, plans, coupons and add-ons, and events without a subscription."""

from __future__ import annotations

from typing import Any

import requests

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import ALL_STATUSES, get, listed


def _delete(sb: Sandbox, path: str) -> requests.Response:
    return requests.delete(
        sb.url + path, headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=30
    )


def test_a_deleted_customer_leaves_the_list_and_its_relations_end(sandbox_factory: Any) -> None:
    sb = sandbox_factory({"customers": 12, "events": 0})
    wallet = next(w for w in listed(sb, "/wallets") if w["status"] == "active")
    external_id = wallet["external_customer_id"]
    customer = get(sb, f"/customers/{external_id}").json()["customer"]

    response = _delete(sb, f"/customers/{external_id}")
    assert response.status_code == 200
    assert response.json() == {"customer": customer}

    assert _delete(sb, f"/customers/{external_id}").json()["code"] == "customer_not_found"
    assert get(sb, f"/customers/{external_id}").status_code == 404
    assert customer["lago_id"] not in {c["lago_id"] for c in listed(sb, "/customers")}
    subscriptions = [
        s
        for s in listed(sb, "/subscriptions", **{"status[]": ALL_STATUSES})
        if s["external_customer_id"] == external_id
    ]
    assert subscriptions
    assert not [s for s in subscriptions if s["status"] in ("active", "pending")]
    wallets = [w for w in listed(sb, "/wallets") if w["lago_id"] == wallet["lago_id"]]
    assert wallets[0]["status"] == "terminated" and wallets[0]["terminated_at"]
    # Invoices stay, still naming the deleted customer.
    assert [i for i in listed(sb, "/invoices") if i["customer"]["external_id"] == external_id]


def test_a_deleted_plan_leaves_the_list_and_its_subscriptions_end(sandbox_factory: Any) -> None:
    sb = sandbox_factory({"customers": 12, "events": 0})
    active = next(s for s in listed(sb, "/subscriptions") if s["status"] == "active")
    code = active["plan_code"]

    response = _delete(sb, f"/plans/{code}")
    assert response.status_code == 200
    assert response.json()["plan"]["code"] == code
    assert response.json()["plan"]["pending_deletion"] is True

    assert _delete(sb, f"/plans/{code}").json()["code"] == "plan_not_found"
    assert code not in {p["code"] for p in listed(sb, "/plans")}
    assert not [s for s in listed(sb, "/subscriptions") if s["plan_code"] == code]


def test_a_deleted_coupon_or_add_on_leaves_the_list(sandbox_factory: Any) -> None:
    sb = sandbox_factory({"customers": 12, "events": 0})
    applied = next(a for a in listed(sb, "/applied_coupons") if a["status"] == "active")
    code = applied["coupon_code"]
    assert _delete(sb, f"/coupons/{code}").json()["coupon"]["code"] == code
    assert code not in {c["code"] for c in listed(sb, "/coupons")}
    after = {a["lago_id"]: a for a in listed(sb, "/applied_coupons")}[applied["lago_id"]]
    assert after["status"] == "terminated" and after["coupon_deleted_at"]
    assert _delete(sb, f"/coupons/{code}").json()["code"] == "coupon_not_found"

    add_on = listed(sb, "/add_ons")[0]["code"]
    assert _delete(sb, f"/add_ons/{add_on}").json()["add_on"]["code"] == add_on
    assert add_on not in {a["code"] for a in listed(sb, "/add_ons")}
    assert _delete(sb, f"/add_ons/{add_on}").json()["code"] == "add_on_not_found"


def test_events_without_a_subscription_can_be_seeded(sandbox_factory: Any) -> None:
    sb = sandbox_factory({"customers": 2, "events": 50, "unattached_events": 5})
    events = listed(sb, "/events")
    unattached = [e for e in events if e["external_subscription_id"] is None]
    assert len(events) == 55 and len(unattached) == 5
    assert all(e["lago_id"] and e["code"] for e in unattached)
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps, reverse=True)
