"""The sandbox's objects are exactly what the official spec says a list item is."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.lago_sandbox import cash, objects, seed
from tests.openapi_spec import (
    component_schema,
    operation_response_schema,
    validate_object,
    validate_response,
)

ANCHOR = "2026-03-18"
NOW = datetime(2026, 3, 18, 9, 30, 15, 250_000, tzinfo=timezone.utc)
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def org() -> dict[str, list[dict[str, Any]]]:
    return seed.generate({"seed": 7, "customers": 30, "events": 3000, "anchor": ANCHOR})


def _spec_view(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the spec can judge it.

    Invoices in the statuses the list hides (generating, open, closed) are outside the
    spec's status enum by design: they are never served, so only their status is waived.
    """
    if resource == "invoices" and obj["status"] in objects.HIDDEN_INVOICE_STATUSES:
        return {**obj, "status": "draft"}
    if resource == "payments":  # the server's nulls and class names (cash.spec_view)
        return cash.spec_view(obj)
    if resource == "payment_receipts":
        return {**obj, "payment": cash.spec_view(obj["payment"])}
    return obj


def test_components_exist_in_the_spec() -> None:
    assert set(objects.COMPONENTS) == set(objects.RESOURCES)
    assert len(objects.RESOURCES) == 22
    for component in [*objects.COMPONENTS.values(), objects.USAGE_COMPONENT]:
        assert component_schema(component)


@pytest.mark.parametrize("resource", objects.RESOURCES)
def test_every_seeded_object_validates(org: dict[str, list[dict[str, Any]]], resource: str) -> None:
    items = org[resource]
    assert items, f"the seed produced no {resource}"
    failures = []
    for obj in items:
        try:
            validate_object(objects.COMPONENTS[resource], _spec_view(resource, obj))
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, f"{len(failures)} invalid {resource}; first:\n{failures[0]}"


@pytest.mark.parametrize("resource", objects.RESOURCES)
def test_completed_empty_object_validates(resource: str) -> None:
    obj = objects.complete(resource, {}, now=NOW)
    validate_object(objects.COMPONENTS[resource], _spec_view(resource, obj))
    if resource != "entitlements":  # no timestamps and no id: keyed by plan and feature
        assert obj["created_at"] == "2026-03-18T09:30:15Z"
    if resource not in ("events", "features", "entitlements"):
        assert re.fullmatch(r"[0-9a-f-]{36}", obj["lago_id"])


def test_complete_keeps_given_fields_and_fills_the_rest() -> None:
    customer = objects.complete(
        "customers",
        {
            "external_id": "cust_x",
            "name": "X Corp",
            "country": "FR",
            "metadata": [{"key": "segment", "value": "smb", "display_in_invoice": True}],
            "billing_configuration": {"document_locale": "fr"},
        },
        now=NOW,
    )
    validate_object("CustomerObjectExtended", customer)
    assert customer["external_id"] == "cust_x"
    assert customer["name"] == "X Corp"
    assert customer["updated_at"] == customer["created_at"]
    entry = customer["metadata"][0]
    assert entry["key"] == "segment" and entry["display_in_invoice"] is True
    assert entry["lago_id"] and entry["created_at"] == "2026-03-18T09:30:15Z"
    assert customer["billing_configuration"]["document_locale"] == "fr"
    assert "payment_provider" not in customer["billing_configuration"]
    assert set(customer["shipping_address"]) >= {"address_line1", "city", "country"}


def test_complete_derives_invoice_totals() -> None:
    invoice = objects.complete(
        "invoices",
        {"fees_amount_cents": 10_000, "coupons_amount_cents": 1_000, "taxes_amount_cents": 1_800},
        now=NOW,
    )
    validate_object("InvoiceObject", invoice)
    assert invoice["sub_total_excluding_taxes_amount_cents"] == 9_000
    assert invoice["sub_total_including_taxes_amount_cents"] == 10_800
    assert invoice["total_amount_cents"] == 10_800


