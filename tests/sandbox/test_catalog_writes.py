"""Catalog writes: taxes, billable metrics, add-ons, coupons, plans, features, entitlements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import get, listed

EMPTY = {"customers": 0, "events": 0, "catalog": False}


def call(sb: Sandbox, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        sb.url + path,
        json=body,
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


def ok(sb: Sandbox, method: str, path: str, body: Any = None) -> dict:
    response = call(sb, method, path, body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def refused(sb: Sandbox, method: str, path: str, body: Any, status: int) -> dict:
    response = call(sb, method, path, body)
    assert response.status_code == status, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def org(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(EMPTY)


@pytest.fixture
def sb(org: Sandbox) -> Iterator[Sandbox]:
    org.reset(EMPTY)
    org.configure(premium=True)
    yield org
    org.configure(premium=False)


def metric(sb: Sandbox, code: str = "gb", **fields: Any) -> dict:
    body = {"name": code, "code": code, "aggregation_type": "sum_agg", "field_name": "gb"}
    return ok(sb, "POST", "/billable_metrics", {"billable_metric": {**body, **fields}})[
        "billable_metric"
    ]


def plan_body(metric_id: str, **fields: Any) -> dict:
    body = {
        "name": "Pro",
        "code": "pro",
        "interval": "monthly",
        "amount_cents": 1000,
        "amount_currency": "EUR",
        "pay_in_advance": True,
        "charges": [
            {
                "billable_metric_id": metric_id,
                "charge_model": "standard",
                "properties": {"amount": "0.5", "free_units": 3},
            }
        ],
    }
    return {"plan": {**body, **fields}}


def test_an_empty_organisation_has_no_catalog(sb: Sandbox) -> None:
    assert all(rows == [] for rows in sb.dump().values())
    assert listed(sb, "/features") == []


def test_taxes_are_created_unique_updated_and_followed_where_applied(sb: Sandbox) -> None:
    tax = ok(sb, "POST", "/taxes", {"tax": {"name": "VAT", "code": "vat", "rate": "20"}})["tax"]
    assert tax["rate"] == 20.0 and tax["applied_to_organization"] is False
    taken = refused(sb, "POST", "/taxes", {"tax": {"name": "x", "code": "vat", "rate": "1"}}, 422)
    assert taken["error_details"] == {"code": ["value_already_exist"]}
    missing = refused(sb, "POST", "/taxes", {"tax": {"code": "t2"}}, 422)["error_details"]
    assert missing == {"name": ["value_is_mandatory"], "rate": ["value_is_mandatory"]}
    ok(sb, "POST", "/customers", {"customer": {"external_id": "c1", "tax_codes": ["vat"]}})
    add_on = {"name": "Setup", "code": "setup", "amount_cents": 100, "amount_currency": "EUR"}
    ok(sb, "POST", "/add_ons", {"add_on": {**add_on, "tax_codes": ["vat"]}})

    changed = ok(sb, "PUT", "/taxes/vat", {"tax": {"rate": "21.5"}})["tax"]
    assert changed["rate"] == 21.5 and changed["name"] == "VAT"
    assert get(sb, "/customers/c1").json()["customer"]["taxes"][0]["rate"] == 21.5
    assert get(sb, "/add_ons/setup").json()["add_on"]["taxes"][0]["rate"] == 21.5
    assert refused(sb, "PUT", "/taxes/none", {"tax": {"rate": "1"}}, 404)["code"] == "tax_not_found"

    assert ok(sb, "DELETE", "/taxes/vat")["tax"]["code"] == "vat"
    assert get(sb, "/add_ons/setup").json()["add_on"]["taxes"] == []
    assert refused(sb, "DELETE", "/taxes/vat", None, 404)["code"] == "tax_not_found"


def test_a_metric_used_by_a_plan_keeps_all_but_its_name_description_and_filters(
    sb: Sandbox,
) -> None:
    bad = refused(
        sb, "POST", "/billable_metrics", {"billable_metric": {"code": "x", "name": "x",
                                                              "aggregation_type": "sum_agg"}}, 422
    )  # fmt: skip
    assert bad["error_details"] == {"field_name": ["value_is_mandatory"]}
    free = metric(sb, "free")
    moved = ok(sb, "PUT", "/billable_metrics/free", {"billable_metric": {"aggregation_type":
                                                                        "max_agg"}})  # fmt: skip
    assert moved["billable_metric"]["aggregation_type"] == "max_agg"
    used = metric(sb, "gb")
    ok(sb, "POST", "/plans", plan_body(used["lago_id"]))
    kept = ok(
        sb,
        "PUT",
        "/billable_metrics/gb",
        {"billable_metric": {"name": "Storage", "aggregation_type": "max_agg", "field_name": "x",
                             "filters": [{"key": "region", "values": ["eu"]}]}},
    )["billable_metric"]  # fmt: skip
    assert (kept["name"], kept["aggregation_type"], kept["field_name"]) == ("Storage", "sum_agg",
                                                                           "gb")  # fmt: skip
    assert kept["filters"] == [{"key": "region", "values": ["eu"]}]
    assert free["lago_id"] != used["lago_id"]
    ok(sb, "DELETE", "/billable_metrics/gb")
    assert get(sb, "/plans/pro").json()["plan"]["charges"] == []


def test_plans_take_charges_by_metric_id_and_keep_their_terms_once_subscribed(
    sb: Sandbox,
) -> None:
    gb = metric(sb)
    assert (
        refused(sb, "POST", "/plans", plan_body("00000000-0000-4000-8000-000000000000"), 404)[
            "code"
        ]
        == "billable_metrics_not_found"
    )
    plan = ok(sb, "POST", "/plans", plan_body(gb["lago_id"]))["plan"]
    charge = plan["charges"][0]
    # Only the model's properties are kept.
    assert charge["properties"] == {"amount": "0.5"} and charge["billable_metric_code"] == "gb"
    assert plan["bill_charges_monthly"] is None and plan["description"] == ""
    bad = plan_body(gb["lago_id"], code="bad")
    bad["plan"]["charges"][0]["properties"] = {"amount": "ten"}
    assert refused(sb, "POST", "/plans", bad, 422)["error_details"] == {
        "amount": ["invalid_amount"]
    }

    repriced = [{**charge_input(charge), "id": charge["lago_id"], "properties": {"amount": "0.6"}}]
    updated = ok(sb, "PUT", "/plans/pro", {"plan": {"interval": "yearly", "charges": repriced}})
    assert updated["plan"]["interval"] == "yearly"
    assert updated["plan"]["charges"][0]["lago_id"] == charge["lago_id"]
    assert updated["plan"]["charges"][0]["properties"] == {"amount": "0.6"}
    assert updated["plan"]["bill_charges_monthly"] is False

    subscription = {"external_customer_id": "c1", "external_id": "s1", "plan_code": "pro"}
    ok(sb, "POST", "/subscriptions", {"subscription": subscription})
    kept = ok(
        sb, "PUT", "/plans/pro", {"plan": {"interval": "monthly", "amount_cents": 2000,
                                           "name": "Pro 2", "charges": repriced}}
    )["plan"]  # fmt: skip
    assert (kept["interval"], kept["amount_cents"], kept["name"]) == ("yearly", 2000, "Pro 2")

    # Charges left out are removed; an empty list removes them all.
    assert ok(sb, "PUT", "/plans/pro", {"plan": {"charges": []}})["plan"]["charges"] == []


def charge_input(charge: dict) -> dict:
    return {
        "billable_metric_id": charge["lago_billable_metric_id"],
        "charge_model": charge["charge_model"],
    }


def test_premium_parts_are_dropped_without_a_licence(sb: Sandbox) -> None:
    gb = metric(sb)
    extras = {
        "minimum_commitment": {"amount_cents": 5000, "invoice_display_name": "Minimum"},
        "usage_thresholds": [{"amount_cents": 100, "recurring": True}],
    }
    sb.configure(premium=False)
    plain = ok(sb, "POST", "/plans", plan_body(gb["lago_id"], **extras))["plan"]
    assert plain["minimum_commitment"] is None and plain["usage_thresholds"] == []
    assert refused(sb, "POST", "/features", {"feature": {"code": "f"}}, 403)["code"] == (
        "feature_unavailable"
    )
    sb.configure(premium=True)
    full = ok(sb, "POST", "/plans", plan_body(gb["lago_id"], code="full", **extras))["plan"]
    assert full["minimum_commitment"]["amount_cents"] == 5000
    assert full["usage_thresholds"][0]["amount_cents"] == 100
    removed = ok(sb, "PUT", "/plans/full", {"plan": {"minimum_commitment": {}}})["plan"]
    assert removed["minimum_commitment"] is None


def test_fixed_charges_name_their_add_on(sb: Sandbox) -> None:
    gb = metric(sb)
    ok(sb, "POST", "/add_ons", {"add_on": {"name": "Seat", "code": "seat", "amount_cents": 100,
                                           "amount_currency": "EUR"}})  # fmt: skip
    fixed = [{"add_on_code": "seat", "charge_model": "standard", "units": 3,
              "properties": {"amount": "10"}}]  # fmt: skip
    plan = ok(sb, "POST", "/plans", plan_body(gb["lago_id"], fixed_charges=fixed))["plan"]
    assert plan["fixed_charges"][0]["add_on_code"] == "seat"
    assert plan["fixed_charges"][0]["units"] == 3.0 and plan["fixed_charges"][0]["code"] == "seat"
    unknown = [{**fixed[0], "add_on_code": "none"}]
    assert refused(sb, "POST", "/plans", plan_body(gb["lago_id"], code="x", fixed_charges=unknown),
                   404)["code"] == "add_ons_not_found"  # fmt: skip


def test_coupons_validate_limits_and_keep_their_terms_once_applied(sb: Sandbox) -> None:
    coupon = {"name": "Ten", "code": "ten", "coupon_type": "percentage", "percentage_rate": "10",
              "frequency": "once", "expiration": "no_expiration"}  # fmt: skip
    unknown = {**coupon, "applies_to": {"plan_codes": ["none"]}}
    assert refused(sb, "POST", "/coupons", {"coupon": unknown}, 404)["code"] == "plans_not_found"
    past = {**coupon, "expiration": "time_limit", "expiration_at": "2000-01-01T00:00:00Z"}
    assert refused(sb, "POST", "/coupons", {"coupon": past}, 422)["error_details"] == {
        "expiration_at": ["invalid_date"]
    }
    made = ok(sb, "POST", "/coupons", {"coupon": coupon})["coupon"]
    assert made["percentage_rate"] == "10.0" and made["reusable"] is True
    ok(sb, "POST", "/customers", {"customer": {"external_id": "c1"}})
    ok(sb, "POST", "/applied_coupons", {"applied_coupon": {"external_customer_id": "c1",
                                                           "coupon_code": "ten"}})  # fmt: skip
    kept = ok(sb, "PUT", "/coupons/ten", {"coupon": {"name": "Eleven", "percentage_rate": "11"}})
    assert (kept["coupon"]["name"], kept["coupon"]["percentage_rate"]) == ("Eleven", "10.0")


def test_features_and_plan_entitlements(sb: Sandbox) -> None:
    feature = {"code": "seats", "name": "Seats", "privileges": [
        {"code": "max", "value_type": "integer"},
        {"code": "tier", "value_type": "select", "config": {"select_options": ["a", "b"]}},
    ]}  # fmt: skip
    ok(sb, "POST", "/features", {"feature": feature})
    ok(sb, "POST", "/features", {"feature": {"code": "sso", "privileges": []}})
    assert {f["code"] for f in listed(sb, "/features")} == {"seats", "sso"}
    gb = metric(sb)
    ok(sb, "POST", "/plans", plan_body(gb["lago_id"]))
    made = ok(sb, "POST", "/plans/pro/entitlements",
              {"entitlements": {"seats": {"max": 10, "tier": "a"}, "sso": {}}})  # fmt: skip
    assert [e["code"] for e in made["entitlements"]] == ["seats", "sso"]
    assert {p["code"]: p["value"] for p in made["entitlements"][0]["privileges"]} == {
        "max": 10,
        "tier": "a",
    }
    bad = refused(sb, "PATCH", "/plans/pro/entitlements",
                  {"entitlements": {"seats": {"tier": "z"}}}, 422)  # fmt: skip
    assert bad["error_details"] == {"tier_privilege_value": ["value_not_in_select_options"]}
    assert refused(sb, "PATCH", "/plans/pro/entitlements",
                   {"entitlements": {"nope": {}}}, 404)["code"] == "feature_not_found"  # fmt: skip
    ok(sb, "PATCH", "/plans/pro/entitlements", {"entitlements": {"seats": {"max": 20}}})
    one = ok(sb, "GET", "/plans/pro/entitlements/seats")["entitlement"]
    assert {p["code"]: p["value"] for p in one["privileges"]} == {"max": 20, "tier": "a"}
    replaced = ok(sb, "POST", "/plans/pro/entitlements", {"entitlements": {"sso": {}}})
    assert [e["code"] for e in replaced["entitlements"]] == ["sso"]
    # A full update deletes the privileges it does not name, and their values.
    ok(sb, "PUT", "/features/seats", {"feature": {"name": "Users", "privileges": [
        {"code": "max", "value_type": "string"}]}})  # fmt: skip
    assert [(p["code"], p["value_type"]) for p in get(sb, "/features/seats").json()["feature"][
        "privileges"]] == [("max", "integer")]  # fmt: skip
    ok(sb, "DELETE", "/plans/pro/entitlements/sso")
    assert ok(sb, "GET", "/plans/pro/entitlements")["entitlements"] == []
    ok(sb, "DELETE", "/features/sso")
    assert refused(sb, "GET", "/features/sso", None, 404)["code"] == "feature_not_found"
