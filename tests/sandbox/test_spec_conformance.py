"""Every sandbox endpoint, through Prism as a validating proxy, against the official spec.

Prism (``prism proxy <spec> <sandbox> --errors``) forwards each request to the sandbox and
checks the response against the spec: a violation marked as an error turns the response
into a Prism 500 (``application/problem+json``) and every violation is listed in the
``sl-violations`` header. Each check here fails on any violation, except the few places
where the sandbox follows the real server rather than the spec (listed in TOLERATED and in
the sandbox README). Request validation is switched off, because some checks send invalid
requests on purpose to get the server's error responses. Bodies are also validated with
``tests.openapi_spec`` against the operation's declared response schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests import openapi_spec
from tests.lago_sandbox import Sandbox, cash, organisation
from tests.lago_sandbox.objects import RESOURCES
from tests.prism import running_prism

SEED = {"seed": 21, "customers": 8, "events": 300}
SANDBOX_JSON = "application/json; charset=utf-8"
ALL_STATUSES = ["pending", "active", "terminated", "canceled", "incomplete"]

# Where the real server (which the sandbox follows) differs from the spec. Each entry is a
# substring of the Prism violation message that is accepted for that one check.
UNDECLARED_STATUS = "Unable to match the returned status code"
NULL_SUBSCRIPTION = "external_subscription_id must be string"
# Payments as v1.51 serializes them (README, item 18): null reference (provider payments),
# null provider code, type and customer id (manual payments), the provider's class name.
PAYMENT_FIELDS = (
    "reference must be string",
    "payment_provider_code must be string",
    "payment_provider_type must be string",
    "payment_provider_type must be equal to one of the allowed values",
    "provider_customer_id must be string",
)
# Single payments and payment requests come wrapped (README, item 19).
WRAPPED = "Response body must have required property"
# LAGO_API_READS.md §9, §11, §12 (and the sandbox README, "Read endpoints of issue 13").
ALERT_VALUES = (".previous_value must be number", ".billable_metric must be object")
ANALYTICS = (
    ".amount_cents must be integer",
    ".invoices_count must be integer",
    # A month without data has a null currency (and payment status); Prism names either
    # the type or the enum.
    ".currency must be string",
    ".currency must be equal to one of the allowed values",
    ".payment_status must be string",
    ".payment_status must be equal to one of the allowed values",
)
ACTIVITY_LOGS = ("must have required property 'organization_id'",)
API_LOGS = (".request_body must be string", ".request_response must be string")
PREMIUM_ANALYTICS = ("invoiced_usage", "mrr", "invoice_collection")


class Proxy:
    """Calls through Prism and checks what comes back."""

    def __init__(self, url: str, sandbox: Sandbox) -> None:
        self.url = url
        self.sandbox = sandbox
        self.session = requests.Session()
        self.problems: list[str] = []

    def call(
        self,
        method: str,
        template: str,
        path: str | None = None,
        *,
        status: int = 200,
        params: dict[str, Any] | None = None,
        body: Any = None,
        key: str | None = None,
        tolerate: tuple[str, ...] = (),
    ) -> Any:
        """One request; records every problem instead of stopping at the first."""
        path = path or template
        headers = {"Authorization": f"Bearer {key or self.sandbox.api_key}"}
        response = self.session.request(
            method, self.url + path, params=params, json=body, headers=headers, timeout=60
        )
        label = f"{method} {path} {params or ''}"
        header = response.headers.get("sl-violations") or "[]"
        if header.startswith("Too many violations!"):  # Prism cuts the list: unreadable
            self.problems.append(f"{label}: too many violations to check: {header[:300]}")
            return None
        violations = json.loads(header)
        unexpected = [v for v in violations if not any(t in v.get("message", "") for t in tolerate)]
        if unexpected:
            self.problems.append(f"{label}: Prism violations {unexpected}")
        if response.headers.get("Content-Type") != SANDBOX_JSON:
            if violations and not unexpected:
                return None  # Prism replaced a response whose only violations are tolerated
            self.problems.append(f"{label}: not the sandbox's answer: {response.text[:300]}")
            return None
        if response.status_code != status:
            self.problems.append(f"{label}: status {response.status_code}: {response.text[:300]}")
            return None
        data = response.json()
        if not tolerate:
            try:
                openapi_spec.validate_response(method, template, data, status)
            except (AssertionError, KeyError) as exc:
                self.problems.append(f"{label}: {exc}")
        return data

    def assert_clean(self) -> None:
        problems, self.problems = self.problems, []
        assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def proxy(sandbox_factory: Any) -> Iterator[Proxy]:
    sandbox = sandbox_factory(SEED)
    spec = openapi_spec.spec_path()
    with running_prism(
        "proxy", str(spec), sandbox.url, "--errors", "--validate-request=false"
    ) as url:
        yield Proxy(url, sandbox)


@pytest.fixture(scope="module")
def org(proxy: Proxy) -> dict[str, list[dict]]:
    return proxy.sandbox.dump()


def test_a_wrong_response_is_caught(proxy: Proxy) -> None:
    """Prove the harness fails: a tax whose rate is a string must be flagged."""
    bad = proxy.sandbox.upsert("taxes", {"code": "broken_tax", "name": "Broken", "rate": "x"})[0]
    try:
        response = proxy.session.get(
            proxy.url + "/taxes/broken_tax",
            headers={"Authorization": f"Bearer {proxy.sandbox.api_key}"},
            timeout=60,
        )
        assert response.status_code == 500
        assert response.headers["Content-Type"].startswith("application/problem+json")
        violations = json.loads(response.headers["sl-violations"])
        assert any(v["location"][-1] == "rate" and v["severity"] == "Error" for v in violations)
        proxy.call("GET", "/taxes/{code}", "/taxes/broken_tax")
        assert proxy.problems, "the checker must report the violation"
        proxy.problems.clear()
    finally:
        proxy.sandbox.upsert("taxes", {"lago_id": bad["lago_id"], "rate": 12.5})
    proxy.call("GET", "/taxes/{code}", "/taxes/broken_tax")
    proxy.assert_clean()


def test_lists_and_filters(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    # Subscriptions (status filters) and wallet transactions (per wallet) come below; the
    # resources of cash.py and organisation.py in test_cash_and_organisation_reads.
    own_routes = ("subscriptions", "wallet_transactions", *cash.RESOURCES, *organisation.RESOURCES)
    for name in (r for r in RESOURCES if r not in own_routes):
        proxy.call("GET", f"/{name}")
        proxy.call("GET", f"/{name}", params={"per_page": 3, "page": 2})
    sub = next(s for s in org["subscriptions"] if s["status"] == "active")
    customer = sub["external_customer_id"]
    event = org["events"][10]
    invoice = next(i for i in org["invoices"] if i["status"] == "finalized")
    proxy.call("GET", "/subscriptions")
    proxy.call("GET", "/subscriptions", params={"status[]": ALL_STATUSES})
    proxy.call("GET", "/subscriptions", params={"status[]": ["terminated", "canceled"]})
    proxy.call(
        "GET",
        "/subscriptions",
        params={"external_customer_id": customer, "plan_code": sub["plan_code"]},
    )
    proxy.call(
        "GET",
        "/events",
        params={
            "timestamp_from": org["events"][-1]["timestamp"],
            "timestamp_to": event["timestamp"],
            "code": event["code"],
            "external_subscription_id": event["external_subscription_id"],
        },
    )
    proxy.call("GET", "/events", params={"external_subscription_id": "none"})  # empty meta
    proxy.call("GET", "/events", params={"per_page": "abc"})
    proxy.call("GET", "/events", params={"page": 999})
    proxy.call(
        "GET",
        "/invoices",
        params={
            "issuing_date_from": "2020-01-01",
            "issuing_date_to": invoice["issuing_date"],
            "status": "finalized",
            "payment_status": invoice["payment_status"],
            "external_customer_id": invoice["customer"]["external_id"],
        },
    )
    proxy.call("GET", "/credit_notes", params={"issuing_date_from": "2020-01-01"})
    proxy.call(
        "GET",
        "/fees",
        params={
            "created_at_from": "2020-01-01T00:00:00Z",
            "fee_type": "charge",
            "external_customer_id": customer,
        },
    )
    wallet = org["wallets"][0]
    proxy.call("GET", "/wallets", params={"external_customer_id": wallet["external_customer_id"]})
    for nested in ("subscriptions", "invoices", "credit_notes", "wallets", "applied_coupons"):
        template = f"/customers/{{external_customer_id}}/{nested}"
        proxy.call("GET", template, f"/customers/{customer}/{nested}")
    proxy.call(
        "GET",
        "/wallets/{lago_id}/wallet_transactions",
        f"/wallets/{wallet['lago_id']}/wallet_transactions",
    )
    proxy.call(
        "GET",
        "/customers/{external_customer_id}/current_usage",
        f"/customers/{customer}/current_usage",
        params={"external_subscription_id": sub["external_id"]},
    )
    proxy.assert_clean()


def test_single_gets(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    proxy.call(
        "GET",
        "/customers/{external_customer_id}",
        f"/customers/{org['customers'][0]['external_id']}",
    )
    sub = next(s for s in org["subscriptions"] if s["status"] == "active")
    proxy.call("GET", "/subscriptions/{external_id}", f"/subscriptions/{sub['external_id']}")
    term = next(s for s in org["subscriptions"] if s["status"] == "terminated")
    proxy.call(
        "GET",
        "/subscriptions/{external_id}",
        f"/subscriptions/{term['external_id']}",
        params={"status": "terminated"},
    )
    invoice = next(i for i in org["invoices"] if i["status"] == "finalized")
    proxy.call("GET", "/invoices/{lago_id}", f"/invoices/{invoice['lago_id']}")
    event = org["events"][0]
    proxy.call("GET", "/events/{transaction_id}", f"/events/{event['transaction_id']}")
    for resource, key in (
        ("plans", "code"),
        ("billable_metrics", "code"),
        ("coupons", "code"),
        ("add_ons", "code"),
        ("taxes", "code"),
        ("wallets", "lago_id"),
        ("fees", "lago_id"),
        ("credit_notes", "lago_id"),
    ):
        template = f"/{resource}/{{{'code' if key == 'code' else 'lago_id'}}}"
        proxy.call("GET", template, f"/{resource}/{org[resource][0][key]}")
    proxy.assert_clean()


def test_cash_and_organisation_reads(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    """Payments, payment requests and receipts, payment methods, billing entities,
    features, plan entitlements and webhook endpoints: lists, filters, single objects."""
    payments = org["payments"]
    manual = next(n for n, p in enumerate(payments) if p["type"] == "manual")
    assert any(p["type"] == "provider" for p in payments[manual // 3 * 3 : manual // 3 * 3 + 3])
    # Pages of three (Prism stops listing violations after a few dozen), one holding a
    # manual payment and a provider payment.
    for params in ({"per_page": 3}, {"per_page": 3, "page": manual // 3 + 1}):
        proxy.call("GET", "/payments", params=params, tolerate=PAYMENT_FIELDS)
        proxy.call("GET", "/payment_receipts", params=params, tolerate=PAYMENT_FIELDS)
    invoice_id = payments[manual]["invoice_ids"][0]
    customer = payments[manual]["external_customer_id"]
    proxy.call(
        "GET",
        "/payments",
        params={"invoice_id": invoice_id, "external_customer_id": customer},
        tolerate=PAYMENT_FIELDS,
    )
    proxy.call(
        "GET",
        "/customers/{external_customer_id}/payments",
        f"/customers/{customer}/payments",
        params={"per_page": 2},
        tolerate=PAYMENT_FIELDS,
    )
    proxy.call("GET", "/payment_receipts", params={"invoice_id": invoice_id},
               tolerate=PAYMENT_FIELDS)  # fmt: skip
    request = org["payment_requests"][0]
    requester = request["customer"]["external_id"]
    proxy.call("GET", "/payment_requests")
    proxy.call(
        "GET",
        "/payment_requests",
        params={
            "payment_status": request["payment_status"],
            "currency": request["amount_currency"],
            "billing_entity_codes[]": ["acme_corp", "acme_us"],
            "external_customer_id": requester,
        },
    )
    proxy.call(
        "GET",
        "/customers/{external_customer_id}/payment_requests",
        f"/customers/{requester}/payment_requests",
    )
    method_owner = org["payment_methods"][0]["external_customer_id"]
    proxy.call(
        "GET",
        "/customers/{external_customer_id}/payment_methods",
        f"/customers/{method_owner}/payment_methods",
    )
    proxy.call("GET", "/billing_entities")
    proxy.call("GET", "/billing_entities/{code}", "/billing_entities/acme_us")
    proxy.call("GET", "/features")
    proxy.call("GET", "/features", params={"search_term": "SIGN", "per_page": 1})
    proxy.call("GET", "/features/{code}", "/features/sso")
    for plan in org["plans"]:
        path = f"/plans/{plan['code']}/entitlements"
        proxy.call("GET", "/plans/{code}/entitlements", path)
    proxy.call("GET", "/plans/{code}/entitlements/{feature_code}", "/plans/scale/entitlements/sso")
    proxy.call("GET", "/webhook_endpoints")
    endpoint = org["webhook_endpoints"][0]["lago_id"]
    proxy.call("GET", "/webhook_endpoints/{lago_id}", f"/webhook_endpoints/{endpoint}")
    # Single payments and payment requests come wrapped; the spec says unwrapped. Prism
    # only sees the wrapper, so the object inside is validated here.
    for resource, wrapper, component, key in (
        ("payments", "payment", "PaymentObject", payments[manual]["lago_id"]),
        ("payment_requests", "payment_request", "PaymentRequestObject", request["lago_id"]),
        ("payment_receipts", "payment_receipt", "PaymentReceiptObject", org[
            "payment_receipts"][0]["lago_id"]),
    ):  # fmt: skip
        proxy.call(
            "GET", f"/{resource}/{{lago_id}}", f"/{resource}/{key}",
            tolerate=(WRAPPED, *PAYMENT_FIELDS),
        )  # fmt: skip
        body = requests.get(
            f"{proxy.sandbox.url}/{resource}/{key}",
            headers={"Authorization": f"Bearer {proxy.sandbox.api_key}"},
            timeout=30,
        ).json()[wrapper]
        if resource == "payments":
            body = cash.spec_view(body)
        elif resource == "payment_receipts":
            body = {**body, "payment": cash.spec_view(body["payment"])}
        openapi_spec.validate_object(component, body)
    # Errors: 404s for a missing parent or object, 422 for a malformed invoice_id.
    unknown_uuid = "00000000-0000-4000-8000-000000000000"
    for template, path in (
        ("/payments/{lago_id}", f"/payments/{unknown_uuid}"),
        ("/payment_requests/{lago_id}", f"/payment_requests/{unknown_uuid}"),
        ("/payment_receipts/{lago_id}", f"/payment_receipts/{unknown_uuid}"),
        ("/customers/{external_customer_id}/payments", "/customers/nobody/payments"),
        ("/customers/{external_customer_id}/payment_methods", "/customers/nobody/payment_methods"),
        ("/billing_entities/{code}", "/billing_entities/none"),
        ("/features/{code}", "/features/none"),
        ("/plans/{code}/entitlements", "/plans/none/entitlements"),
        ("/plans/{code}/entitlements/{feature_code}", "/plans/starter/entitlements/sso"),
        ("/webhook_endpoints/{lago_id}", f"/webhook_endpoints/{unknown_uuid}"),
    ):
        proxy.call("GET", template, path, status=404)
    proxy.call(
        "GET", "/payments", status=422, params={"invoice_id": "x"}, tolerate=(UNDECLARED_STATUS,)
    )
    proxy.call(
        "GET",
        "/payment_requests",
        status=404,
        params={"billing_entity_codes[]": "none"},
        tolerate=(UNDECLARED_STATUS,),
    )
    proxy.assert_clean()


def test_errors(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    unknown_uuid = "00000000-0000-4000-8000-000000000000"
    proxy.call("GET", "/customers", status=401, key="wrong-key")
    proxy.call("POST", "/events", status=401, key="wrong-key", body={"event": {}})
    for template, path in (
        ("/customers/{external_customer_id}", "/customers/nobody"),
        ("/subscriptions/{external_id}", "/subscriptions/nothing"),
        ("/invoices/{lago_id}", f"/invoices/{unknown_uuid}"),
        ("/plans/{code}", "/plans/none"),
        ("/billable_metrics/{code}", "/billable_metrics/none"),
        ("/coupons/{code}", "/coupons/none"),
        ("/add_ons/{code}", "/add_ons/none"),
        ("/taxes/{code}", "/taxes/none"),
        ("/wallets/{lago_id}", f"/wallets/{unknown_uuid}"),
        ("/fees/{lago_id}", f"/fees/{unknown_uuid}"),
        ("/credit_notes/{lago_id}", f"/credit_notes/{unknown_uuid}"),
        ("/events/{transaction_id}", "/events/none"),
        ("/wallets/{lago_id}/wallet_transactions", f"/wallets/{unknown_uuid}/wallet_transactions"),
        ("/customers/{external_customer_id}/subscriptions", "/customers/nobody/subscriptions"),
        ("/customers/{external_customer_id}/invoices", "/customers/nobody/invoices"),
        ("/customers/{external_customer_id}/credit_notes", "/customers/nobody/credit_notes"),
        ("/customers/{external_customer_id}/wallets", "/customers/nobody/wallets"),
        ("/customers/{external_customer_id}/applied_coupons", "/customers/nobody/applied_coupons"),
        ("/customers/{external_customer_id}/current_usage", "/customers/nobody/current_usage"),
    ):
        params = {"external_subscription_id": "x"} if path.endswith("usage") else None
        proxy.call("GET", template, path, status=404, params=params)
    proxy.call("GET", "/events", status=422, params={"timestamp_from": "nope"})
    proxy.call("GET", "/fees", status=422, params={"created_at_from": "nope"})
    # Server behaviours with a status the spec does not declare for the operation:
    customer = org["subscriptions"][0]["external_customer_id"]
    proxy.call(
        "GET",
        "/customers/{external_customer_id}/current_usage",
        f"/customers/{customer}/current_usage",
        status=405,
        params={"external_subscription_id": "none"},
        tolerate=(UNDECLARED_STATUS,),
    )
    proxy.call(
        "GET", "/customers", status=500, params={"per_page": 0}, tolerate=(UNDECLARED_STATUS,)
    )
    proxy.call(
        "GET",
        "/wallets",
        status=404,
        params={"external_customer_id": "nobody"},
        tolerate=(UNDECLARED_STATUS,),
    )
    proxy.assert_clean()


def test_event_writes(proxy: Proxy) -> None:
    def event(txid: str, **extra: Any) -> dict:
        return {
            "transaction_id": txid,
            "code": "api_calls",
            "external_subscription_id": "sub_x",
            "timestamp": 1700000000,
            **extra,
        }

    proxy.call("POST", "/events", body={"event": event("c-1", precise_total_amount_cents="10")})
    proxy.call("POST", "/events", status=422, body={"event": event("c-1")})
    proxy.call("POST", "/events", status=422, body={"event": {"timestamp": "2024-01-01"}})
    proxy.call("POST", "/events", status=400, body={})
    proxy.call("POST", "/events/batch", body={"events": [event(f"b-{i}") for i in range(100)]})
    proxy.call("POST", "/events/batch", status=422, body={"events": [event("b-0"), event("n")]})
    proxy.call("POST", "/events/batch", status=422, body={"events": [{"code": "c"}, event("n")]})
    proxy.call("POST", "/events/batch", status=422, body={"events": []})
    proxy.call(
        "POST", "/events/batch", status=422, body={"events": [event(f"m-{i}") for i in range(101)]}
    )
    # The server stores an event without a subscription and echoes a null
    # external_subscription_id; the spec's EventObject says it is a non-null string.
    proxy.call(
        "POST",
        "/events",
        body={"event": {"transaction_id": "n-1", "code": "c"}},
        tolerate=(NULL_SUBSCRIPTION,),
    )
    stored = [e for e in proxy.sandbox.dump()["events"] if e["transaction_id"] == "n-1"]
    assert [e["external_subscription_id"] for e in stored] == [None]
    proxy.assert_clean()


def test_customer_writes(proxy: Proxy) -> None:
    proxy.call(
        "POST",
        "/customers",
        body={
            "customer": {
                "external_id": "w-1",
                "name": "W",
                "email": "w@example.com",
                "country": "DE",
                "currency": "EUR",
                "metadata": [{"key": "k", "value": "v", "display_in_invoice": False}],
            }
        },
    )
    proxy.call("POST", "/customers", body={"customer": {"external_id": "w-1", "name": None}})
    proxy.call(
        "POST",
        "/customers",
        status=422,
        body={"customer": {"external_id": "w-2", "email": "bad", "country": "XX"}},
    )
    proxy.call("POST", "/customers", status=400, body={"external_id": "w-3"})
    proxy.assert_clean()


def test_subscription_writes(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    plans = sorted(
        org["plans"], key=lambda p: p["amount_cents"] * (1 if p["interval"] == "yearly" else 12)
    )
    cheap, dear = plans[0], plans[-1]
    base = {"external_customer_id": "sw-cust", "external_id": "sw-1"}
    proxy.call(
        "POST", "/subscriptions", body={"subscription": {**base, "plan_code": cheap["code"]}}
    )
    proxy.call(
        "POST", "/subscriptions", body={"subscription": {**base, "plan_code": cheap["code"]}}
    )
    proxy.call("POST", "/subscriptions", body={"subscription": {**base, "plan_code": dear["code"]}})
    proxy.call(
        "POST", "/subscriptions", body={"subscription": {**base, "plan_code": cheap["code"]}}
    )
    proxy.call(
        "POST", "/subscriptions", status=404, body={"subscription": {**base, "plan_code": "no"}}
    )
    proxy.call(
        "POST",
        "/subscriptions",
        status=422,
        body={"subscription": {"external_id": "x", "plan_code": cheap["code"]}},
    )
    proxy.call(
        "POST",
        "/subscriptions",
        status=422,
        body={
            "subscription": {
                "external_customer_id": "other",
                "external_id": "sw-1",
                "plan_code": cheap["code"],
            }
        },
    )
    proxy.call("POST", "/subscriptions", status=400, body={})
    proxy.call("DELETE", "/subscriptions/{external_id}", "/subscriptions/sw-1")
    proxy.call("DELETE", "/subscriptions/{external_id}", "/subscriptions/sw-1", status=404)
    proxy.call(
        "POST",
        "/subscriptions",
        status=403,
        tolerate=(UNDECLARED_STATUS,),
        body={
            "subscription": {
                **base,
                "external_id": "sw-2",
                "plan_code": cheap["code"],
                "plan_overrides": {"amount_cents": 1},
            }
        },
    )
    # Licensed: the subscription gets a plan of its own (the list keeps the parent's code).
    proxy.sandbox.configure(premium=True)
    try:
        priced = next(p for p in org["plans"] if p["charges"])
        charge = priced["charges"][0]
        overrides = {
            "amount_cents": 1,
            "name": "Own",
            "charges": [{"id": charge["lago_id"], "invoice_display_name": "Own usage"}],
        }
        created = {
            "subscription": {
                **base, "external_id": "sw-3", "plan_code": priced["code"],
                "plan_overrides": overrides,
            }
        }  # fmt: skip
        openapi_spec.validate_object("SubscriptionCreateInput", created)
        proxy.call("POST", "/subscriptions", body=created)
        update = {"subscription": {"ending_at": None, "plan_overrides": {"amount_cents": 2}}}
        openapi_spec.validate_object("SubscriptionUpdateInput", update)
        proxy.call("PUT", "/subscriptions/{external_id}", "/subscriptions/sw-3", body=update)
        proxy.call("GET", "/subscriptions/{external_id}", "/subscriptions/sw-3")
        proxy.call("GET", "/subscriptions", params={"external_customer_id": "sw-cust"})
        # Fixed charges (units-only first: no plan of its own) and usage thresholds.
        plan = {
            "name": "Seats", "code": "sw-seats", "interval": "monthly", "amount_cents": 0,
            "amount_currency": priced["amount_currency"],
            "fixed_charges": [{"add_on_code": org["add_ons"][0]["code"], "units": 1,
                               "charge_model": "standard", "properties": {"amount": "10"}}],
        }  # fmt: skip
        fixed = proxy.call("POST", "/plans", body={"plan": plan})["plan"]["fixed_charges"][0]
        seats = {"subscription": {**base, "external_id": "sw-4", "plan_code": "sw-seats"}}
        proxy.call("POST", "/subscriptions", body=seats)
        units = {"subscription": {"ending_at": None, "plan_overrides": {"fixed_charges": [
            {"id": fixed["lago_id"], "units": 5, "apply_units_immediately": True}]}}}  # fmt: skip
        openapi_spec.validate_object("SubscriptionUpdateInput", units)
        proxy.call("PUT", "/subscriptions/{external_id}", "/subscriptions/sw-4", body=units)
        shown = proxy.call("GET", "/subscriptions/{external_id}", "/subscriptions/sw-4")
        assert shown["subscription"]["plan"]["fixed_charges"][0]["units"] == 5
        assert "sw-4" not in {o["external_subscription_id"]
                              for o in proxy.sandbox.dump().get("overridden_plans", [])}
        whole = {"subscription": {"ending_at": None, "plan_overrides": {
            "fixed_charges": [{"id": fixed["lago_id"], "invoice_display_name": "Own seats"}],
            "usage_thresholds": [{"amount_cents": 5000, "threshold_display_name": "Half"}],
        }}}  # fmt: skip
        openapi_spec.validate_object("SubscriptionUpdateInput", whole)
        proxy.call("PUT", "/subscriptions/{external_id}", "/subscriptions/sw-4", body=whole)
        shown = proxy.call("GET", "/subscriptions/{external_id}", "/subscriptions/sw-4")
        [own] = shown["subscription"]["plan"]["fixed_charges"]
        plan_id = priced["lago_id"]  # not a fixed charge
        assert (own["units"], own["invoice_display_name"]) == (5, "Own seats")
        assert shown["subscription"]["plan"]["usage_thresholds"][0]["amount_cents"] == 5000
        unknown = {"subscription": {"plan_overrides": {"fixed_charges": [{"id": plan_id}]}}}
        proxy.call("PUT", "/subscriptions/{external_id}", "/subscriptions/sw-4", status=404,
                   body=unknown, tolerate=(UNDECLARED_STATUS,))  # fmt: skip
    finally:
        proxy.sandbox.configure(premium=False)
    proxy.assert_clean()


def test_wallet_writes(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    """Wallet and wallet-transaction writes: target-lago's own bodies, then the sandbox's
    answers, each checked against the spec (requests here, responses by Prism)."""
    from target_lago.actions.wallet_transactions import transaction_payload
    from target_lago.actions.wallets import wallet_payload

    customer = next(c for c in org["customers"] if c.get("currency"))
    ext = customer["external_id"]
    record = {"external_customer_id": ext, "code": "conformance", "name": "Conformance",
              "rate_amount": 1.5, "currency": customer["currency"], "priority": 7,
              "expiration_at": "2099-01-01", "metadata": {"team": "ops"}}  # fmt: skip
    body, _ = wallet_payload(record)
    request_body(proxy, "POST", "/wallets", {"wallet": body})
    created = proxy.call("POST", "/wallets", body={"wallet": body})
    assert created is not None, proxy.problems
    wallet_id = created["wallet"]["lago_id"]
    path = f"/wallets/{wallet_id}"
    update = {"wallet": {"name": "Renamed", "priority": 3, "metadata": {"team": "billing"}}}
    request_body(proxy, "PUT", "/wallets/{lago_id}", update)
    proxy.call("PUT", "/wallets/{lago_id}", path, body=update)
    proxy.call("POST", "/wallets", status=422, body={"wallet": body})  # value_already_exist
    proxy.call("PUT", "/wallets/{lago_id}", f"/wallets/{customer['lago_id']}", status=404,
               body=update)  # fmt: skip
    proxy.call("POST", "/wallets", status=400, body={})

    row = {"id": 1, "wallet_id": wallet_id, "paid_credits": 10, "granted_credits": "2.5",
           "name": "Top-up", "metadata": [{"key": "source", "value": "crm"}]}  # fmt: skip
    tx = {"wallet_transaction": transaction_payload(row, ["id"])}
    request_body(proxy, "POST", "/wallet_transactions", tx)
    made = proxy.call("POST", "/wallet_transactions", body=tx)
    assert made is not None and len(made["wallet_transactions"]) == 2, proxy.problems
    void = {"wallet_transaction": {"wallet_id": wallet_id, "voided_credits": "1"}}
    proxy.call("POST", "/wallet_transactions", body=void)
    proxy.call("POST", "/wallet_transactions", body={"wallet_transaction": {
        "wallet_id": wallet_id, "granted_credits": "0"}})  # fmt: skip
    proxy.call("POST", "/wallet_transactions", status=422, body={"wallet_transaction": {
        "wallet_id": wallet_id, "voided_credits": "1000000"}})  # fmt: skip
    tid = tx["wallet_transaction"]["metadata"][-1]["value"]
    listed = proxy.call(
        "GET", "/wallets/{lago_id}/wallet_transactions", f"{path}/wallet_transactions",
        params={"metadata[target_lago_id]": tid},
    )  # fmt: skip
    assert listed is not None and len(listed["wallet_transactions"]) == 2, proxy.problems
    proxy.assert_clean()


def request_body(proxy: Proxy, method: str, template: str, body: Any) -> None:
    """Check a request body against the operation's declared request schema."""
    operation = openapi_spec._operation(method, template)
    schema = openapi_spec._resolve_local(operation["requestBody"])["content"]["application/json"]
    try:
        openapi_spec.validate_schema(schema["schema"], body, f"{method} {template} request")
    except AssertionError as exc:
        proxy.problems.append(str(exc))