def test_complete_subscription_by_status() -> None:
    active = objects.complete("subscriptions", {"status": "active"}, now=NOW)
    pending = objects.complete(
        "subscriptions",
        {"status": "pending", "subscription_at": "2026-04-01T00:00:00Z"},
        now=NOW,
    )
    terminated = objects.complete("subscriptions", {"status": "terminated"}, now=NOW)
    for sub in (active, pending, terminated):
        validate_object("SubscriptionObject", sub)
    assert ISO_MS.match(active["started_at"])
    assert active["current_billing_period_started_at"] == "2026-03-01T00:00:00Z"
    assert active["current_billing_period_ending_at"] == "2026-03-31T23:59:59Z"
    assert pending["started_at"] is None
    assert terminated["terminated_at"] == "2026-03-18T09:30:15Z"


def test_complete_event_formats() -> None:
    event = objects.complete(
        "events",
        {"transaction_id": "t-1", "external_subscription_id": "sub_1", "code": "api_calls"},
        now=NOW,
    )
    validate_object("EventObject", event)
    assert event["timestamp"] == "2026-03-18T09:30:15.250Z"
    assert event["created_at"] == "2026-03-18T09:30:15Z"
    assert event["lago_subscription_id"] is None and event["lago_customer_id"] is None


def test_complete_rejects_an_unknown_resource() -> None:
    with pytest.raises(KeyError, match="unknown resource 'widgets'"):
        objects.complete("widgets", {}, now=NOW)


def test_time_helpers() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5, 678_900)
    assert objects.iso(naive) == "2026-01-02T03:04:05Z"
    assert objects.iso_ms(naive) == "2026-01-02T03:04:05.678Z"
    assert objects.parse_iso("2026-01-02T03:04:05.678Z") == datetime(
        2026, 1, 2, 3, 4, 5, 678_000, tzinfo=timezone.utc
    )
    assert objects.parse_iso("2026-01-02T04:04:05+01:00") == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc
    )
    assert objects.parse_iso("2026-01-02") == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert objects.parse_iso("2026-01-02T03:04:05.1Z").microsecond == 100_000
    assert objects.parse_iso("2026-01-02T03:04:05.1234567Z").microsecond == 123_456
    with pytest.raises(ValueError):
        objects.parse_iso("yesterday")
    assert objects.decimal_str(3) == "3.0"
    assert objects.decimal_str(objects.Decimal("12.50")) == "12.5"


def test_listed_hides_what_the_server_hides() -> None:
    for status in ("generating", "open", "closed"):
        assert not objects.listed("invoices", {"status": status})
    for status in ("draft", "finalized", "voided", "failed", "pending"):
        assert objects.listed("invoices", {"status": status})
    assert objects.listed("credit_notes", {"error_details": None})
    assert not objects.listed("credit_notes", {"error_details": [{"error_code": "tax_error"}]})


# ----------------------------------------------------------------------------- usage

METRICS: dict[str, dict[str, Any]] = {
    "calls": {"lago_id": objects.new_lago_id(), "code": "calls", "name": "Calls",
              "aggregation_type": "count_agg", "field_name": None},
    "gb": {"lago_id": objects.new_lago_id(), "code": "gb", "name": "GB",
           "aggregation_type": "sum_agg", "field_name": "gb"},
    "seats": {"lago_id": objects.new_lago_id(), "code": "seats", "name": "Seats",
              "aggregation_type": "max_agg", "field_name": "seats"},
    "users": {"lago_id": objects.new_lago_id(), "code": "users", "name": "Users",
              "aggregation_type": "unique_count_agg", "field_name": "user"},
    "cores": {"lago_id": objects.new_lago_id(), "code": "cores", "name": "Cores",
              "aggregation_type": "latest_agg", "field_name": "cores"},
    "gpus": {"lago_id": objects.new_lago_id(), "code": "gpus", "name": "GPUs",
             "aggregation_type": "weighted_sum_agg", "field_name": "gpus",
             "recurring": True},
}  # fmt: skip


