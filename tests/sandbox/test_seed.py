"""The seed builds a realistic, deterministic organisation from its options."""

from __future__ import annotations

import collections
import itertools
from datetime import date, datetime, timezone
from typing import Any

import pytest

from tests.lago_sandbox import objects, organisation, seed
from tests.lago_sandbox.store import row_key

ANCHOR = "2026-03-18"
OPTIONS = {"seed": 42, "customers": 20, "events": 2000, "anchor": ANCHOR}
CATALOG = (
    "billable_metrics",
    "plans",
    "taxes",
    "coupons",
    "add_ons",
    *organisation.RESOURCES,  # billing entities, features, entitlements, webhook endpoints
)

Org = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def org() -> Org:
    return seed.generate(dict(OPTIONS))


def _at(text: str) -> datetime:
    return objects.parse_iso(text)


def test_defaults() -> None:
    assert seed.DEFAULTS == {
        "seed": 42,
        "customers": 20,
        "events": 2000,
        "months": 3,
        "anchor": None,
        "unattached_events": 0,
        "catalog": True,
    }


def test_catalog_false_gives_an_empty_organisation() -> None:
    empty = seed.generate({"customers": 0, "events": 0, "catalog": False})
    assert set(empty) == set(objects.RESOURCES)
    assert all(rows == [] for rows in empty.values())
    with pytest.raises(ValueError, match="catalog"):
        seed.generate({"customers": 1, "catalog": False})


def test_every_resource_is_a_list_of_the_requested_size(org: Org) -> None:
    assert set(org) == set(objects.RESOURCES)
    assert len(org["customers"]) == 20
    assert len(org["events"]) == 2000
    for resource in objects.RESOURCES:
        assert org[resource], f"no {resource} in a 20-customer organisation"
        ids = [row_key(resource, obj) for obj in org[resource]]
        assert len(ids) == len(set(ids)), f"duplicate key in {resource}"


def test_same_options_give_the_same_organisation(org: Org) -> None:
    assert seed.generate(dict(OPTIONS)) == org


def test_another_seed_gives_another_organisation(org: Org) -> None:
    other = seed.generate({**OPTIONS, "seed": 43})
    for resource in objects.RESOURCES:
        assert other[resource] != org[resource], resource


def test_default_anchor_is_today_utc() -> None:
    today = datetime.now(timezone.utc).date().isoformat()
    implicit = seed.generate({"customers": 2, "events": 20})
    if datetime.now(timezone.utc).date().isoformat() != today:
        pytest.skip("the UTC date changed during the test")
    assert implicit == seed.generate({"customers": 2, "events": 20, "anchor": today})


def test_the_catalog_depends_only_on_the_seed(org: Org) -> None:
    empty = seed.generate({**OPTIONS, "customers": 0, "events": 0})
    small = seed.generate({**OPTIONS, "customers": 3, "events": 17, "months": 1})
    for resource in CATALOG:
        assert empty[resource] == org[resource] == small[resource], resource
    other_seed = seed.generate({**OPTIONS, "seed": 7, "customers": 0, "events": 0})
    assert [plan["code"] for plan in other_seed["plans"]] == [p["code"] for p in org["plans"]]
    assert other_seed["plans"] != org["plans"]


def test_a_catalog_only_organisation_holds_nothing_else() -> None:
    empty = seed.generate({**OPTIONS, "customers": 0, "events": 0})
    for resource in objects.RESOURCES:
        if resource in CATALOG:
            assert empty[resource], resource
        else:
            assert empty[resource] == [], resource


def test_customers_do_not_depend_on_the_number_of_events(org: Org) -> None:
    fewer = seed.generate({**OPTIONS, "events": 10})
    for resource in objects.RESOURCES:
        if resource != "events":
            assert fewer[resource] == org[resource], resource


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown seed option 'customer'"):
        seed.generate({"customer": 3})
    with pytest.raises(ValueError, match="'events' must be an integer"):
        seed.generate({"events": "many"})
    with pytest.raises(ValueError, match="'months' is out of range"):
        seed.generate({"months": 0})
    with pytest.raises(ValueError, match="'anchor' must be an ISO date"):
        seed.generate({"anchor": "soon"})
    assert len(seed.generate({"customers": "2", "events": "5", "anchor": ANCHOR})["events"]) == 5


