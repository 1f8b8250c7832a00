"""Warehouse rows that change over three runs drive every write action through Meltano.

tap-postgres reads the tables; target-lago (stream maps and actions from the environment)
makes Lago hold what the rows say: a subscription created, its plan changed, then ended;
a wallet topped up twice; a coupon applied; a customer deleted. Each run, replayed,
changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg import PostgresServer
from tests.pipelines.harness import Meltano

pytestmark = pytest.mark.usefixtures("meltano_installed")

TABLES = [
    "create schema billing",
    "create table billing.customers (customer_ref text primary key, company text,"
    " deleted boolean not null default false, updated_at timestamptz not null default now())",
    "create table billing.subscriptions (subscription_ref text primary key, customer_ref text,"
    " plan text, status text, updated_at timestamptz not null default now())",
    "create table billing.wallets (code text primary key, customer_ref text, name text,"
    " rate_amount text)",
    "create table billing.wallet_topups (id integer primary key, customer_ref text,"
    " wallet_code text, granted_credits text)",
    "create table billing.coupon_applications (id integer primary key, customer_ref text,"
    " coupon_code text)",
]
STREAM_MAPS: dict[str, dict[str, Any]] = {
    "billing-customers": {
        "external_id": "customer_ref", "name": "company", "currency": "'EUR'",
        "customer_ref": "__NULL__", "company": "__NULL__", "updated_at": "__NULL__",
        "__key_properties__": ["external_id"],
    },
    "billing-subscriptions": {
        "external_id": "subscription_ref", "external_customer_id": "customer_ref",
        "plan_code": "plan", "subscription_ref": "__NULL__", "customer_ref": "__NULL__",
        "plan": "__NULL__", "updated_at": "__NULL__", "__key_properties__": ["external_id"],
    },
    "billing-wallets": {
        "external_customer_id": "customer_ref", "currency": "'EUR'", "customer_ref": "__NULL__",
    },
    "billing-wallet_topups": {
        "external_customer_id": "customer_ref", "customer_ref": "__NULL__",
    },
    "billing-coupon_applications": {
        "external_customer_id": "customer_ref", "customer_ref": "__NULL__",
    },
}  # fmt: skip
STREAM_ACTIONS = {
    "billing-customers": "customers",
    "billing-subscriptions": "subscriptions",
    "billing-wallets": "wallets",
    "billing-wallet_topups": "wallet_transactions",
    "billing-coupon_applications": "applied_coupons",
    "billing-usage": "events",
}
WATCHED = ("customers", "subscriptions", "wallets", "wallet_transactions", "applied_coupons")


def sql(pg: PostgresServer, *statements: str) -> None:
    with psycopg.connect(pg.url) as conn:
        for statement in statements:
            conn.execute(statement)


def state_of(lago: Any) -> dict[str, list[dict]]:
    dump = lago.dump()
    return {name: dump[name] for name in WATCHED}


def run_twice(meltano: Meltano, lago: Any) -> dict[str, list[dict]]:
    """One run, then the same run again: the second changes nothing in Lago."""
    meltano.run("tap-postgres", "target-lago")
    after = state_of(lago)
    meltano.run("tap-postgres", "target-lago")
    assert state_of(lago) == after, "a replayed run changed Lago"
    return after


def test_three_runs_of_changing_rows_leave_lago_as_the_rows_say(
    sandbox_factory: Any, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})
    sql(warehouse, *TABLES)
    sql(
        warehouse,
        "insert into billing.customers (customer_ref, company) values"
        " ('c1', 'One'), ('c2', 'Two')",
        "insert into billing.subscriptions (subscription_ref, customer_ref, plan, status)"
        " values ('s1', 'c1', 'starter', 'active')",
        "insert into billing.wallets values ('main', 'c1', 'Main wallet', '1')",
        "insert into billing.wallet_topups values (1, 'c1', 'main', '10')",
        "insert into billing.coupon_applications values (1, 'c1', 'loyalty_5')",
    )
    meltano = Meltano(
        workdir,
        destination=lago,
        warehouse=warehouse,
        extra_env={
            "TARGET_LAGO_STREAM_MAPS": json.dumps(STREAM_MAPS),
            "TARGET_LAGO_STREAM_ACTIONS": json.dumps(STREAM_ACTIONS),
            "TARGET_LAGO_CUSTOMER_DELETED_COLUMN": "deleted",
        },
    )

    first = run_twice(meltano, lago)
    assert sorted(c["external_id"] for c in first["customers"]) == ["c1", "c2"]
    assert [(s["plan_code"], s["status"]) for s in first["subscriptions"]] == [
        ("starter", "active")
    ]
    [wallet] = first["wallets"]
    assert (wallet["code"], float(wallet["credits_balance"])) == ("main", 10.0)
    assert [a["coupon_code"] for a in first["applied_coupons"]] == ["loyalty_5"]

    sql(
        warehouse,
        "update billing.subscriptions set plan = 'growth', updated_at = now()"
        " where subscription_ref = 's1'",
        "insert into billing.wallet_topups values (2, 'c1', 'main', '5')",
    )
    second = run_twice(meltano, lago)
    plans = {(s["plan_code"], s["status"]) for s in second["subscriptions"]}
    assert ("growth", "active") in plans
    assert ("starter", "terminated") in plans
    [wallet] = second["wallets"]
    assert float(wallet["credits_balance"]) == 15.0
    assert len(second["wallet_transactions"]) == 2
    assert len(second["applied_coupons"]) == 1

    sql(
        warehouse,
        "update billing.subscriptions set status = 'terminated', updated_at = now()"
        " where subscription_ref = 's1'",
        "update billing.customers set deleted = true, updated_at = now()"
        " where customer_ref = 'c2'",
    )
    third = run_twice(meltano, lago)
    assert {(s["plan_code"], s["status"]) for s in third["subscriptions"]} == {
        ("growth", "terminated"),
        ("starter", "terminated"),
    }
    assert [c["external_id"] for c in third["customers"]] == ["c1"]
    assert meltano.dead_letters() == []
