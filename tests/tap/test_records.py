"""What the tap emits for values Lago can send: null keys, decimal strings, new fields,
deleted objects (issue 11, points 4, 6, 7 and 10), against the sandbox."""

from __future__ import annotations

import decimal
import json
import logging
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from tap_lago.parsing import parse_json
from tap_lago.records import UNKNOWN_FIELDS, RecordShaper, to_decimal

from tests.openapi_spec import FORMAT_CHECKER
from tests.tap.conftest import SyncResult, run_tap, tap_config


def _invalid_records(result: SyncResult) -> list[str]:
    """Each record that fails the SCHEMA its stream emitted (formats checked too)."""
    validators = {
        name: Draft202012Validator(message["schema"], format_checker=FORMAT_CHECKER)
        for name, message in result.schemas.items()
    }
    problems = []
    for message in result.messages:
        if message["type"] == "RECORD":
            error = next(validators[message["stream"]].iter_errors(message["record"]), None)
            if error is not None:
                problems.append(f"{message['stream']}: {error.message[:200]}")
    return problems


def _lago(sandbox: Any, method: str, path: str) -> requests.Response:
    return requests.request(
        method,
        f"{sandbox.url}{path}",
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=30,
    )


def test_events_without_subscription_have_a_non_null_key_and_validate(
    sandbox_factory: Any,
) -> None:
    lago = sandbox_factory({"customers": 3, "events": 120, "unattached_events": 4})
    result = run_tap(tap_config(lago))

    assert _invalid_records(result) == []
    events = result.records["events"]
    unattached = [e for e in events if e["transaction_id"].startswith("unattached_")]
    assert len(unattached) == 4
    assert {e["external_subscription_id"] for e in unattached} == {""}
    assert result.schemas["events"]["key_properties"] == [
        "transaction_id",
        "external_subscription_id",
    ]
    assert all(e["external_subscription_id"] for e in events if e not in unattached)


def test_every_record_of_every_stream_validates_against_its_schema(
    sandbox_factory: Any,
) -> None:
    lago = sandbox_factory({"customers": 6, "events": 300, "unattached_events": 2})
    result = run_tap(tap_config(lago))
    assert set(result.records) >= {"customers", "fees", "wallets", "events", "invoices"}
    assert _invalid_records(result) == []


def test_decimal_strings_are_exact_json_numbers(sandbox_factory: Any) -> None:
    lago = sandbox_factory({"customers": 3, "events": 0})
    fee = lago.dump()["fees"][0]
    digits = "123456789012345678901234.123456789012345"
    lago.upsert("fees", {"lago_id": fee["lago_id"], "precise_amount": digits, "units": "7.25"})

    result = run_tap(tap_config(lago), streams={"fees", "wallets", "coupons"})
    lines = [
        json.loads(line, parse_float=decimal.Decimal)
        for line in result.output.splitlines()
        if line.strip()
    ]
    schemas = {m["stream"]: m["schema"] for m in lines if m["type"] == "SCHEMA"}
    for stream, field in (
        ("fees", "precise_amount"),
        ("fees", "units"),
        ("wallets", "credits_balance"),
        ("coupons", "percentage_rate"),
    ):
        assert schemas[stream]["properties"][field]["type"] == ["number", "null"], field
    fees = {
        m["record"]["lago_id"]: m["record"]
        for m in lines
        if m["type"] == "RECORD" and m["stream"] == "fees"
    }
    assert fees[fee["lago_id"]]["precise_amount"] == decimal.Decimal(digits)
    assert str(fees[fee["lago_id"]]["precise_amount"]) == digits
    assert fees[fee["lago_id"]]["units"] == decimal.Decimal("7.25")
    assert f'"precise_amount":{digits}' in result.output
    wallets = [m["record"] for m in lines if m["type"] == "RECORD" and m["stream"] == "wallets"]
    assert wallets and all(isinstance(w["credits_balance"], decimal.Decimal) for w in wallets)
    percentages = [
        m["record"]["percentage_rate"]
        for m in lines
        if m["type"] == "RECORD" and m["stream"] == "coupons"
    ]
    assert any(isinstance(p, decimal.Decimal) for p in percentages)


