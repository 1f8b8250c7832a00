"""POST /wallets, PUT /wallets/{lago_id}, POST /wallet_transactions and the metadata filter
(LAGO_API_WRITES.md sections 4 and 5)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import get, listed

EMPTY = {"customers": 0, "events": 0}


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    sandbox = sandbox_factory(EMPTY)
    call(sandbox, "POST", "/customers", {"customer": {"external_id": "c1", "currency": "EUR"}})
    return sandbox


def call(sb: Sandbox, method: str, path: str, body: Any) -> requests.Response:
    return requests.request(
        method, sb.url + path, json=body, headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )  # fmt: skip


def wallet(sb: Sandbox, **fields: Any) -> requests.Response:
    base = {"external_customer_id": "c1", "rate_amount": "1"}
    return call(sb, "POST", "/wallets", {"wallet": {**base, **fields}})


def top_up(sb: Sandbox, **fields: Any) -> requests.Response:
    return call(sb, "POST", "/wallet_transactions", {"wallet_transaction": fields})


def details(response: requests.Response) -> Any:
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error"], body["code"]) == ("Unprocessable Entity", "validation_errors")
    return body["error_details"]


def test_create_code_uniqueness_and_limits(sb: Sandbox) -> None:
    created = wallet(sb, code="main", name="Main", granted_credits="10")
    assert created.status_code == 200, created.text
    main = created.json()["wallet"]
    assert (main["code"], main["currency"], main["credits_balance"]) == ("main", "EUR", "0.0")
    # The initial credits are a job after the response: granted at once afterwards.
    [grant] = listed(sb, f"/wallets/{main['lago_id']}/wallet_transactions")
    assert (grant["transaction_status"], grant["status"], grant["credit_amount"]) == (
        "granted", "settled", "10.0",
    )  # fmt: skip
    assert get(sb, f"/wallets/{main['lago_id']}").json()["wallet"]["credits_balance"] == "10.0"
    assert details(wallet(sb, code="main")) == {"code": ["value_already_exist"]}
    assert details(wallet(sb, external_customer_id="nobody", code="x")) == {
        "customer": ["customer_not_found"]
    }
    assert details(wallet(sb, code="bad", rate_amount="0", paid_credits=5, priority=99)) == {
        "rate_amount": ["value_is_out_of_range"],
        "paid_credits": ["invalid_paid_credits", "invalid_amount"],
        "priority": ["value_is_invalid"],
    }
    assert details(wallet(sb, code="usd", currency="USD")) == {
        "currency": ["currencies_does_not_match"]
    }
    assert details(wallet(sb, code="old", expiration_at="2001-01-01T00:00:00Z")) == {
        "expiration_at": ["invalid_date"]
    }
    for n in range(5):
        assert wallet(sb, code=f"w{n}").status_code == 200
    assert details(wallet(sb, code="seventh")) == {"customer": ["wallet_limit_reached"]}
    no_code = [wallet(sb, external_customer_id="c2", name="My Wallet") for _ in range(2)]
    assert no_code[0].status_code == 422  # c2 does not exist
    call(sb, "POST", "/customers", {"customer": {"external_id": "c2", "currency": "EUR"}})
    first, second = (wallet(sb, external_customer_id="c2", name="My Wallet") for _ in range(2))
    assert first.json()["wallet"]["code"] == "my_wallet"
    assert second.json()["wallet"]["code"].startswith("my_wallet_")  # a retry without code


def test_update(sb: Sandbox) -> None:
    main = wallet(sb, code="main", name="Main").json()["wallet"]
    other = wallet(sb, code="other").json()["wallet"]
    path = f"/wallets/{main['lago_id']}"
    updated = call(sb, "PUT", path, {"wallet": {"name": "New", "priority": 3, "rate_amount": "9",
                                                 "metadata": {"k": "v"}}})  # fmt: skip
    assert updated.status_code == 200, updated.text
    body = updated.json()["wallet"]
    assert (body["name"], body["priority"], body["rate_amount"], body["metadata"]) == (
        "New", 3, "1.0", {"k": "v"},
    )  # fmt: skip
    assert details(call(sb, "PUT", path, {"wallet": {"code": "other"}})) == {
        "code": ["value_already_exist"]
    }
    assert call(sb, "PUT", f"/wallets/{other['lago_id']}", {"wallet": {"code": "other"}}).ok
    unknown = "/wallets/00000000-0000-0000-0000-000000000000"
    missing = call(sb, "PUT", unknown, {"wallet": {"name": "x"}})
    assert (missing.status_code, missing.json()["code"]) == (404, "wallet_not_found")
    assert call(sb, "PUT", path, {"name": "no root"}).status_code == 400


def test_transactions_balance_and_metadata_filter(sb: Sandbox) -> None:
    main = wallet(sb, code="main", granted_credits="2").json()["wallet"]
    wid = main["lago_id"]  # voids are checked against the balance before the call
    made = top_up(sb, wallet_id=wid, paid_credits="5", granted_credits="2.50", voided_credits="1",
                  metadata=[{"key": "tl", "value": "a"}])  # fmt: skip
    assert made.status_code == 200, made.text
    rows = made.json()["wallet_transactions"]
    assert [(r["transaction_status"], r["status"], r["credit_amount"]) for r in rows] == [
        ("purchased", "pending", "5.0"), ("granted", "settled", "2.5"),
        ("voided", "settled", "1.0"),
    ]  # fmt: skip
    assert get(sb, f"/wallets/{wid}").json()["wallet"]["credits_balance"] == "3.5"  # paid pending
    assert top_up(sb, wallet_id=wid, granted_credits="0").json() == {"wallet_transactions": []}
    top_up(sb, wallet_id=wid, granted_credits="1", metadata=[{"key": "tl", "value": "b"}])
    path = f"/wallets/{wid}/wallet_transactions"
    assert len(listed(sb, path, **{"metadata[tl]": "a"})) == 3
    assert len(listed(sb, path, **{"metadata[tl]": "b"})) == 1
    assert listed(sb, path, **{"metadata[tl]": "c"}) == []
    assert len(listed(sb, path, **{"metadata[tl]": ""})) == 5  # blank: no filter
    assert len(listed(sb, path, metadata="a")) == 5  # not a hash: ignored
    bad = top_up(
        sb, wallet_id=wid, voided_credits="100", granted_credits=3, metadata={"k": "v"}, name=5
    )
    assert details(bad) == {
        "granted_credits": ["invalid_granted_credits", "invalid_amount"],
        "voided_credits": ["insufficient_credits"],
        "metadata": ["invalid_type"],
        "name": ["invalid_value"],
    }
    assert details(top_up(sb, wallet_id="nope", granted_credits="1")) == {
        "wallet_id": ["wallet_not_found"]
    }
    assert details(top_up(sb, wallet_id=wid, granted_credits="0.001")) == {
        "granted_credits": ["amount_rounds_to_zero"]
    }
    too_many = [{"key": f"k{i}", "value": "v"} for i in range(16)]
    too_many.append({"key": "k" * 21, "value": "v"})
    assert details(top_up(sb, wallet_id=wid, granted_credits="1", metadata=too_many)) == {
        "metadata": ["too_many_keys", "key_too_long"]
    }
    assert top_up(sb, wallet_id=wid, granted_credits="1", metadata={}).status_code == 200
