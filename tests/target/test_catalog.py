"""The catalog as code: `tap-lago-catalog | target-lago` applies a YAML catalog idempotently."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.lago_sandbox import Sandbox
from tests.lago_sandbox.catalog import entitlements_of, features_of
from tests.target.helpers import (
    cli_command,
    cli_env,
    dead_letters,
    record,
    run_target,
    schema,
    write_config,
)

PRICING = Path(__file__).with_name("pricing.yaml")
EMPTY = {"customers": 0, "events": 0, "catalog": False}
WRITES = {"POST", "PUT", "DELETE", "PATCH"}


@pytest.fixture(scope="module")
def org(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(EMPTY)


@pytest.fixture
def lago(org: Sandbox) -> Iterator[Sandbox]:
    """An empty organisation with a premium licence (features, commitments)."""
    org.set_faults([])
    org.reset(EMPTY)
    org.configure(premium=True)
    org.requests(clear=True)
    yield org
    org.set_faults([])


def everything(lago: Sandbox) -> dict[str, Any]:
    assert lago.state is not None
    store = lago.state.store
    return {**lago.dump(), "features": features_of(store), "entitlements": entitlements_of(store)}


def apply(tmp_path: Path, catalog: Path, config: dict[str, Any]) -> subprocess.CompletedProcess:
    """`tap-lago-catalog --config ... | target-lago --config ...`, both console scripts."""
    tap_config = tmp_path / "tap_config.json"
    tap_config.write_text(json.dumps({"path": str(catalog)}))
    script = Path(sys.executable).with_name("tap-lago-catalog")
    tap = subprocess.run(
        [str(script), "--config", str(tap_config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tap.returncode == 0, tap.stderr
    return subprocess.run(
        cli_command(write_config(tmp_path, config)),
        input=tap.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
        check=False,
    )


def summary(stderr: str) -> dict[str, dict[str, int]]:
    """The summary line of each stream, as counters."""
    out = {}
    for line in stderr.splitlines():
        if "summary stream=" in line:
            words = dict(w.split("=", 1) for w in line.split("summary ", 1)[1].split())
            out[words.pop("stream")] = {k: int(v) for k, v in words.items() if v.isdigit()}
    return out


def edited(tmp_path: Path, change: Any) -> Path:
    """A copy of the pricing file with `change(catalog)` applied."""
    catalog = yaml.safe_load(PRICING.read_text())
    change(catalog)
    path = tmp_path / "pricing.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def writes(lago: Sandbox) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in lago.requests(clear=True) if r["method"] in WRITES]


def plan_of(catalog: dict, code: str) -> dict:
    return next(p for p in catalog["plans"] if p["code"] == code)


def test_a_catalog_file_is_created_then_replayed_unchanged(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    first = apply(tmp_path, PRICING, config)
    assert first.returncode == 0, first.stderr[-3000:]
    counts = summary(first.stderr)
    created = {s: c["delivered"] for s, c in counts.items()}
    assert created == {
        "taxes": 2,
        "billable_metrics": 3,
        "features": 2,
        "add_ons": 2,
        "plans": 2,
        "coupons": 2,
    }
    org = everything(lago)
    business = next(p for p in org["plans"] if p["code"] == "business")
    assert [c["billable_metric_code"] for c in business["charges"]] == ["storage_gb", "seats"]
    assert business["charges"][1]["properties"] == {
        "amount": "12",
        "package_size": 1,
        "free_units": 3,
    }
    assert business["fixed_charges"][0]["add_on_code"] == "seat_pack"
    assert business["minimum_commitment"]["amount_cents"] == 300000
    assert business["usage_thresholds"][0]["amount_cents"] == 100000
    assert business["metadata"] == {"owner": "pricing-team"}
    team = next(p for p in org["plans"] if p["code"] == "team")
    assert team["charges"][0]["filters"][0]["values"] == {"region": ["eu"]}
    assert [t["code"] for t in team["taxes"]] == ["vat_fr"]
    coupon = next(c for c in org["coupons"] if c["code"] == "business_launch")
    assert coupon["plan_codes"] == ["business"] and coupon["percentage_rate"] == "15.0"
    values = {
        e["code"]: {p["code"]: p["value"] for p in e["privileges"]}
        for e in org["entitlements"]["business"]
    }
    assert values == {"users": {"max": 50}, "sso": {"provider": "okta"}}
    assert dead_letters(config["dead_letter_path"]) == []
    lago.requests(clear=True)

    again = apply(tmp_path, PRICING, config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(
        c["delivered"] == 0 and c["already_present"] == c["received"]
        for c in summary(again.stderr).values()
    )
    assert writes(lago) == []
    assert everything(lago) == org


def test_a_changed_price_updates_only_that_plan(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    assert apply(tmp_path, PRICING, config).returncode == 0
    before = everything(lago)
    lago.requests(clear=True)

    def reprice(catalog: dict) -> None:
        plan_of(catalog, "team")["charges"][1]["properties"]["amount"] = "0.12"

    result = apply(tmp_path, edited(tmp_path, reprice), config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(result.stderr)["plans"]["delivered"] == 1
    assert summary(result.stderr)["plans"]["already_present"] == 1
    assert writes(lago) == [("PUT", "/api/v1/plans/team")]
    after = everything(lago)
    assert {k: v for k, v in after.items() if k != "plans"} == {
        k: v for k, v in before.items() if k != "plans"
    }
    old = {p["code"]: p for p in before["plans"]}
    new = {p["code"]: p for p in after["plans"]}
    assert new["business"] == old["business"]
    assert [c["lago_id"] for c in new["team"]["charges"]] == [
        c["lago_id"] for c in old["team"]["charges"]
    ]
    assert new["team"]["charges"][1]["properties"] == {"amount": "0.12"}
    old["team"]["charges"][1]["properties"] = {"amount": "0.12"}
    assert new["team"] == old["team"]


def subscribe_to_business(lago: Sandbox) -> None:
    """Give plan `business` a subscription (Lago then keeps some of its fields)."""
    subscription = {"external_customer_id": "c1", "external_id": "s1", "plan_code": "business"}
    response = requests.post(
        f"{lago.url}/subscriptions",
        json={"subscription": subscription},
        headers={"Authorization": f"Bearer {lago.api_key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_a_change_lago_refuses_is_a_dead_letter_with_its_reason(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    assert apply(tmp_path, PRICING, config).returncode == 0
    subscribe_to_business(lago)

    def change(catalog: dict) -> None:
        plan_of(catalog, "business")["interval"] = "monthly"
        plan_of(catalog, "business")["name"] = "Business (2026)"
        metric = next(m for m in catalog["billable_metrics"] if m["code"] == "seats")
        metric["aggregation_type"] = "latest_agg"

    result = apply(tmp_path, edited(tmp_path, change), config)
    assert result.returncode == 1
    letters = {
        (d["stream"], d["record"]["code"]): d for d in dead_letters(config["dead_letter_path"])
    }
    assert set(letters) == {("plans", "business"), ("billable_metrics", "seats")}
    plan = letters[("plans", "business")]
    assert plan["error_code"] == "change_not_applied"
    assert plan["details"] == {"interval": ["not_applied"]}
    assert 'interval="yearly" (the record says "monthly")' in plan["message"]
    assert "a plan with subscriptions keeps its interval" in plan["message"]
    metric = letters[("billable_metrics", "seats")]
    assert metric["details"] == {"aggregation_type": ["not_applied"]}
    assert "a billable metric that a plan charges for keeps" in metric["message"]
    held = requests.get(
        f"{lago.url}/plans/business",
        headers={"Authorization": f"Bearer {lago.api_key}"},
        timeout=10,
    ).json()["plan"]
    assert (held["interval"], held["name"]) == ("yearly", "Business (2026)")
    assert "rejected" in result.stderr and "Traceback" not in result.stderr


def test_a_charge_model_change_on_a_plan_with_subscriptions_names_the_field_and_the_fix(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    assert apply(tmp_path, PRICING, config).returncode == 0
    subscribe_to_business(lago)

    def regraduate(catalog: dict) -> None:
        seats = next(c for c in plan_of(catalog, "business")["charges"]
                     if c["billable_metric_code"] == "seats")  # fmt: skip
        seats["charge_model"] = "graduated"
        seats["properties"] = {"graduated_ranges": [
            {"from_value": 0, "to_value": None, "flat_amount": "0", "per_unit_amount": "11"}
        ]}  # fmt: skip

    result = apply(tmp_path, edited(tmp_path, regraduate), config)
    assert result.returncode == 1
    [letter] = dead_letters(config["dead_letter_path"])
    assert (letter["http_status"], letter["error_code"]) == (422, "validation_errors")
    assert letter["details"]["amount"] == ["invalid_amount"]  # Lago's own reason, kept
    [field] = [f for f in letter["details"] if f.startswith("charges[")]
    assert letter["details"][field] == ["kept_while_plan_has_subscriptions"]
    assert f"{field} 'package' -> 'graduated'" in letter["message"]
    assert "create a plan with a new code" in letter["message"]


def test_deleting_needs_an_explicit_column(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    assert apply(tmp_path, PRICING, config).returncode == 0

    def prune(catalog: dict) -> None:
        catalog["coupons"] = [c for c in catalog["coupons"] if c["code"] != "welcome"]
        catalog["add_ons"][0]["deleted"] = True

    config = {**config, "catalog_deleted_column": "deleted"}
    pruned = edited(tmp_path, prune)
    for _ in range(2):  # the second time, the add-on is gone already
        result = apply(tmp_path, pruned, config)
        assert result.returncode == 0, result.stderr[-3000:]
    assert summary(result.stderr)["add_ons"]["already_present"] == 2
    org = lago.dump()
    assert [a["code"] for a in org["add_ons"]] == ["seat_pack"]
    assert {c["code"] for c in org["coupons"]} == {"welcome", "business_launch"}


def test_a_lost_answer_creates_once_and_unknown_references_are_named(
    lago: Sandbox, config: dict
) -> None:
    lago.set_faults(
        [{"fault": "lost_response", "method": "POST", "path": "/api/v1/taxes", "count": 1}]
    )
    props = {"code": {"type": "string"}}
    plan = {
        "code": "p",
        "name": "P",
        "interval": "monthly",
        "amount_cents": 100,
        "amount_currency": "EUR",
        "pay_in_advance": True,
    }
    run = run_target(
        config,
        [
            schema("taxes", props, ["code"]),
            record("taxes", {"code": "vat", "name": "VAT", "rate": 20}),
            schema("plans", props, ["code"]),
            record(
                "plans",
                {**plan, "charges": [{"billable_metric_code": "none", "charge_model": "standard"}]},
            ),
            record("plans", {**plan, "code": "q", "charges": [{"billable_metric_id": "x"}]}),
        ],
    )
    assert run.counts["taxes"]["delivered"] == 1
    assert len(lago.dump()["taxes"]) == 1
    letters = {d["record"]["code"]: d for d in dead_letters(config["dead_letter_path"])}
    assert letters["p"]["error_code"] == "billable_metric_not_found"
    assert "billable metric 'none', which Lago does not hold" in letters["p"]["message"]
    assert letters["q"]["details"] == {"charges[0].billable_metric_code": ["value_is_invalid"]}
    assert "ids differ between organisations" in letters["q"]["message"]
    assert lago.dump()["plans"] == []


def test_an_unreadable_catalog_file_stops_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("taxes: []\nprices: []\n")
    (tmp_path / "tap.json").write_text(json.dumps({"path": str(bad)}))
    script = Path(sys.executable).with_name("tap-lago-catalog")
    result = subprocess.run(
        [str(script), "--config", str(tmp_path / "tap.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"tap-lago-catalog: {bad}: unknown section(s) prices; the sections are taxes, "
        "billable_metrics, features, add_ons, plans, coupons"
    ]


def test_features_without_a_premium_licence_are_dead_letters(lago: Sandbox, config: dict) -> None:
    lago.configure(premium=False)
    run = run_target(
        config,
        [
            schema("features", {"code": {"type": "string"}}, ["code"]),
            record("features", {"code": "sso", "privileges": [{"code": "on"}]}),
        ],
    )
    [letter] = dead_letters(config["dead_letter_path"])
    assert (letter["http_status"], letter["error_code"]) == (403, "feature_unavailable")
    assert run.counts["features"]["rejected"] == 1
