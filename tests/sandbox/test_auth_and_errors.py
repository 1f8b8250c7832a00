"""Authentication, routing, HTTP plumbing and the exact error bodies (section 7 and 8)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

from tests.lago_sandbox import Sandbox

UNAUTHORIZED = {"status": 401, "error": "Unauthorized"}
ROUTE_NOT_FOUND = {"status": 404, "error": "Not Found", "code": "resource_not_found"}


def call(sb: Sandbox, method: str, path: str, key: str | None = None, **kw: Any):
    headers = {} if key is None else {"Authorization": key}
    return requests.request(method, sb.url + path, headers=headers, timeout=30, **kw)


def bearer(sb: Sandbox) -> str:
    return f"Bearer {sb.api_key}"


def test_missing_key_is_401_without_code(sandbox: Sandbox) -> None:
    response = call(sandbox, "GET", "/customers")
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Bearer", "", "Bearer  "])
def test_wrong_or_malformed_key_is_401(sandbox: Sandbox, header: str) -> None:
    response = call(sandbox, "GET", "/events", header)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


def test_scheme_word_is_not_checked(sandbox: Sandbox) -> None:
    response = call(sandbox, "GET", "/taxes", f"Token {sandbox.api_key}")
    assert response.status_code == 200


def test_writes_need_the_key_too(sandbox: Sandbox) -> None:
    response = call(sandbox, "POST", "/events", "Bearer nope", json={"event": {}})
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/no_such_resource"),
        ("GET", "/customers/x/y/z"),
        ("PUT", "/customers"),
        ("DELETE", "/events/tx_00001"),
        ("PATCH", "/events"),
        ("POST", "/fees"),
    ],
)
def test_unknown_route_is_404_before_auth(sandbox: Sandbox, method: str, path: str) -> None:
    for key in (None, bearer(sandbox)):
        response = call(sandbox, method, path, key)
        assert response.status_code == 404
        assert response.json() == ROUTE_NOT_FOUND


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/customers/nobody", "customer_not_found"),
        ("/subscriptions/nothing", "subscription_not_found"),
        ("/invoices/00000000-0000-4000-8000-000000000000", "invoice_not_found"),
        ("/plans/no_plan", "plan_not_found"),
        ("/billable_metrics/no_metric", "billable_metric_not_found"),
        ("/coupons/no_coupon", "coupon_not_found"),
        ("/add_ons/no_add_on", "add_on_not_found"),
        ("/taxes/no_tax", "tax_not_found"),
        ("/wallets/00000000-0000-4000-8000-000000000000", "wallet_not_found"),
        ("/fees/00000000-0000-4000-8000-000000000000", "fee_not_found"),
        ("/credit_notes/00000000-0000-4000-8000-000000000000", "credit_note_not_found"),
        ("/events/no_such_transaction", "event_not_found"),
        (
            "/wallets/00000000-0000-4000-8000-000000000000/wallet_transactions",
            "wallet_not_found",
        ),
        ("/customers/nobody/current_usage?external_subscription_id=x", "customer_not_found"),
    ],
)
def test_not_found_bodies(sandbox: Sandbox, path: str, code: str) -> None:
    response = call(sandbox, "GET", path, bearer(sandbox))
    assert response.status_code == 404
    assert response.json() == {"status": 404, "error": "Not Found", "code": code}


def test_single_gets_return_the_listed_object_under_a_singular_root(sandbox: Sandbox) -> None:
    dump = sandbox.dump()
    cases = [
        ("customers", "customer", "external_id"),
        ("plans", "plan", "code"),
        ("billable_metrics", "billable_metric", "code"),
        ("coupons", "coupon", "code"),
        ("add_ons", "add_on", "code"),
        ("taxes", "tax", "code"),
        ("wallets", "wallet", "lago_id"),
        ("fees", "fee", "lago_id"),
        ("credit_notes", "credit_note", "lago_id"),
    ]
    for resource, root, key in cases:
        obj = dump[resource][0]
        response = call(sandbox, "GET", f"/{resource}/{obj[key]}", bearer(sandbox))
        assert response.status_code == 200, resource
        assert response.json() == {root: obj}, resource


def test_invoice_get_adds_its_fees(sandbox: Sandbox) -> None:
    dump = sandbox.dump()
    invoice = next(i for i in dump["invoices"] if i["status"] == "finalized")
    body = call(sandbox, "GET", f"/invoices/{invoice['lago_id']}", bearer(sandbox)).json()
    fees = [f for f in dump["fees"] if f["lago_invoice_id"] == invoice["lago_id"]]
    assert fees
    assert body["invoice"]["fees"] == fees
    assert {k: v for k, v in body["invoice"].items() if k != "fees"} == invoice


def test_subscription_get_uses_status_param_and_embeds_the_plan(sandbox: Sandbox) -> None:
    dump = sandbox.dump()
    term = next(s for s in dump["subscriptions"] if s["status"] == "terminated")
    active_ids = {s["external_id"] for s in dump["subscriptions"] if s["status"] == "active"}
    path = f"/subscriptions/{term['external_id']}"
    if term["external_id"] not in active_ids:
        assert call(sandbox, "GET", path, bearer(sandbox)).status_code == 404
    body = call(sandbox, "GET", path + "?status=terminated", bearer(sandbox)).json()
    assert body["subscription"]["lago_id"] == term["lago_id"]
    assert body["subscription"]["plan"]["code"] == term["plan_code"]


def test_event_get_decodes_an_encoded_transaction_id(sandbox_factory: Any) -> None:
    sb = sandbox_factory({"customers": 1, "events": 0})
    txid = "order/42 #1"
    created = call(
        sb, "POST", "/events", bearer(sb), json={"event": {"transaction_id": txid, "code": "c"}}
    )
    assert created.status_code == 200
    response = call(sb, "GET", "/events/" + quote(txid, safe=""), bearer(sb))
    assert response.status_code == 200
    assert response.json()["event"]["transaction_id"] == txid


def test_current_usage_needs_an_active_subscription_of_that_customer(sandbox: Sandbox) -> None:
    dump = sandbox.dump()
    sub = next(s for s in dump["subscriptions"] if s["status"] == "active")
    ok = call(
        sandbox,
        "GET",
        f"/customers/{sub['external_customer_id']}/current_usage",
        bearer(sandbox),
        params={"external_subscription_id": sub["external_id"]},
    )
    assert ok.status_code == 200
    assert list(ok.json()) == ["customer_usage"]
    assert ok.json()["customer_usage"]["charges_usage"]
    for params in ({"external_subscription_id": "nope"}, {}):
        response = call(
            sandbox,
            "GET",
            f"/customers/{sub['external_customer_id']}/current_usage",
            bearer(sandbox),
            params=params,
        )
        assert response.status_code == 405
        assert response.json() == {
            "status": 405,
            "error": "Method Not Allowed",
            "code": "no_active_subscription",
        }


def test_invalid_json_body_is_400(sandbox: Sandbox) -> None:
    response = requests.post(
        sandbox.url + "/customers",
        data=b"{not json",
        headers={"Authorization": bearer(sandbox), "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["status"] == 400


def test_responses_are_json_with_length_on_a_kept_alive_connection(sandbox: Sandbox) -> None:
    parts = urlsplit(sandbox.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        for path in ("/taxes", "/nothing_here", "/customers/nobody"):
            conn.request("GET", parts.path + path, headers={"Authorization": bearer(sandbox)})
            response = conn.getresponse()
            body = response.read()
            assert response.version == 11
            assert response.getheader("Content-Type") == "application/json; charset=utf-8"
            assert int(response.getheader("Content-Length") or -1) == len(body)
            assert response.getheader("Connection") != "close"
            json.loads(body)
        assert conn.sock is not None  # the same socket served all three
    finally:
        conn.close()