def _charge(code: str, model: str = "standard", **properties: Any) -> dict[str, Any]:
    return objects.charge_object(
        objects.new_lago_id, NOW, METRICS[code], model, properties or {"amount": "1"}
    )


def _event(code: str, when: str, tx: str, sub: str = "sub_1", **props: Any) -> dict[str, Any]:
    return objects.complete(
        "events",
        {
            "transaction_id": tx,
            "external_subscription_id": sub,
            "code": code,
            "timestamp": when,
            "properties": props,
        },
        now=NOW,
    )


def test_customer_usage_aggregates_each_metric_type() -> None:
    plan = objects.complete(
        "plans",
        {
            "code": "p",
            "amount_currency": "EUR",
            "charges": [
                _charge("calls", amount="0.5"),
                _charge("gb", amount="2"),
                _charge("seats", amount="10"),
                _charge("users", amount="3"),
                _charge("cores", "package", amount="7", package_size=4, free_units=0),
                _charge("gpus", amount="100"),
            ],
        },
        now=NOW,
    )
    customer = objects.complete(
        "customers",
        {
            "external_id": "c1",
            "taxes": [objects.tax_object(objects.new_lago_id, NOW, "v", "V", 20)],
        },
        now=NOW,
    )
    subscription = objects.complete(
        "subscriptions",
        {"external_id": "sub_1", "started_at": "2026-01-10T00:00:00.000Z"},
        now=NOW,
    )
    events = [
        _event("calls", "2026-03-02T10:00:00.000Z", "a"),
        _event("calls", "2026-03-03T10:00:00.000Z", "b"),
        _event("calls", "2026-03-04T10:00:00.000Z", "c"),
        _event("calls", "2026-02-27T10:00:00.000Z", "old"),  # last period
        _event("calls", "2026-03-05T10:00:00.000Z", "other", sub="sub_2"),  # other sub
        _event("calls", "2026-03-20T10:00:00.000Z", "future"),  # after now
        _event("gb", "2026-03-02T10:00:00.000Z", "g1", gb="1.5"),
        _event("gb", "2026-03-03T10:00:00.000Z", "g2", gb=2.25),
        _event("seats", "2026-03-02T10:00:00.000Z", "s1", seats="4"),
        _event("seats", "2026-03-03T10:00:00.000Z", "s2", seats="9"),
        _event("seats", "2026-03-04T10:00:00.000Z", "s3", seats="6"),
        _event("users", "2026-03-02T10:00:00.000Z", "u1", user="ann"),
        _event("users", "2026-03-03T10:00:00.000Z", "u2", user="bob"),
        _event("users", "2026-03-04T10:00:00.000Z", "u3", user="ann"),
        _event("users", "2026-03-05T10:00:00.000Z", "u4", user="bob", operation_type="remove"),
        _event("cores", "2026-03-03T10:00:00.000Z", "k2", cores="16"),
        _event("cores", "2026-03-02T10:00:00.000Z", "k1", cores="2"),
        _event("gpus", "2026-03-01T00:00:00.000Z", "w1", gpus="2"),
    ]
    usage = objects.customer_usage(customer, subscription, plan, METRICS, events, now=NOW)
    validate_object("CustomerUsageObject", usage)
    lines = {line["billable_metric"]["code"]: line for line in usage["charges_usage"]}
    assert (lines["calls"]["units"], lines["calls"]["events_count"]) == ("3.0", 3)
    assert lines["calls"]["amount_cents"] == 150
    assert (lines["gb"]["units"], lines["gb"]["amount_cents"]) == ("3.75", 750)
    assert (lines["seats"]["units"], lines["seats"]["amount_cents"]) == ("9.0", 9000)
    assert (lines["users"]["units"], lines["users"]["amount_cents"]) == ("1.0", 300)
    assert (lines["cores"]["units"], lines["cores"]["amount_cents"]) == ("16.0", 2800)
    # 2 GPUs held for the whole month: weighted units 2.
    assert lines["gpus"]["units"] == "2.0"
    assert lines["gpus"]["amount_cents"] == 20000
    amount = 150 + 750 + 9000 + 300 + 2800 + 20000
    assert usage["amount_cents"] == amount
    assert usage["taxes_amount_cents"] == amount // 5
    assert usage["total_amount_cents"] == amount + amount // 5
    assert usage["from_datetime"] == "2026-03-01T00:00:00Z"
    assert usage["to_datetime"] == "2026-03-31T23:59:59Z"
    assert usage["issuing_date"] == "2026-04-01"
    assert usage["currency"] == "EUR"