# ------------------------------------------------------------------------- catalog


def test_billable_metrics_cover_every_aggregation_type(org: Org) -> None:
    types = {metric["aggregation_type"] for metric in org["billable_metrics"]}
    assert types == set(objects.AGGREGATION_TYPES)
    for metric in org["billable_metrics"]:
        if metric["aggregation_type"] != "count_agg":
            assert metric["field_name"], metric["code"]


def test_plans_are_distinguishable_and_charge_existing_metrics(org: Org) -> None:
    metric_codes = {metric["code"] for metric in org["billable_metrics"]}
    intervals = {plan["interval"] for plan in org["plans"]}
    assert {"monthly", "yearly"} <= intervals
    amounts = [plan["amount_cents"] for plan in org["plans"]]
    assert len(set(amounts)) == len(amounts)
    for plan in org["plans"]:
        assert plan["charges"], plan["code"]
        for charge in plan["charges"]:
            assert charge["billable_metric_code"] in metric_codes
    models = {charge["charge_model"] for plan in org["plans"] for charge in plan["charges"]}
    assert {"standard", "graduated", "package", "volume"} <= models


def test_coupons_and_taxes(org: Org) -> None:
    kinds = collections.Counter(coupon["coupon_type"] for coupon in org["coupons"])
    assert kinds["fixed_amount"] and kinds["percentage"]
    assert any(coupon["terminated_at"] for coupon in org["coupons"])
    assert any(tax["rate"] > 0 for tax in org["taxes"])
    assert org["add_ons"]


# ----------------------------------------------------------------------- customers


def test_customers_are_realistic(org: Org) -> None:
    customers = org["customers"]
    assert len({customer["external_id"] for customer in customers}) == len(customers)
    sizes = {len(customer["metadata"]) for customer in customers}
    assert max(sizes) <= 5 and len(sizes) > 1
    assert all(customer["billing_configuration"] for customer in customers)
    assert any(customer["billing_configuration"].get("payment_provider") for customer in customers)
    assert all(customer["country"] and customer["address_line1"] for customer in customers)
    created = [customer["created_at"] for customer in customers]
    assert len(set(created)) >= len(created) - 3, "created_at should mostly differ"
    assert len(set(created)) < len(created), "a tie on created_at is expected"
    assert any(customer["updated_at"] > customer["created_at"] for customer in customers)
    by_number = sorted(customers, key=lambda customer: customer["sequential_id"])
    assert [c["sequential_id"] for c in by_number] == list(range(1, len(customers) + 1))
    stamps = [customer["created_at"] for customer in by_number]
    assert stamps == sorted(stamps), "sequential_id follows created_at"


def test_subscriptions_in_every_status(org: Org) -> None:
    subscriptions = org["subscriptions"]
    statuses = collections.Counter(sub["status"] for sub in subscriptions)
    assert set(statuses) == set(objects.SUBSCRIPTION_STATUSES)
    assert statuses["active"] == max(statuses.values())
    customers = {customer["external_id"]: customer for customer in org["customers"]}
    plans = {plan["code"] for plan in org["plans"]}
    owners = collections.Counter(sub["external_customer_id"] for sub in subscriptions)
    assert set(owners) == set(customers), "every customer has a subscription"
    active_ids = [sub["external_id"] for sub in subscriptions if sub["status"] == "active"]
    assert len(active_ids) == len(set(active_ids))
    anchor = _at(ANCHOR)
    for sub in subscriptions:
        assert sub["plan_code"] in plans
        assert sub["lago_customer_id"] == customers[sub["external_customer_id"]]["lago_id"]
        if sub["status"] == "pending":
            assert sub["started_at"] is None
        if sub["status"] == "pending" and sub["previous_plan_code"] is None:
            assert _at(sub["subscription_at"]) > anchor
        if sub["status"] == "terminated":
            assert _at(sub["terminated_at"]) < anchor
        if sub["status"] == "canceled":
            assert sub["canceled_at"] and sub["started_at"] is None
    assert any(sub["previous_plan_code"] for sub in subscriptions), "an upgrade history"
    assert any(sub["next_plan_code"] for sub in subscriptions), "a scheduled downgrade"


