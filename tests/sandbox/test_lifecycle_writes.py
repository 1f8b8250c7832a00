"""PUT /subscriptions, POST /applied_coupons, one-off POST /invoices and PUT /invoices."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

CATALOG = {"customers": 0, "events": 0}


@pytest.fixture(scope="module")
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(CATALOG)


def call(sb: Sandbox, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
    return requests.request(
        method,
        sb.url + path,
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


def day(n: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=n)).strftime("%Y-%m-%dT00:00:00Z")


def error(response: requests.Response) -> tuple[int, Any]:
    body = response.json()
    return response.status_code, body.get("error_details") or body.get("code")


def test_put_subscription(sb: Sandbox) -> None:
    plan = sb.dump()["plans"][0]["code"]
    base = {"external_customer_id": "put_c", "plan_code": plan}
    assert call(sb, "POST", "/subscriptions", {"subscription": {**base, "external_id": "put_1"}}).ok
    body = {"subscription": {"name": "Renamed", "ending_at": day(90)}}
    answer = call(sb, "PUT", "/subscriptions/put_1", body).json()["subscription"]
    assert (answer["name"], answer["ending_at"], answer["plan"]["code"]) == (
        "Renamed",
        day(90),
        plan,
    )
    again = call(sb, "PUT", "/subscriptions/put_1", body).json()["subscription"]
    assert again == answer  # the same state
    past = {"subscription": {"ending_at": day(-1)}}
    assert error(call(sb, "PUT", "/subscriptions/put_1", past)) == (
        422,
        {"ending_at": ["invalid_date"]},
    )
    bad = {"subscription": {"subscription_at": "soon"}}
    assert error(call(sb, "PUT", "/subscriptions/put_1", bad)) == (
        422,
        {"subscription_at": ["invalid_date"]},
    )
    assert error(call(sb, "PUT", "/subscriptions/none", body)) == (404, "subscription_not_found")
    premium = {"subscription": {"plan_overrides": {"amount_cents": 1}}}
    assert error(call(sb, "PUT", "/subscriptions/put_1", premium)) == (403, "feature_unavailable")
    assert call(sb, "PUT", "/subscriptions/put_1", {}).status_code == 400
    # A pending one: subscription_at moves; today activates it.
    pending = {**base, "external_id": "put_2", "subscription_at": day(10)}
    assert call(sb, "POST", "/subscriptions", {"subscription": pending}).ok
    moved = call(
        sb, "PUT", "/subscriptions/put_2", {"subscription": {"subscription_at": day(20)}}
    ).json()["subscription"]
    assert (moved["status"], moved["subscription_at"]) == ("pending", day(20))
    now = call(
        sb,
        "PUT",
        "/subscriptions/put_2",
        {"subscription": {"subscription_at": day(0)}},
        status="pending",
    ).json()["subscription"]
    assert now["status"] == "active"
    # A terminated one alone with its external_id can still be updated.
    assert call(sb, "DELETE", "/subscriptions/put_1").ok
    renamed = call(sb, "PUT", "/subscriptions/put_1", {"subscription": {"name": "Old"}})
    assert renamed.json()["subscription"]["status"] == "terminated"


def test_applied_coupons(sb: Sandbox) -> None:
    plan = sb.dump()["plans"][0]["code"]
    customer = {"external_id": "ac_c", "currency": "EUR"}
    assert call(sb, "POST", "/customers", {"customer": customer}).ok
    sb.upsert("coupons", [{"code": "once_only", "reusable": False}, {"code": "again"}])

    def apply(code: str, ext: str = "ac_c") -> requests.Response:
        body = {"applied_coupon": {"external_customer_id": ext, "coupon_code": code}}
        return call(sb, "POST", "/applied_coupons", body)

    first = apply("once_only")
    assert first.ok, first.text
    applied = first.json()["applied_coupon"]
    assert (applied["coupon_code"], applied["status"], applied["external_customer_id"]) == (
        "once_only",
        "active",
        "ac_c",
    )
    assert error(apply("once_only")) == (422, {"coupon": ["coupon_is_not_reusable"]})
    assert apply("again").ok and apply("again").ok  # reusable: a second application
    listed = call(sb, "GET", "/applied_coupons", external_customer_id="ac_c").json()
    assert sorted(a["coupon_code"] for a in listed["applied_coupons"]) == [
        "again",
        "again",
        "once_only",
    ]
    assert error(apply("again", "nobody")) == (404, "customer_not_found")
    assert error(apply("no_coupon")) == (404, "coupon_not_found")
    sb.upsert(
        "coupons",
        [
            {"code": "lim_a", "limited_plans": True, "plan_codes": [plan]},
            {"code": "lim_b", "limited_plans": True, "plan_codes": [plan]},
        ],
    )
    assert apply("lim_a").ok
    assert error(apply("lim_b")) == (405, "plan_overlapping")
    sb.upsert("coupons", {"code": "usd_off", "amount_currency": "USD"})
    assert error(apply("usd_off")) == (422, {"currency": ["currencies_does_not_match"]})


def test_one_off_invoices(sb: Sandbox) -> None:
    add_on = sb.dump()["add_ons"][0]
    assert call(sb, "POST", "/customers", {"customer": {"external_id": "inv_c"}}).ok
    body = {
        "invoice": {
            "external_customer_id": "inv_c",
            "currency": "EUR",
            "fees": [{"add_on_code": add_on["code"], "units": 2, "unit_amount_cents": 1500}],
        }
    }
    first = call(sb, "POST", "/invoices", body).json()["invoice"]
    assert (first["invoice_type"], first["status"], first["fees_amount_cents"]) == (
        "one_off",
        "finalized",
        3000,
    )
    assert first["fees"][0]["item"]["code"] == add_on["code"]
    second = call(sb, "POST", "/invoices", body).json()["invoice"]
    assert second["lago_id"] != first["lago_id"]  # no idempotency
    assert second["number"] != first["number"]
    tagged = call(
        sb,
        "PUT",
        f"/invoices/{first['lago_id']}",
        {"invoice": {"metadata": [{"key": "tl_key", "value": "row-1"}]}},
    ).json()["invoice"]
    assert [(m["key"], m["value"]) for m in tagged["metadata"]] == [("tl_key", "row-1")]
    found = call(sb, "GET", "/invoices", **{"metadata[tl_key]": "row-1"}).json()["invoices"]
    assert [i["lago_id"] for i in found] == [first["lago_id"]]
    assert call(sb, "GET", "/invoices", **{"metadata[tl_key]": "row-2"}).json()["invoices"] == []
    no_fees = {"invoice": {"external_customer_id": "inv_c", "fees": []}}
    assert error(call(sb, "POST", "/invoices", no_fees)) == (404, "fees_not_found")
    unknown = {"invoice": {"external_customer_id": "inv_c", "fees": [{"add_on_code": "nope"}]}}
    assert error(call(sb, "POST", "/invoices", unknown)) == (404, "add_on_not_found")
    nobody = {"invoice": {"external_customer_id": "nobody", "fees": [{"add_on_code": "x"}]}}
    assert error(call(sb, "POST", "/invoices", nobody)) == (404, "customer_not_found")
    dollars = {"invoice": {**body["invoice"], "currency": "USD"}}
    assert error(call(sb, "POST", "/invoices", dollars)) == (
        422,
        {"currency": ["currencies_does_not_match"]},
    )
    assert error(call(sb, "PUT", "/invoices/nope", {"invoice": {"metadata": []}})) == (
        404,
        "invoice_not_found",
    )