def test_customer_usage_starts_at_a_mid_period_start_and_prices_tiers() -> None:
    ranges = [
        {"from_value": 0, "to_value": 10, "flat_amount": "0", "per_unit_amount": "1"},
        {"from_value": 11, "to_value": None, "flat_amount": "5", "per_unit_amount": "0.5"},
    ]
    plan = objects.complete(
        "plans", {"charges": [_charge("calls", "graduated", graduated_ranges=ranges)]}, now=NOW
    )
    subscription = objects.complete(
        "subscriptions",
        {"external_id": "sub_1", "started_at": "2026-03-10T00:00:00.000Z"},
        now=NOW,
    )
    events = [
        _event("calls", f"2026-03-{day:02d}T01:00:00.000Z", f"t{day}") for day in range(1, 18)
    ]
    usage = objects.customer_usage({}, subscription, plan, METRICS, events, now=NOW)
    validate_object("CustomerUsageObject", usage)
    line = usage["charges_usage"][0]
    assert line["units"] == "8.0"  # the 10th to the 17th
    assert line["amount_cents"] == 800
    assert usage["from_datetime"] == "2026-03-10T00:00:00Z"
    many = [_event("calls", "2026-03-11T01:00:00.000Z", f"m{i}") for i in range(14)]
    usage = objects.customer_usage({}, subscription, plan, METRICS, many, now=NOW)
    assert usage["charges_usage"][0]["amount_cents"] == 1000 + 500 + 200  # 10x1, flat 5, 4x0.5


def test_weighted_sum_carries_the_running_total_into_the_period() -> None:
    plan = objects.complete("plans", {"charges": [_charge("gpus", amount="31")]}, now=NOW)
    subscription = objects.complete(
        "subscriptions",
        {"external_id": "sub_1", "started_at": "2026-01-10T00:00:00.000Z"},
        now=NOW,
    )
    earlier = _event("gpus", "2026-02-10T00:00:00.000Z", "w0", gpus="3")
    removal = _event("gpus", "2026-03-16T00:00:00.000Z", "w1", gpus="-2")
    usage = objects.customer_usage({}, subscription, plan, METRICS, [earlier, removal], now=NOW)
    line = usage["charges_usage"][0]
    # 3 instances for 15 days, then 1 for 16 days, over a 31-day month.
    assert line["units"] == "1.967742"
    assert line["events_count"] == 1
    assert line["amount_cents"] == 6100
    alone = objects.customer_usage({}, subscription, plan, METRICS, [removal], now=NOW)
    assert alone["charges_usage"][0]["units"] == "0.0"
    validate_object("CustomerUsageObject", alone)