def test_invoices_fees_and_credit_notes(org: Org) -> None:
    invoices = {invoice["lago_id"]: invoice for invoice in org["invoices"]}
    statuses = collections.Counter(invoice["status"] for invoice in invoices.values())
    assert {"draft", "finalized", "voided", "failed", "pending"} <= set(statuses)
    assert {"generating", "open", "closed"} <= set(statuses), "hidden invoices"
    assert statuses["finalized"] > len(invoices) / 2
    payments = {invoice["payment_status"] for invoice in invoices.values()}
    assert payments == {"pending", "succeeded", "failed"}
    assert {"subscription", "credit"} <= {inv["invoice_type"] for inv in invoices.values()}
    subscriptions = {sub["lago_id"] for sub in org["subscriptions"]}
    per_invoice: collections.defaultdict[str, int] = collections.defaultdict(int)
    for fee in org["fees"]:
        assert fee["lago_invoice_id"] in invoices
        per_invoice[fee["lago_invoice_id"]] += fee["amount_cents"]
        if fee["lago_subscription_id"] is not None:
            assert fee["lago_subscription_id"] in subscriptions
    for lago_id, amount in per_invoice.items():
        assert invoices[lago_id]["fees_amount_cents"] == amount
    for invoice in invoices.values():
        if invoice["status"] in ("generating", "open", "closed"):
            assert invoice["lago_id"] not in per_invoice, "hidden invoices have no fees"
    credit_notes = org["credit_notes"]
    listed = [note for note in credit_notes if objects.listed("credit_notes", note)]
    assert 0 < len(listed) < len(credit_notes), "mostly finalized, some drafts"
    for note in credit_notes:
        assert invoices[note["lago_invoice_id"]]["number"] == note["invoice_number"]
        assert (
            note["total_amount_cents"] <= invoices[note["lago_invoice_id"]]["fees_amount_cents"] * 2
        )


def test_coupons_wallets_and_transactions(org: Org) -> None:
    coupons = {coupon["lago_id"] for coupon in org["coupons"]}
    customers = {customer["lago_id"] for customer in org["customers"]}
    for applied in org["applied_coupons"]:
        assert applied["lago_coupon_id"] in coupons
        assert applied["lago_customer_id"] in customers
    wallets = {wallet["lago_id"]: wallet for wallet in org["wallets"]}
    assert {wallet["status"] for wallet in wallets.values()} == {"active", "terminated"}
    by_wallet = collections.defaultdict(list)
    for transaction in org["wallet_transactions"]:
        by_wallet[transaction["lago_wallet_id"]].append(transaction)
    assert set(by_wallet) == set(wallets)
    for lago_id, transactions in by_wallet.items():
        settled = [tx for tx in transactions if tx["status"] == "settled"]
        inbound = sum(
            float(tx["credit_amount"]) for tx in settled if tx["transaction_type"] == "inbound"
        )
        outbound = sum(
            float(tx["credit_amount"]) for tx in settled if tx["transaction_type"] == "outbound"
        )
        assert float(wallets[lago_id]["credits_balance"]) == pytest.approx(inbound - outbound)
    kinds = {(tx["transaction_type"], tx["status"]) for tx in org["wallet_transactions"]}
    assert ("inbound", "settled") in kinds and ("outbound", "settled") in kinds


