"""POST /subscriptions and DELETE /subscriptions/{external_id} (section 6)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

SMALL = {"seed": 11, "customers": 4, "events": 20}
ALL_STATUSES = ["pending", "active", "terminated", "canceled", "incomplete"]
PER_YEAR = {"weekly": 52, "monthly": 12, "quarterly": 4, "semiannual": 2, "yearly": 1}


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(SMALL)


def auth(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.api_key}"}


def create(sb: Sandbox, **fields: Any) -> requests.Response:
    return requests.post(
        sb.url + "/subscriptions", json={"subscription": fields}, headers=auth(sb), timeout=30
    )


def subs(sb: Sandbox, external_id: str) -> list[dict]:
    params: dict[str, Any] = {"status[]": ALL_STATUSES, "per_page": 1000}
    rows = requests.get(
        sb.url + "/subscriptions",
        params=params,
        headers=auth(sb),
        timeout=30,
    ).json()["subscriptions"]
    return [s for s in rows if s["external_id"] == external_id]


def plans_by_yearly_amount(sb: Sandbox) -> list[dict]:
    plans = sb.dump()["plans"]
    currency = plans[0]["amount_currency"]
    same = [p for p in plans if p["amount_currency"] == currency]
    return sorted(same, key=lambda p: p["amount_cents"] * PER_YEAR[p["interval"]])


def errors(details: dict) -> dict:
    return {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }


def test_create_for_an_unknown_customer_creates_the_customer(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    response = create(
        sb, external_customer_id="brand-new", plan_code=plan["code"], external_id="s1"
    )
    assert response.status_code == 200
    sub = response.json()["subscription"]
    assert sub["status"] == "active"
    assert sub["external_customer_id"] == "brand-new"
    assert sub["plan_code"] == plan["code"]
    assert sub["plan"]["code"] == plan["code"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", sub["started_at"])
    customer = requests.get(f"{sb.url}/customers/brand-new", headers=auth(sb), timeout=30)
    assert customer.status_code == 200
    assert customer.json()["customer"]["lago_id"] == sub["lago_customer_id"]
    assert customer.json()["customer"]["currency"] == plan["amount_currency"]
    listed = subs(sb, "s1")
    assert [s["lago_id"] for s in listed] == [sub["lago_id"]]
    assert "plan" not in listed[0]


def test_same_plan_again_returns_the_existing_subscription(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    first = create(sb, external_customer_id="c", plan_code=plan["code"], external_id="s").json()
    again = create(sb, external_customer_id="c", plan_code=plan["code"], external_id="s", name="x")
    assert again.status_code == 200
    assert again.json() == first
    assert len(subs(sb, "s")) == 1


def test_upgrade_terminates_and_starts_a_new_active_subscription(sb: Sandbox) -> None:
    cheap, dear = plans_by_yearly_amount(sb)[0], plans_by_yearly_amount(sb)[-1]
    old = create(sb, external_customer_id="c", plan_code=cheap["code"], external_id="s").json()
    response = create(sb, external_customer_id="c", plan_code=dear["code"], external_id="s")
    assert response.status_code == 200
    new = response.json()["subscription"]
    assert new["lago_id"] != old["subscription"]["lago_id"]
    assert new["status"] == "active"
    assert new["plan_code"] == dear["code"]
    assert new["previous_plan_code"] == cheap["code"]
    by_id = {s["lago_id"]: s for s in subs(sb, "s")}
    assert by_id[old["subscription"]["lago_id"]]["status"] == "terminated"
    assert by_id[old["subscription"]["lago_id"]]["terminated_at"]


def test_downgrade_returns_the_current_one_and_schedules_the_next(sb: Sandbox) -> None:
    cheap, dear = plans_by_yearly_amount(sb)[0], plans_by_yearly_amount(sb)[-1]
    current = create(sb, external_customer_id="c", plan_code=dear["code"], external_id="s").json()
    response = create(sb, external_customer_id="c", plan_code=cheap["code"], external_id="s")
    assert response.status_code == 200
    body = response.json()["subscription"]
    assert body["lago_id"] == current["subscription"]["lago_id"]
    assert body["status"] == "active"
    assert body["next_plan_code"] == cheap["code"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", body["downgrade_plan_date"])
    pending = [s for s in subs(sb, "s") if s["status"] == "pending"]
    assert [(s["plan_code"], s["previous_plan_code"]) for s in pending] == [
        (cheap["code"], dear["code"])
    ]


def test_plan_unknown_or_missing_is_404(sb: Sandbox) -> None:
    for fields in ({"plan_code": "nope"}, {}):
        response = create(sb, external_customer_id="c", external_id="s", **fields)
        assert response.status_code == 404
        assert response.json() == {"status": 404, "error": "Not Found", "code": "plan_not_found"}


def test_customer_is_checked_after_the_plan(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    response = create(sb, plan_code=plan["code"], external_id="s")
    assert response.status_code == 422
    assert response.json() == errors({"external_customer_id": ["value_is_mandatory"]})


def test_external_id_is_mandatory_but_the_customer_is_kept(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    response = create(sb, plan_code=plan["code"], external_customer_id="kept")
    assert response.status_code == 422
    assert response.json() == errors({"external_id": ["value_is_mandatory"]})
    assert requests.get(f"{sb.url}/customers/kept", headers=auth(sb), timeout=30).ok


def test_external_id_active_under_another_customer_is_422(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    assert create(sb, external_customer_id="a", plan_code=plan["code"], external_id="s").ok
    response = create(sb, external_customer_id="b", plan_code=plan["code"], external_id="s")
    assert response.status_code == 422
    assert response.json() == errors({"external_id": ["value_already_exist"]})


def test_future_subscription_at_makes_a_pending_subscription(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    future = (datetime.now(timezone.utc) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = create(
        sb,
        external_customer_id="c",
        plan_code=plan["code"],
        external_id="f",
        subscription_at=future,
    )
    assert response.status_code == 200
    sub = response.json()["subscription"]
    assert sub["status"] == "pending"
    assert sub["subscription_at"] == future
    assert sub["started_at"] is None


def test_invalid_inputs(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    base = {"external_customer_id": "c", "plan_code": plan["code"], "external_id": "s"}
    cases = [
        ({"subscription_at": "someday"}, {"subscription_at": ["invalid_date"]}),
        ({"billing_time": "weekly"}, {"billing_time": ["value_is_invalid"]}),
    ]
    for extra, details in cases:
        response = create(sb, **base, **extra)
        assert response.status_code == 422
        assert response.json() == errors(details)
    forbidden = create(sb, **base, plan_overrides={"amount_cents": 1})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"status": 403, "error": "Forbidden", "code": "feature_unavailable"}


def test_missing_subscription_root_is_400(sb: Sandbox) -> None:
    response = requests.post(sb.url + "/subscriptions", json={}, headers=auth(sb), timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].endswith(": subscription")


def test_delete_terminates_and_returns_the_subscription(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    created = create(sb, external_customer_id="c", plan_code=plan["code"], external_id="d").json()
    response = requests.delete(sb.url + "/subscriptions/d", headers=auth(sb), timeout=30)
    assert response.status_code == 200
    sub = response.json()["subscription"]
    assert sub["lago_id"] == created["subscription"]["lago_id"]
    assert sub["status"] == "terminated"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sub["terminated_at"])
    again = requests.delete(sb.url + "/subscriptions/d", headers=auth(sb), timeout=30)
    assert again.status_code == 404
    assert again.json()["code"] == "subscription_not_found"
    active = requests.get(sb.url + "/subscriptions", headers=auth(sb), timeout=30).json()
    assert all(s["external_id"] != "d" for s in active["subscriptions"])


def test_delete_with_status_pending_cancels(sb: Sandbox) -> None:
    plan = plans_by_yearly_amount(sb)[0]
    future = (datetime.now(timezone.utc) + timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(
        sb,
        external_customer_id="c",
        plan_code=plan["code"],
        external_id="p",
        subscription_at=future,
    )
    assert (
        requests.delete(sb.url + "/subscriptions/p", headers=auth(sb), timeout=30).status_code
        == 404
    )
    response = requests.delete(
        sb.url + "/subscriptions/p", params={"status": "pending"}, headers=auth(sb), timeout=30
    )
    assert response.status_code == 200
    assert response.json()["subscription"]["status"] == "canceled"
    assert response.json()["subscription"]["canceled_at"]