def test_customer_usage_of_seeded_subscriptions_validates(
    org: dict[str, list[dict[str, Any]]],
) -> None:
    customers = {customer["external_id"]: customer for customer in org["customers"]}
    plans = {plan["code"]: plan for plan in org["plans"]}
    metrics = {metric["code"]: metric for metric in org["billable_metrics"]}
    now = datetime.fromisoformat(ANCHOR).replace(tzinfo=timezone.utc) - timedelta(seconds=1)
    active = [sub for sub in org["subscriptions"] if sub["status"] == "active"]
    by_sub: dict[str, list[dict[str, Any]]] = {}
    for event in org["events"]:
        by_sub.setdefault(event["external_subscription_id"], []).append(event)
    counted = 0
    for sub in active:
        history = by_sub.get(sub["external_id"], [])
        this_month = [event for event in history if event["timestamp"] >= "2026-03-01"]
        for events in (history, this_month):  # with and without the earlier events
            usage = objects.customer_usage(
                customers[sub["external_customer_id"]],
                sub,
                plans[sub["plan_code"]],
                metrics,
                events,
                now=now,
            )
            validate_response(
                "GET",
                "/customers/{external_customer_id}/current_usage",
                {"customer_usage": usage},
            )
            assert len(usage["charges_usage"]) == len(plans[sub["plan_code"]]["charges"])
        counted += sum(line["events_count"] for line in usage["charges_usage"])
    assert counted > 0, "no seeded event falls in the current period of an active subscription"


# ------------------------------------------------------------------------ spec helpers


def test_validate_object_lists_every_violation_with_its_path() -> None:
    bad = objects.complete("taxes", {}, now=NOW)
    bad.update(rate="20", created_at="2026-03-18", lago_id="nope")
    del bad["code"]
    with pytest.raises(AssertionError) as caught:
        validate_object("TaxObject", bad)
    message = str(caught.value)
    assert "4 violation(s)" in message
    for fragment in ("$.rate", "$.created_at", "$.lago_id", "'code' is a required property"):
        assert fragment in message


def test_operation_response_schema_resolves_shared_responses() -> None:
    assert operation_response_schema("GET", "/api/v1/customers") == {
        "$ref": "#/components/schemas/CustomersPaginated"
    }
    validate_response("GET", "/customers", {"status": 401, "error": "Unauthorized"}, status=401)
    with pytest.raises(AssertionError, match=r"\$\.meta"):
        validate_response("GET", "/customers", {"customers": [], "meta": {}})
    with pytest.raises(KeyError, match="no path"):
        operation_response_schema("GET", "/nothing")


def test_seeded_lists_validate_as_whole_responses(org: dict[str, list[dict[str, Any]]]) -> None:
    meta = {"current_page": 1, "next_page": None, "prev_page": None, "total_pages": 1}
    paths = {
        "customers": "/customers",
        "subscriptions": "/subscriptions",
        "invoices": "/invoices",
        "billable_metrics": "/billable_metrics",
        "plans": "/plans",
        "events": "/events",
        "coupons": "/coupons",
        "add_ons": "/add_ons",
        "fees": "/fees",
        "credit_notes": "/credit_notes",
        "wallets": "/wallets",
        "wallet_transactions": "/wallets/{lago_id}/wallet_transactions",
        "taxes": "/taxes",
        "applied_coupons": "/applied_coupons",
    }
    for resource, path in paths.items():
        page = [obj for obj in org[resource] if objects.listed(resource, obj)][:100]
        body = {resource: page, "meta": {**meta, "total_count": len(page)}}
        validate_response("GET", path, body)


def test_timestamps_have_the_server_precision(org: dict[str, list[dict[str, Any]]]) -> None:
    for resource in objects.RESOURCES:
        for obj in org[resource]:
            if resource == "entitlements":
                continue
            assert ISO.match(obj["created_at"]), (resource, obj["created_at"])
            if "updated_at" in obj:
                assert ISO.match(obj["updated_at"]), (resource, obj["updated_at"])
    for event in org["events"]:
        assert ISO_MS.match(event["timestamp"]), event["timestamp"]
    for sub in org["subscriptions"]:
        assert sub["started_at"] is None or ISO_MS.match(sub["started_at"])
        assert ISO.match(sub["subscription_at"])
    terminated = [wallet for wallet in org["wallets"] if wallet["status"] == "terminated"]
    assert terminated
    for wallet in terminated:
        assert ISO_MS.match(wallet["terminated_at"]), "a raw Time: milliseconds"
    voided = [invoice for invoice in org["invoices"] if invoice["status"] == "voided"]
    assert voided and all(ISO.match(invoice["voided_at"]) for invoice in voided)