def test_created_at_orders_things_in_time(org: Org) -> None:
    anchor = _at(ANCHOR)
    for resource in objects.RESOURCES:
        if resource == "entitlements":  # no timestamps
            continue
        stamps = [obj["created_at"] for obj in org[resource]]
        assert all(_at(stamp) <= anchor for stamp in stamps if resource != "events"), resource
        if len(stamps) > 3:
            assert len(set(stamps)) > len(stamps) / 2, f"{resource} created_at barely differ"
    customers = {customer["external_id"]: customer for customer in org["customers"]}
    for sub in org["subscriptions"]:
        assert sub["created_at"] >= customers[sub["external_customer_id"]]["created_at"]
    for invoice in org["invoices"]:
        assert invoice["updated_at"] >= invoice["created_at"]


# -------------------------------------------------------------------------- events


def test_events_fit_their_subscriptions_and_metrics(org: Org) -> None:
    anchor = _at(ANCHOR)
    window_start = datetime(2025, 12, 18, tzinfo=timezone.utc)  # three months earlier
    metrics = {metric["code"]: metric for metric in org["billable_metrics"]}
    plans = {plan["code"]: plan for plan in org["plans"]}
    lives = collections.defaultdict(list)
    for sub in org["subscriptions"]:
        lives[sub["external_id"]].append(sub)
    used_statuses = set()
    for event in org["events"]:
        when = _at(event["timestamp"])
        assert window_start <= when < anchor, event["timestamp"]
        owners = [
            sub
            for sub in lives[event["external_subscription_id"]]
            if sub["status"] in ("active", "terminated")
            and _at(sub["started_at"]) <= when
            and (sub["terminated_at"] is None or when < _at(sub["terminated_at"]))
        ]
        assert len(owners) == 1, f"event {event['transaction_id']} has no living subscription"
        sub = owners[0]
        used_statuses.add(sub["status"])
        codes = {charge["billable_metric_code"] for charge in plans[sub["plan_code"]]["charges"]}
        assert event["code"] in codes
        field = metrics[event["code"]]["field_name"]
        if field:
            assert field in event["properties"], (event["code"], event["properties"])
    assert used_statuses == {"active", "terminated"}
    assert {event["code"] for event in org["events"]} == set(metrics)


def test_events_are_in_list_order_and_unique(org: Org) -> None:
    events = org["events"]
    keys = [(event["timestamp"], event["transaction_id"]) for event in events]
    for newer, older in itertools.pairwise(keys):
        assert newer[0] > older[0] or (newer[0] == older[0] and newer[1] < older[1])
    pairs = {(event["external_subscription_id"], event["transaction_id"]) for event in events}
    assert len(pairs) == len(events)


def test_months_bound_the_event_window() -> None:
    events = seed.generate({**OPTIONS, "months": 1, "events": 500})["events"]
    assert len(events) == 500
    assert min(event["timestamp"] for event in events) >= "2026-02-18T00:00:00.000Z"
    assert max(event["timestamp"] for event in events) < "2026-03-18T00:00:00.000Z"


def test_anchor_moves_everything() -> None:
    early = seed.generate({**OPTIONS, "anchor": date(2025, 1, 1), "events": 50})
    assert max(event["timestamp"] for event in early["events"]) < "2025-01-01"
    assert max(customer["created_at"] for customer in early["customers"]) < "2025-01-01"


@pytest.mark.timeout(300)
def test_a_million_events() -> None:
    org = seed.generate({"seed": 42, "customers": 20, "events": 1_000_000, "anchor": ANCHOR})
    events = org["events"]
    assert len(events) == 1_000_000
    pairs = {(event["external_subscription_id"], event["transaction_id"]) for event in events}
    assert len(pairs) == 1_000_000
    assert len({event["lago_id"] for event in events}) == 1_000_000


def test_one_customer_carries_every_requested_event() -> None:
    tiny = seed.generate({**OPTIONS, "customers": 1, "events": 100})
    assert len(tiny["events"]) == 100
    assert {event["external_subscription_id"] for event in tiny["events"]} == {"sub_00001"}
    assert seed.generate({**OPTIONS, "customers": 0, "events": 50})["events"] == []