def test_lifecycle_writes(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    """PUT /subscriptions, POST /applied_coupons, one-off POST /invoices, PUT /invoices.

    Request bodies shaped as target-lago sends them are checked against their input
    schemas; every response through Prism.
    """
    plan = org["plans"][0]["code"]
    add_on = org["add_ons"][0]["code"]
    sub = {"external_customer_id": "lw-cust", "external_id": "lw-1", "plan_code": plan}
    proxy.call("POST", "/subscriptions", body={"subscription": sub})
    update = {"subscription": {"name": "Renamed", "ending_at": "2099-01-01T00:00:00Z"}}
    openapi_spec.validate_object("SubscriptionUpdateInput", update)
    proxy.call("PUT", "/subscriptions/{external_id}", "/subscriptions/lw-1", body=update)
    proxy.call(
        "PUT",
        "/subscriptions/{external_id}",
        "/subscriptions/lw-1",
        status=422,
        body={"subscription": {"ending_at": "2000-01-01T00:00:00Z"}},
    )
    proxy.call(
        "PUT", "/subscriptions/{external_id}", "/subscriptions/none", status=404, body=update
    )
    proxy.call(
        "POST", "/customers", body={"customer": {"external_id": "lw-cust", "currency": "EUR"}}
    )
    coupon = next(c for c in org["coupons"] if not c["terminated_at"])["code"]
    applied = {"applied_coupon": {"external_customer_id": "lw-cust", "coupon_code": coupon}}
    openapi_spec.validate_object("AppliedCouponInput", applied)
    proxy.call("POST", "/applied_coupons", body=applied)
    proxy.call(
        "POST",
        "/applied_coupons",
        status=404,
        body={"applied_coupon": {"external_customer_id": "lw-cust", "coupon_code": "none"}},
    )
    proxy.call("GET", "/applied_coupons", params={"external_customer_id": "lw-cust"})
    invoice = {
        "invoice": {
            "external_customer_id": "lw-cust",
            "currency": "EUR",
            "fees": [{"add_on_code": add_on, "units": "2", "description": "Setup"}],
        }
    }
    openapi_spec.validate_object("InvoiceOneOffCreateInput", invoice)
    created = proxy.call("POST", "/invoices", body=invoice)
    lago_id = (created or {}).get("invoice", {}).get("lago_id", "missing")
    metadata = {"invoice": {"metadata": [{"key": "target_lago_key", "value": "lw-row-1"}]}}
    openapi_spec.validate_object("InvoiceUpdateInput", metadata)
    proxy.call("PUT", "/invoices/{lago_id}", f"/invoices/{lago_id}", body=metadata)
    proxy.call("GET", "/invoices", params={"metadata[target_lago_key]": "lw-row-1"})
    # Undeclared by the spec, as the server answers them.
    proxy.call(
        "POST",
        "/invoices",
        status=404,
        tolerate=(UNDECLARED_STATUS,),
        body={"invoice": {**invoice["invoice"], "fees": [{"add_on_code": "none"}]}},
    )
    proxy.call(
        "POST",
        "/invoices",
        status=404,
        tolerate=(UNDECLARED_STATUS,),
        body={"invoice": {**invoice["invoice"], "fees": []}},
    )
    proxy.call("DELETE", "/subscriptions/{external_id}", "/subscriptions/lw-1")
    proxy.assert_clean()


def test_usage_history_and_alerts(proxy: Proxy, org: dict[str, list[dict]]) -> None:
    """Past and lifetime usage, subscription and wallet alerts (issue 13)."""
    for sub in org["subscriptions"]:
        if sub["status"] not in ("active", "terminated"):
            continue
        external_id, customer = sub["external_id"], sub["external_customer_id"]
        proxy.call(
            "GET",
            "/customers/{external_customer_id}/past_usage",
            f"/customers/{customer}/past_usage",
            params={"external_subscription_id": external_id, "per_page": 2},
        )
        proxy.call(
            "GET",
            "/subscriptions/{external_id}/lifetime_usage",
            f"/subscriptions/{external_id}/lifetime_usage",
        )
        proxy.call(
            "GET",
            "/subscriptions/{external_id}/alerts",
            f"/subscriptions/{external_id}/alerts",
            params={"subscription_status": sub["status"]},
            tolerate=ALERT_VALUES,
        )
    for wallet in org["wallets"]:
        proxy.call(
            "GET",
            "/customers/{external_customer_id}/wallets/{wallet_code}/alerts",
            f"/customers/{wallet['external_customer_id']}/wallets/{wallet['code']}/alerts",
            tolerate=ALERT_VALUES,
        )
    sub = next(s for s in org["subscriptions"] if s["status"] == "active")
    past = f"/customers/{sub['external_customer_id']}/past_usage"
    template = "/customers/{external_customer_id}/past_usage"
    proxy.call("GET", template, past, params={"external_subscription_id": sub["external_id"],
               "billable_metric_code": org["billable_metrics"][0]["code"]})  # fmt: skip
    proxy.call("GET", template, past, params={"external_subscription_id": sub["external_id"],
               "periods_count": 2})  # fmt: skip
    proxy.call("GET", template, "/customers/nobody/past_usage",
               params={"external_subscription_id": "none"})  # fmt: skip
    proxy.call("GET", template, past, status=422)
    unknown_metric = {"external_subscription_id": sub["external_id"], "billable_metric_code": "x"}
    proxy.call("GET", template, past, status=404, params=unknown_metric)
    proxy.call("GET", "/subscriptions/{external_id}/lifetime_usage",
               "/subscriptions/none/lifetime_usage", status=404)  # fmt: skip
    proxy.call("GET", "/subscriptions/{external_id}/alerts", "/subscriptions/none/alerts",
               status=404)  # fmt: skip
    wallet = org["wallets"][0]
    template = "/customers/{external_customer_id}/wallets/{wallet_code}/alerts"
    proxy.call("GET", template, "/customers/nobody/wallets/x/alerts", status=404)
    proxy.call("GET", template, f"/customers/{wallet['external_customer_id']}/wallets/none/alerts",
               status=404)  # fmt: skip
    proxy.assert_clean()


def test_analytics_and_logs(proxy: Proxy) -> None:
    """Analytics and logs without a premium licence, then with one, then of an organisation
    without invoices (months without data)."""
    try:
        for premium in (False, True):
            proxy.sandbox.configure(premium=premium)
            _analytics_and_logs(proxy, premium=premium)
        proxy.sandbox.reset({"customers": 0, "events": 0})
        for name in ("mrr", "invoice_collection"):
            proxy.call("GET", f"/analytics/{name}", params={"months": 2}, tolerate=ANALYTICS)
    finally:
        proxy.sandbox.configure(premium=False)
        proxy.sandbox.reset()
    proxy.assert_clean()


def _analytics_and_logs(proxy: Proxy, *, premium: bool) -> None:
    # The whole series is what the tap reads, but Prism cuts a long list of violations:
    # a few months at a time.
    for name in ("gross_revenue", "invoiced_usage", "mrr", "overdue_balance", "invoice_collection"):
        gated = not premium and name in PREMIUM_ANALYTICS
        status = 403 if gated else 200
        tolerate: tuple[str, ...] = ANALYTICS if not gated else (UNDECLARED_STATUS,)
        for params in ({"months": 2}, {"months": 4, "currency": "EUR"}, {"months": "x"}):
            proxy.call("GET", f"/analytics/{name}", status=status, params=params, tolerate=tolerate)
    proxy.call("GET", "/analytics/usage", params={"time_granularity": "monthly"})
    proxy.call("GET", "/analytics/usage", params={"billable_metric_code": "api_calls"})
    for name, differences in (("activity_logs", ACTIVITY_LOGS), ("api_logs", API_LOGS)):
        tolerate = differences if premium else (UNDECLARED_STATUS,)
        for params in ({"per_page": 3}, {"per_page": 3, "from_date": "2020-01-01"}):
            proxy.call("GET", f"/{name}", status=200 if premium else 403, params=params,
                       tolerate=tolerate)  # fmt: skip


def test_catalog_writes(proxy: Proxy) -> None:
    """POST/PUT/DELETE of taxes, metrics, add-ons, coupons, plans, features, entitlements.

    Request bodies are checked against their input schemas, responses through Prism.
    """
    sandbox = proxy.sandbox
    sandbox.configure(premium=True)
    try:
        _catalog_calls(proxy)
    finally:
        sandbox.configure(premium=False)
    proxy.assert_clean()


def _write(proxy: Proxy, method: str, template: str, path: str, body: Any) -> Any:
    request_body(proxy, method, template, body)
    return proxy.call(method, template, path, body=body)


def _catalog_calls(proxy: Proxy) -> None:
    tax = {"tax": {"name": "Conformance VAT", "code": "cf_vat", "rate": "12.5",
                   "description": "test", "applied_to_organization": False}}  # fmt: skip
    _write(proxy, "POST", "/taxes", "/taxes", tax)
    _write(proxy, "PUT", "/taxes/{code}", "/taxes/cf_vat", {"tax": {"rate": "13"}})
    proxy.call("POST", "/taxes", body=tax, status=422)
    filters = [{"key": "region", "values": ["eu", "us"]}]
    fields = {"field_name": "gb", "recurring": False, "filters": filters}
    metric = {"billable_metric": {"name": "CF", "code": "cf_gb", "aggregation_type": "sum_agg",
                                  **fields}}  # fmt: skip
    made = _write(proxy, "POST", "/billable_metrics", "/billable_metrics", metric)
    metric_id = (made or {}).get("billable_metric", {}).get("lago_id", "missing")
    _write(proxy, "PUT", "/billable_metrics/{code}", "/billable_metrics/cf_gb",
           {"billable_metric": {"name": "CF 2", "description": None}})  # fmt: skip
    add_on = {"add_on": {"name": "CF", "code": "cf_setup", "amount_cents": 100,
                         "amount_currency": "EUR", "tax_codes": ["cf_vat"]}}  # fmt: skip
    _write(proxy, "POST", "/add_ons", "/add_ons", add_on)
    _write(proxy, "PUT", "/add_ons/{code}", "/add_ons/cf_setup", {"add_on": {"amount_cents": 200}})
    plan = {"plan": {
        "name": "CF", "code": "cf_plan", "interval": "yearly", "amount_cents": 1000,
        "amount_currency": "EUR", "pay_in_advance": True, "bill_charges_monthly": True,
        "tax_codes": ["cf_vat"], "trial_period": 7, "metadata": {"team": "cf"},
        "minimum_commitment": {"amount_cents": 5000, "invoice_display_name": "Min"},
        "usage_thresholds": [{"amount_cents": 100, "threshold_display_name": "T"}],
        "charges": [
            {"billable_metric_id": metric_id, "charge_model": "graduated", "properties": {
                "graduated_ranges": [
                    {"from_value": 0, "to_value": 10, "flat_amount": "0", "per_unit_amount": "1"},
                    {"from_value": 11, "to_value": None, "flat_amount": "5",
                     "per_unit_amount": "0.5"}]},
             "filters": [{"invoice_display_name": "EU", "properties": {"graduated_ranges": [
                 {"from_value": 0, "to_value": None, "flat_amount": "0",
                  "per_unit_amount": "2"}]}, "values": {"region": ["eu"]}}]},
        ],
        "fixed_charges": [{"add_on_id": (proxy.sandbox.dump()["add_ons"][0]["lago_id"]),
                           "charge_model": "standard", "units": 2,
                           "properties": {"amount": "3"}}],
    }}  # fmt: skip
    created = _write(proxy, "POST", "/plans", "/plans", plan)
    charge = ((created or {}).get("plan") or {}).get("charges", [{}])[0]
    update = {"plan": {"name": "CF 2", "interval": "yearly", "charges": [
        {"id": charge.get("lago_id", "missing"), "billable_metric_id": metric_id,
         "charge_model": "standard", "properties": {"amount": "2"}}]}}  # fmt: skip
    _write(proxy, "PUT", "/plans/{code}", "/plans/cf_plan", update)
    proxy.call("POST", "/plans", body=plan, status=422)
    proxy.call("PUT", "/plans/{code}", "/plans/none", body=update, status=404)
    coupon = {"coupon": {"name": "CF", "code": "cf_coupon", "coupon_type": "fixed_amount",
                         "amount_cents": 500, "amount_currency": "EUR", "reusable": False,
                         "frequency": "recurring", "frequency_duration": 3,
                         "expiration": "time_limit", "expiration_at": "2099-01-01T00:00:00Z",
                         "applies_to": {"plan_codes": ["cf_plan"]}}}  # fmt: skip
    _write(proxy, "POST", "/coupons", "/coupons", coupon)
    _write(proxy, "PUT", "/coupons/{code}", "/coupons/cf_coupon", {"coupon": {"name": "CF 2"}})
    proxy.call("POST", "/coupons", body={"coupon": {**coupon["coupon"], "code": "cf_2",
                                                    "applies_to": {"plan_codes": ["none"]}}},
               status=404, tolerate=(UNDECLARED_STATUS,))  # fmt: skip
    feature = {"feature": {"code": "cf_seats", "name": "Seats", "description": None,
                           "privileges": [{"code": "max", "name": "Max", "value_type": "integer"},
                                          {"code": "sso", "value_type": "boolean"}]}}  # fmt: skip
    _write(proxy, "POST", "/features", "/features", feature)
    proxy.call("GET", "/features")
    proxy.call("GET", "/features/{code}", "/features/cf_seats")
    _write(proxy, "PUT", "/features/{code}", "/features/cf_seats", feature)
    values = {"entitlements": {"cf_seats": {"max": 10, "sso": True}}}
    base = "/plans/{code}/entitlements"
    _write(proxy, "POST", base, "/plans/cf_plan/entitlements", values)
    _write(proxy, "PATCH", base, "/plans/cf_plan/entitlements",
           {"entitlements": {"cf_seats": {"max": 12}}})  # fmt: skip
    proxy.call("GET", base, "/plans/cf_plan/entitlements")
    one = base + "/{feature_code}"
    proxy.call("GET", one, "/plans/cf_plan/entitlements/cf_seats")
    proxy.call("PATCH", base, "/plans/cf_plan/entitlements", status=404,
               body={"entitlements": {"none": {}}})  # fmt: skip
    proxy.call("DELETE", one, "/plans/cf_plan/entitlements/cf_seats")
    proxy.call("DELETE", "/features/{code}", "/features/cf_seats")
    proxy.call("DELETE", "/coupons/{code}", "/coupons/cf_coupon")
    proxy.call("DELETE", "/plans/{code}", "/plans/cf_plan")
    proxy.call("DELETE", "/add_ons/{code}", "/add_ons/cf_setup")
    proxy.call("DELETE", "/billable_metrics/{code}", "/billable_metrics/cf_gb")
    proxy.call("DELETE", "/taxes/{code}", "/taxes/cf_vat")
    proxy.call("DELETE", "/taxes/{code}", "/taxes/cf_vat", status=404)


def test_target_lago_catalog_writes(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """target-lago applies tests/target/pricing.yaml through Prism (creates and updates).

    Every request body it sends is checked against its operation's input schema; a response
    violation would be a Prism 500, which the run would not survive.
    """
    import re
    from pathlib import Path

    from tap_lago.catalog_file import messages, read_catalog
    from target_lago.client import LagoClient

    from tests.target.helpers import dead_letters, run_target

    sent: list[tuple[str, str, Any]] = []
    original = LagoClient.request

    def recording(self: LagoClient, method: str, path: str, data: Any, **kw: Any) -> Any:
        if data and method in ("POST", "PUT", "PATCH"):
            sent.append((method, path, json.loads(data)))
        return original(self, method, path, data, **kw)

    monkeypatch.setattr(LagoClient, "request", recording)
    # Prism serves the spec's paths at its root, without the /api/v1 the setting requires.
    monkeypatch.setattr("target_lago.target.api_url_problem", lambda url: None)
    pricing = Path(__file__).parents[1] / "target" / "pricing.yaml"
    config = {"api_key": proxy.sandbox.api_key, "api_url": proxy.url,
              "dead_letter_path": str(tmp_path / "dead_letters.jsonl")}  # fmt: skip
    catalog = read_catalog(pricing)
    proxy.sandbox.configure(premium=True)
    try:
        first = run_target(config, messages(catalog))
        catalog["plans"][0]["charges"][0]["properties"]["amount"] = "0.004"
        second = run_target(config, messages(catalog))  # a plan update
    finally:
        proxy.sandbox.configure(premium=False)
    assert first.error is None and second.error is None, (first.error, second.error)
    assert dead_letters(config["dead_letter_path"]) == []
    # The seed holds the metrics (other names and filters): updated on the first run.
    updates = {path for method, path, _ in sent if method == "PUT"}
    assert {"/plans/team", "/billable_metrics/api_calls"} <= updates, updates
    for method, path, body in sent:
        template = re.sub(r"^/plans/[^/]+/entitlements$", "/plans/{code}/entitlements", path)
        template = re.sub(r"^/(\w+)/[^/{]+$", r"/\1/{code}", template)
        request_body(proxy, method, template, body)
    proxy.assert_clean()


def test_deletions(proxy: Proxy) -> None:
    """DELETE of a customer, a plan, a coupon and an add-on (run last: it removes them)."""
    org = proxy.sandbox.dump()
    customer = org["customers"][-1]["external_id"]
    for template, path in (
        ("/customers/{external_customer_id}", f"/customers/{customer}"),
        ("/plans/{code}", f"/plans/{org['plans'][-1]['code']}"),
        ("/coupons/{code}", f"/coupons/{org['coupons'][-1]['code']}"),
        ("/add_ons/{code}", f"/add_ons/{org['add_ons'][-1]['code']}"),
    ):
        proxy.call("DELETE", template, path)
        proxy.call("DELETE", template, path, status=404)
    proxy.call("GET", "/customers")
    proxy.call("GET", "/subscriptions", params={"status[]": ALL_STATUSES})
    proxy.call("GET", "/applied_coupons")
    proxy.assert_clean()
