"""POST /customers: create or update by external_id (LAGO_API_BEHAVIOUR.md section 5)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

SMALL = {"seed": 5, "customers": 4, "events": 20}


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(SMALL)


def upsert(sb: Sandbox, customer: Any) -> requests.Response:
    return requests.post(
        sb.url + "/customers",
        json={"customer": customer},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


def fetch(sb: Sandbox, external_id: str) -> dict:
    response = requests.get(
        f"{sb.url}/customers/{external_id}",
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    return response.json()["customer"]


def errors(details: dict) -> dict:
    return {
        "status": 422,
        "error": "Unprocessable Entity",
        "code": "validation_errors",
        "error_details": details,
    }


def test_create_returns_200_and_a_complete_customer(sb: Sandbox) -> None:
    response = upsert(
        sb,
        {
            "external_id": "new-1",
            "name": "Ada",
            "email": "ada@example.com",
            "country": "fr",
            "currency": "EUR",
            "billing_configuration": {"document_locale": "fr"},
            "shipping_address": {"city": "Paris", "country": "fr"},
            "metadata": [{"key": "tier", "value": "gold", "display_in_invoice": True}],
        },
    )
    assert response.status_code == 200
    customer = response.json()["customer"]
    assert customer["external_id"] == "new-1"
    assert customer["country"] == "FR"
    assert customer["shipping_address"]["country"] == "FR"
    assert customer["billing_configuration"]["document_locale"] == "fr"
    assert [(m["key"], m["value"], m["display_in_invoice"]) for m in customer["metadata"]] == [
        ("tier", "gold", True)
    ]
    assert customer["lago_id"] and customer["created_at"] == customer["updated_at"]
    assert fetch(sb, "new-1") == customer
    listed = requests.get(
        sb.url + "/customers", headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=30
    ).json()["customers"]
    assert listed[0] == customer  # newest first
    assert customer["sequential_id"] == max(c["sequential_id"] for c in listed)


def test_update_changes_only_present_keys_and_null_clears(sb: Sandbox) -> None:
    original = upsert(
        sb, {"external_id": "u-1", "name": "Old", "city": "Lyon", "phone": "123"}
    ).json()["customer"]
    time.sleep(1.1)  # updated_at has second precision
    response = upsert(sb, {"external_id": "u-1", "name": "New", "phone": None})
    assert response.status_code == 200
    updated = response.json()["customer"]
    assert updated["lago_id"] == original["lago_id"]
    assert updated["name"] == "New"
    assert updated["phone"] is None
    assert updated["city"] == "Lyon"
    assert updated["created_at"] == original["created_at"]
    assert updated["updated_at"] > original["updated_at"]


def test_no_op_update_keeps_updated_at(sb: Sandbox) -> None:
    original = upsert(sb, {"external_id": "same", "name": "Same"}).json()["customer"]
    time.sleep(1.1)
    again = upsert(sb, {"external_id": "same", "name": "Same"}).json()["customer"]
    assert again == original


def test_metadata_replaces_the_set_and_matches_by_id(sb: Sandbox) -> None:
    created = upsert(
        sb,
        {
            "external_id": "m-1",
            "metadata": [
                {"key": "a", "value": "1", "display_in_invoice": False},
                {"key": "b", "value": "2", "display_in_invoice": False},
            ],
        },
    ).json()["customer"]
    keep = next(m for m in created["metadata"] if m["key"] == "a")
    updated = upsert(
        sb,
        {
            "external_id": "m-1",
            "metadata": [
                {"id": keep["lago_id"], "key": "a", "value": "10", "display_in_invoice": True},
                {"key": "c", "value": "3", "display_in_invoice": False},
            ],
        },
    ).json()["customer"]
    by_key = {m["key"]: m for m in updated["metadata"]}
    assert sorted(by_key) == ["a", "c"]
    assert by_key["a"]["lago_id"] == keep["lago_id"]
    assert by_key["a"]["value"] == "10"
    assert by_key["a"]["display_in_invoice"] is True


def test_more_than_five_metadata_is_invalid_count(sb: Sandbox) -> None:
    metadata = [{"key": f"k{i}", "value": "v", "display_in_invoice": False} for i in range(6)]
    response = upsert(sb, {"external_id": "m-6", "metadata": metadata})
    assert response.status_code == 422
    assert response.json() == errors({"metadata": ["invalid_count"]})


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"name": "x"}, {"external_id": ["value_is_mandatory"]}),
        ({"external_id": ""}, {"external_id": ["value_is_mandatory"]}),
        ({"external_id": "v", "currency": "EURO"}, {"currency": ["value_is_invalid"]}),
        ({"external_id": "v", "country": "XX"}, {"country": ["not_a_valid_country_code"]}),
        ({"external_id": "v", "email": "not-an-email"}, {"email": ["invalid_email_format"]}),
        ({"external_id": "v", "name": "n" * 256}, {"name": ["value_is_too_long"]}),
        (
            {"external_id": "v", "net_payment_term": -1},
            {"net_payment_term": ["value_is_out_of_range"]},
        ),
        (
            {"external_id": "v", "finalize_zero_amount_invoice": "never"},
            {"finalize_zero_amount_invoice": ["invalid_value"]},
        ),
        (
            {"external_id": "v", "country": "XX", "email": "bad"},
            {"country": ["not_a_valid_country_code"], "email": ["invalid_email_format"]},
        ),
    ],
)
def test_validation_codes(sb: Sandbox, fields: dict, details: dict) -> None:
    response = upsert(sb, fields)
    assert response.status_code == 422
    assert response.json() == errors(details)
    assert all(c["external_id"] != "v" for c in sb.dump()["customers"])


def test_several_emails_separated_by_commas_are_valid(sb: Sandbox) -> None:
    response = upsert(sb, {"external_id": "e", "email": "a@example.com,b@example.org"})
    assert response.status_code == 200


def test_missing_customer_root_is_400(sb: Sandbox) -> None:
    response = requests.post(
        sb.url + "/customers",
        json={"external_id": "x"},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json() == {
        "status": 400,
        "error": "BadRequest: param is missing or the value is empty or invalid: customer",
    }


def test_currency_change_refused_once_the_customer_is_in_use(sb: Sandbox) -> None:
    dump = sb.dump()
    in_use = next(
        c
        for c in dump["customers"]
        if c["currency"]
        and any(s["external_customer_id"] == c["external_id"] for s in dump["subscriptions"])
    )
    other = "USD" if in_use["currency"] != "USD" else "EUR"
    response = upsert(sb, {"external_id": in_use["external_id"], "currency": other})
    assert response.status_code == 422
    assert response.json() == errors({"currency": ["currencies_does_not_match"]})
    fresh = upsert(sb, {"external_id": "fresh", "currency": "EUR"}).json()["customer"]
    changed = upsert(sb, {"external_id": "fresh", "currency": "USD"})
    assert changed.status_code == 200
    assert changed.json()["customer"]["currency"] == "USD"
    assert fresh["currency"] == "EUR"


def test_unknown_tax_code_is_404(sb: Sandbox) -> None:
    response = upsert(sb, {"external_id": "t", "tax_codes": ["no_such_tax"]})
    assert response.status_code == 404
    assert response.json()["code"] == "tax_not_found"
    tax = sb.dump()["taxes"][0]
    ok = upsert(sb, {"external_id": "t", "tax_codes": [tax["code"]]})
    assert ok.json()["customer"]["taxes"] == [tax]