def test_a_non_numeric_decimal_string_becomes_null_and_is_kept(
    sandbox_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lago = sandbox_factory({"customers": 3, "events": 0})
    fees = lago.dump()["fees"][:2]
    for fee in fees:
        lago.upsert("fees", {"lago_id": fee["lago_id"], "precise_unit_amount": "n/a"})

    with caplog.at_level(logging.WARNING):
        result = run_tap(tap_config(lago), streams={"fees"})

    emitted = {r["lago_id"]: r for r in result.records["fees"]}
    for fee in fees:
        record = emitted[fee["lago_id"]]
        assert record["precise_unit_amount"] is None
        assert record[UNKNOWN_FIELDS] == {"precise_unit_amount": "n/a"}
    warnings = [r.getMessage() for r in caplog.records if "precise_unit_amount" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert _invalid_records(result) == []


def test_fields_the_schema_lacks_are_kept_and_logged_once(
    sandbox_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lago = sandbox_factory({"customers": 10, "events": 0})
    wallets = lago.dump()["wallets"][:2]
    assert len(wallets) == 2
    for number, wallet in enumerate(wallets):
        lago.upsert(
            "wallets",
            {"lago_id": wallet["lago_id"], "carbon_offset": {"kg": number}, "tier": "gold"},
        )

    with caplog.at_level(logging.WARNING):
        result = run_tap(tap_config(lago), streams={"wallets"})

    emitted = {r["lago_id"]: r for r in result.records["wallets"]}
    for number, wallet in enumerate(wallets):
        record = emitted[wallet["lago_id"]]
        assert record[UNKNOWN_FIELDS] == {"carbon_offset": {"kg": number}, "tier": "gold"}
        assert "carbon_offset" not in record
    # `balance`: required by the spec but never defined there; sent by the server.
    assert all(r["balance"] is not None for r in emitted.values())
    assert result.schemas["wallets"]["schema"]["properties"][UNKNOWN_FIELDS]["type"] == [
        "object",
        "null",
    ]
    logged = [r.getMessage() for r in caplog.records if "carbon_offset" in r.getMessage()]
    assert len(logged) == 1, logged
    assert "tier" in logged[0]
    assert "not found in catalog schema" not in caplog.text
    assert _invalid_records(result) == []


def test_full_table_streams_announce_versions_and_deleted_objects_leave(
    sandbox_factory: Any,
) -> None:
    lago = sandbox_factory({"customers": 4, "events": 0})
    org = lago.dump()
    first = run_tap(tap_config(lago))
    versioned = {m["stream"] for m in first.messages if m["type"] == "ACTIVATE_VERSION"}
    assert {"customers", "plans", "coupons", "add_ons", "subscriptions", "wallets"} <= versioned
    assert not versioned & {"events", "fees", "invoices", "credit_notes"}
    first_version = next(
        m["version"]
        for m in first.messages
        if m["type"] == "ACTIVATE_VERSION" and m["stream"] == "customers"
    )
    assert all(
        m.get("version") == first_version
        for m in first.messages
        if m["type"] == "RECORD" and m["stream"] == "customers"
    )

    customer = org["customers"][0]
    deleted = {
        "customers": ("/customers/" + customer["external_id"], customer["lago_id"]),
        "plans": ("/plans/" + org["plans"][0]["code"], org["plans"][0]["lago_id"]),
        "coupons": ("/coupons/" + org["coupons"][0]["code"], org["coupons"][0]["lago_id"]),
        "add_ons": ("/add_ons/" + org["add_ons"][0]["code"], org["add_ons"][0]["lago_id"]),
    }
    for path, _ in deleted.values():
        assert _lago(lago, "DELETE", path).status_code == 200

    second = run_tap(tap_config(lago), state=first.last_state)
    for stream, (_, lago_id) in deleted.items():
        before = {r["lago_id"] for r in first.records[stream]}
        after = {r["lago_id"] for r in second.records[stream]}
        assert lago_id in before
        assert after == before - {lago_id}, stream
        assert any(
            m["type"] == "ACTIVATE_VERSION" and m["stream"] == stream for m in second.messages
        )


@pytest.mark.parametrize(
    ("text", "written"),
    [("12.3400", "12.3400"), ("-3.0", "-3.0"), ("1e-7", "1E-7"), ("0", "0"), ("100", "100")],
)
def test_to_decimal_keeps_every_digit(text: str, written: str) -> None:
    value = to_decimal(text)
    assert value is not None and str(value) == written


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-inf", "1,5", "", " 1", "0x10", "1_000"])
def test_to_decimal_refuses_what_is_not_a_finite_decimal(text: str) -> None:
    assert to_decimal(text) is None


def test_a_shaper_keeps_odd_values_aside_and_never_emits_a_null_key() -> None:
    schema = {
        "properties": {
            "id": {"type": "string"},
            "sub": {"type": "string"},
            "amount": {"type": ["number", "null"]},
            "count": {"type": ["integer", "null"]},
            UNKNOWN_FIELDS: {"type": ["object", "null"]},
        },
        "required": ["id", "sub"],
    }
    shaper = RecordShaper("things", schema, logging.getLogger("test"), {"sub": ""})
    assert shaper.shape({"id": "a", "sub": None, "amount": True, "count": 3, "new": 1}) == {
        "id": "a",
        "sub": "",
        "amount": None,
        "count": 3,
        UNKNOWN_FIELDS: {"new": 1, "amount": True},
    }
    assert shaper.shape({"id": "b", "sub": "s", "amount": 2.5}) == {
        "id": "b",
        "sub": "s",
        "amount": 2.5,
    }
    assert shaper.shape({"id": None, "sub": "s"}) is None
    assert shaper.skipped == 1


def test_new_fields_in_nested_objects_stay_in_place_and_are_logged_once(
    sandbox_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lago = sandbox_factory({"customers": 3, "events": 0})
    customers = lago.dump()["customers"]
    for customer in customers:
        config = {**customer["billing_configuration"], "dunning_profile": "gentle"}
        lago.upsert("customers", {"lago_id": customer["lago_id"], "billing_configuration": config})

    with caplog.at_level(logging.WARNING):
        result = run_tap(tap_config(lago), streams={"customers"})

    for record in result.records["customers"]:
        assert record["billing_configuration"]["dunning_profile"] == "gentle"
        assert UNKNOWN_FIELDS not in record
    logged = [m for m in caplog.messages if "billing_configuration.dunning_profile" in m]
    assert len(logged) == 1, logged
    assert _invalid_records(result) == []


def test_keys_of_free_form_maps_are_not_new_fields() -> None:
    schema = {
        "properties": {
            "properties": {
                "type": ["object", "null"],
                "properties": {"operation_type": {"type": ["string", "null"]}},
                "additionalProperties": {"type": ["string", "number"]},
            },
        },
        "required": [],
    }
    logger = logging.getLogger("test")
    shaper = RecordShaper("events", schema, logger)
    assert shaper.shape({"properties": {"region": "eu", "gb": 1.5}}) is not None
    assert shaper.nested == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n": 0.1, "m": -1234.5678901234}', {"n": 0.1, "m": -1234.5678901234}),
        (b'{"n": 1234567890.123456789}', {"n": decimal.Decimal("1234567890.123456789")}),
        (b'{"n": 1e-7, "m": 2.5E3}', {"n": decimal.Decimal("1e-7"), "m": decimal.Decimal("2.5E3")}),
        (b'{"n": NaN}', None),
    ],
)
def test_response_numbers_keep_every_digit(body: bytes, expected: dict[str, Any] | None) -> None:
    """Integers of any size stay exact, fractions are floats only where a float holds them
    exactly, and a body msgspec refuses (NaN) is read as the SDK would."""
    parsed = parse_json(body)
    if expected is None:
        assert parsed["n"] != parsed["n"]  # NaN, read by the standard library
        return
    assert parsed == expected
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]
