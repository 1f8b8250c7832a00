"""one_off_invoices through the console script: opt-in only, tagged with the record's key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema
from tests.target.test_subscriptions_lifecycle import FAULTS, summary

OPT_IN = {"allow_non_idempotent_one_off_invoices": True}
PROPS = {"order_id": {"type": "string"}, "external_customer_id": {"type": "string"}}


def messages(customers: list[str], rows: list[dict[str, Any]]) -> list[dict]:
    return [
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        schema("one_off_invoices", PROPS, ["order_id"]),
        *(record("one_off_invoices", r) for r in rows),
        *(record("customers", {"external_id": c, "currency": "EUR"}) for c in customers),
    ]


def rows_for(customers: list[str], add_on: str) -> list[dict[str, Any]]:
    return [
        {"order_id": f"o-{i}", "external_customer_id": c, "add_on_code": add_on, "units": i % 3 + 1}
        for i, c in enumerate(customers)
    ]


def one_off(lago: Sandbox) -> list[dict]:
    return [i for i in lago.dump()["invoices"] if i["invoice_type"] == "one_off"]


def test_refused_at_its_schema_without_the_opt_in(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    proc = run_cli(tmp_path, config, messages([], [{"order_id": "o", "external_customer_id": "c"}]))
    assert proc.returncode == 1
    assert "allow_non_idempotent_one_off_invoices" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert one_off(lago) == []


def test_billed_once_tagged_and_replays_change_nothing(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    add_on = lago.dump()["add_ons"][0]
    customers = [f"c{i}" for i in range(15)]
    rows = rows_for(customers, add_on["code"])
    rows.append(
        {"order_id": "o-multi", "external_customer_id": "c0",
         "fees": [{"add_on_code": add_on["code"], "units": "2.5", "unit_amount_cents": 100},
                  {"add_on_code": add_on["code"], "description": "Second"}]}
    )  # fmt: skip
    proc = run_cli(tmp_path, {**config, **OPT_IN}, messages(customers, rows))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc, "one_off_invoices")["delivered"] == 16
    invoices = one_off(lago)
    assert len(invoices) == 16
    keys = [m["value"] for i in invoices for m in i["metadata"] if m["key"] == "target_lago_key"]
    assert len(set(keys)) == 16
    multi = [f for f in lago.dump()["fees"] if f["item"]["code"] == add_on["code"]]
    assert len(multi) == 17
    before = lago.dump()

    lago.requests(clear=True)
    proc = run_cli(tmp_path, {**config, **OPT_IN}, messages(customers, rows))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc, "one_off_invoices")["already_present"] == 16
    assert not [
        r for r in lago.requests() if r["path"].endswith("/invoices") and r["method"] == "POST"
    ]
    assert lago.dump() == before


def test_faults_over_three_replays_bill_each_record_once(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    add_on = lago.dump()["add_ons"][0]["code"]
    customers = [f"f{i}" for i in range(40)]
    rows = rows_for(customers, add_on)
    lago.set_faults(FAULTS)
    for _ in range(3):
        proc = run_cli(tmp_path, {**config, **OPT_IN}, messages(customers, rows))
        assert proc.returncode == 0, proc.stderr
    lago.set_faults([])
    per_customer = Counter(i["customer"]["external_id"] for i in one_off(lago))
    assert per_customer == Counter(customers)
    lost = [r for r in lago.requests() if r["fault"] == "lost_response" and r["method"] == "POST"]
    assert any(r["path"].endswith("/invoices") for r in lost)  # a lost POST was found again


def test_bad_rows_are_dead_lettered_with_lagos_reason(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    add_on = lago.dump()["add_ons"][0]["code"]
    rows = [
        {"order_id": "b1", "external_customer_id": "b", "add_on_code": "no_such_add_on"},
        {"order_id": "b2", "external_customer_id": "nobody", "add_on_code": add_on},
        {"order_id": "b3", "external_customer_id": "b", "add_on_code": add_on, "currency": "USD"},
        {"order_id": "b4", "external_customer_id": "b", "add_on_code": add_on, "units": "lots"},
        {"order_id": "b5", "external_customer_id": "b", "add_on_code": add_on},
    ]
    proc = run_cli(tmp_path, {**config, **OPT_IN}, messages(["b"], rows))
    assert proc.returncode == 1
    letters = {
        (x["record"]["order_id"], x["http_status"], x["error_code"])
        for x in dead_letters(config["dead_letter_path"])
    }
    assert letters == {
        ("b1", 404, "add_on_not_found"),
        ("b2", 404, "customer_not_found"),
        ("b3", 422, "validation_errors"),
        ("b4", None, "invalid_record"),
    }
    assert len(one_off(lago)) == 1


def test_a_dry_run_sends_nothing(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    rows = [{"order_id": "d", "external_customer_id": "d", "add_on_code": "setup_fee"}]
    proc = run_cli(tmp_path, {**config, **OPT_IN, "dry_run": True}, messages(["d"], rows))
    assert proc.returncode == 0, proc.stderr
    assert "would POST /invoices" in proc.stderr
    assert lago.requests() == []
