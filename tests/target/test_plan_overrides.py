"""A subscription row with `plan_overrides`: applied once where licensed, else refused clearly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema


@pytest.fixture
def org(lago: Sandbox) -> Iterator[Sandbox]:
    yield lago
    lago.configure(premium=False)


def row(plan: dict[str, Any]) -> dict[str, Any]:
    """A warehouse row: the charge named by its metric (ids differ between organisations)."""
    metric = plan["charges"][0]["billable_metric_code"]
    overrides = {
        "amount_cents": 4321,
        "charges": [{"billable_metric_code": metric, "invoice_display_name": "Agreed usage"}],
    }
    return {
        "external_customer_id": "po-cust",
        "external_id": "po-1",
        "plan_code": plan["code"],
        "plan_overrides": json.dumps(overrides),  # a warehouse's JSON column
    }


def messages(plan: dict[str, Any]) -> list[dict]:
    props = {k: {"type": ["string", "null"]} for k in row(plan)}
    return [schema("subscriptions", props, ["external_id"]), record("subscriptions", row(plan))]


def summary(stderr: str) -> str:
    return next(x for x in stderr.splitlines() if "summary stream=subscriptions " in x)


def puts(lago: Sandbox) -> list[dict[str, Any]]:
    return [r for r in lago.requests() if r["method"] == "PUT"]


def test_plan_overrides_are_applied_once_where_licensed(
    org: Sandbox, config: dict, tmp_path: Path
) -> None:
    org.configure(premium=True)
    plan = next(p for p in org.dump()["plans"] if p["charges"])

    first = run_cli(tmp_path, config, messages(plan))
    assert first.returncode == 0, first.stderr[-2000:]
    assert " delivered=1 " in summary(first.stderr)
    [own] = org.dump()["overridden_plans"]
    assert own["external_subscription_id"] == "po-1"
    assert own["plan"]["amount_cents"] == 4321
    assert own["plan"]["charges"][0]["invoice_display_name"] == "Agreed usage"
    [sub] = [s for s in org.dump()["subscriptions"] if s["external_id"] == "po-1"]
    assert (sub["plan_code"], sub["plan_amount_cents"]) == (plan["code"], 4321)

    org.requests(clear=True)
    again = run_cli(tmp_path, config, messages(plan))
    assert again.returncode == 0, again.stderr[-2000:]
    assert " delivered=0 already_present=1 " in summary(again.stderr)
    assert puts(org) == []  # nothing sent again
    assert dead_letters(config["dead_letter_path"]) == []


def test_plan_overrides_without_a_licence_are_dead_lettered_with_the_fix(
    org: Sandbox, config: dict, tmp_path: Path
) -> None:
    plan = next(p for p in org.dump()["plans"] if p["charges"])

    run = run_cli(tmp_path, config, messages(plan))
    assert run.returncode == 1, run.stderr[-2000:]  # its only record was rejected
    [letter] = dead_letters(config["dead_letter_path"])
    assert letter["http_status"] == 403
    assert "premium licence" in letter["message"]
    assert "leave the plan_overrides column out" in letter["message"]
    assert "amount_cents" in letter["message"]  # the part that differs
    # Sent with the post that would create it: nothing is billed without its overrides.
    assert not [s for s in org.dump()["subscriptions"] if s["external_id"] == "po-1"]


def test_fixed_charge_and_usage_threshold_overrides_are_applied_once(
    org: Sandbox, config: dict, tmp_path: Path
) -> None:
    org.configure(premium=True)
    add_on = org.dump()["add_ons"][0]["code"]
    plan = {"name": "Seats", "code": "po-seats", "interval": "monthly", "amount_cents": 100,
            "amount_currency": "EUR", "fixed_charges": [{"add_on_code": add_on, "units": 1,
            "charge_model": "standard", "properties": {"amount": "10"}}]}  # fmt: skip
    auth = {"Authorization": f"Bearer {org.api_key}"}
    created = requests.post(f"{org.url}/plans", json={"plan": plan}, headers=auth, timeout=30)
    created.raise_for_status()
    overrides = {
        "fixed_charges": [{"add_on_code": add_on, "units": 4, "invoice_display_name": "Seats"}],
        "usage_thresholds": [{"amount_cents": 9000, "threshold_display_name": "Alert"}],
    }
    rec = {"external_customer_id": "po-cust", "external_id": "po-2", "plan_code": "po-seats",
           "plan_overrides": json.dumps(overrides)}  # fmt: skip
    props = {k: {"type": ["string", "null"]} for k in rec}
    sent = [schema("subscriptions", props, ["external_id"]), record("subscriptions", rec)]

    first = run_cli(tmp_path, config, sent)
    assert first.returncode == 0, first.stderr[-2000:]
    [own] = org.dump()["overridden_plans"]
    [fixed] = own["plan"]["fixed_charges"]
    assert (fixed["units"], fixed["invoice_display_name"]) == (4, "Seats")
    assert [t["amount_cents"] for t in own["plan"]["usage_thresholds"]] == [9000]

    org.requests(clear=True)
    again = run_cli(tmp_path, config, sent)
    assert " delivered=0 already_present=1 " in summary(again.stderr)
    assert puts(org) == []
    assert dead_letters(config["dead_letter_path"]) == []
