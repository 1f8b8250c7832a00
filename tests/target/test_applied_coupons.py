"""applied_coupons through the console script: once per customer and coupon code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema
from tests.target.test_subscriptions_lifecycle import FAULTS, summary

PROPS = {"external_customer_id": {"type": "string"}, "coupon_code": {"type": "string"}}
KEYS = ["external_customer_id", "coupon_code"]


def messages(customers: list[str], rows: list[dict[str, Any]]) -> list[dict]:
    return [
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        schema("applied_coupons", PROPS, KEYS),
        *(record("applied_coupons", r) for r in rows),  # received first, applied after
        *(record("customers", {"external_id": c, "currency": "EUR"}) for c in customers),
    ]


def applications(lago: Sandbox) -> list[tuple[str, str]]:
    return sorted(
        (a["external_customer_id"], a["coupon_code"]) for a in lago.dump()["applied_coupons"]
    )


def test_applied_once_and_replays_change_nothing(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    lago.upsert("coupons", {"code": "once_only", "reusable": False})
    customers = [f"c{i}" for i in range(20)]
    rows = [{"external_customer_id": c, "coupon_code": "welcome_10"} for c in customers]
    rows += [{"external_customer_id": c, "coupon_code": "once_only"} for c in customers[:10]]
    proc = run_cli(tmp_path, config, messages(customers, rows))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc, "applied_coupons")["delivered"] == 30
    expected = sorted((r["external_customer_id"], r["coupon_code"]) for r in rows)
    assert applications(lago) == expected
    before = lago.dump()

    # A used-up coupon (terminated application) is still this record's application.
    used = next(a for a in before["applied_coupons"] if a["coupon_code"] == "welcome_10")
    lago.upsert("applied_coupons", {"lago_id": used["lago_id"], "status": "terminated"})
    before = lago.dump()
    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, messages(customers, rows))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc, "applied_coupons")["already_present"] == 30
    assert not [
        r
        for r in lago.requests()
        if r["path"].endswith("/applied_coupons") and r["method"] == "POST"
    ]
    assert lago.dump() == before


def test_faults_over_three_replays_apply_each_coupon_once(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    customers = [f"f{i}" for i in range(30)]
    rows = [{"external_customer_id": c, "coupon_code": "welcome_10"} for c in customers]
    rows += [{"external_customer_id": c, "coupon_code": "loyalty_5"} for c in customers]
    lago.set_faults(FAULTS)
    for _ in range(3):
        proc = run_cli(tmp_path, config, messages(customers, rows))
        assert proc.returncode == 0, proc.stderr
    lago.set_faults([])
    assert applications(lago) == sorted((r["external_customer_id"], r["coupon_code"]) for r in rows)
    assert any(r["fault"] for r in lago.requests())


def test_bad_rows_are_dead_lettered_with_lagos_reason(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    lago.upsert(
        "coupons",
        [
            {"code": "lim_a", "limited_plans": True, "plan_codes": [plan["code"]]},
            {"code": "lim_b", "limited_plans": True, "plan_codes": [plan["code"]]},
        ],
    )
    rows = [
        {"external_customer_id": "b1", "coupon_code": "lim_a"},
        {"external_customer_id": "b1", "coupon_code": "lim_b"},  # overlaps lim_a
        {"external_customer_id": "b1", "coupon_code": "no_such_coupon"},
        {"external_customer_id": "nobody", "coupon_code": "welcome_10"},
        {"external_customer_id": "b1", "coupon_code": ""},
    ]
    messages_ = messages(["b1"], [])[:3] + [record("applied_coupons", r) for r in rows]
    proc = run_cli(tmp_path, config, messages_)
    assert proc.returncode == 1
    letters = {
        (x["record"]["coupon_code"], x["http_status"], x["error_code"])
        for x in dead_letters(config["dead_letter_path"])
    }
    assert letters == {
        ("lim_b", 405, "plan_overlapping"),
        ("no_such_coupon", 404, "coupon_not_found"),
        ("welcome_10", 404, "customer_not_found"),
        ("", None, "invalid_record"),
    }
    assert applications(lago) == [("b1", "lim_a")]


def test_a_dry_run_sends_nothing(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    rows = [{"external_customer_id": "d1", "coupon_code": "welcome_10"}]
    proc = run_cli(tmp_path, {**config, "dry_run": True}, messages(["d1"], rows))
    assert proc.returncode == 0, proc.stderr
    assert "would POST /applied_coupons" in proc.stderr
    assert lago.requests() == []
