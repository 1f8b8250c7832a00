"""Warehouse to Lago: PostgreSQL tables -> tap-postgres -> stream maps -> target-lago."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.pg import PostgresServer
from tests.pipelines.harness import ROOT, Meltano, meltano_bin, target_summary

pytestmark = pytest.mark.usefixtures("meltano_installed")

CUSTOMERS = 6
USAGE_ROWS = 450

STREAM_MAPS = {
    "billing-customers": {
        "external_id": "customer_ref",
        "name": "company",
        "email": "contact_email",
        "currency": "'EUR'",
        "customer_ref": "__NULL__",
        "company": "__NULL__",
        "contact_email": "__NULL__",
        "updated_at": "__NULL__",
        "__key_properties__": ["external_id"],
    },
    "billing-subscriptions": {
        "external_id": "subscription_ref",
        "external_customer_id": "customer_ref",
        "plan_code": "plan",
        "subscription_ref": "__NULL__",
        "customer_ref": "__NULL__",
        "plan": "__NULL__",
        "updated_at": "__NULL__",
        "__key_properties__": ["external_id"],
    },
    "billing-usage": {
        "transaction_id": "'usage-' + str(id)",
        "external_subscription_id": "subscription_ref",
        "code": "metric",
        "timestamp": "occurred_at",
        "properties": "{'units': quantity}",
        "subscription_ref": "__NULL__",
        "metric": "__NULL__",
        "quantity": "__NULL__",
        "occurred_at": "__NULL__",
    },
}
STREAM_ACTIONS = {
    "billing-customers": "customers",
    "billing-subscriptions": "subscriptions",
    "billing-usage": "events",
}


def _fill_warehouse(pg: PostgresServer, plan: str, metric: str, first_usage_id: int = 1) -> None:
    now = int(time.time())
    with psycopg.connect(pg.url) as conn:
        conn.execute("create schema if not exists billing")
        conn.execute(
            "create table if not exists billing.customers (customer_ref text primary key,"
            " company text, contact_email text, updated_at timestamptz not null)"
        )
        conn.execute(
            "create table if not exists billing.subscriptions (subscription_ref text primary key,"
            " customer_ref text, plan text, updated_at timestamptz not null)"
        )
        conn.execute(
            "create table if not exists billing.usage (id integer primary key,"
            " subscription_ref text, metric text, quantity integer, occurred_at timestamptz)"
        )
        with conn.cursor() as cur:
            if first_usage_id == 1:
                cur.executemany(
                    "insert into billing.customers values (%s, %s, %s, now())",
                    [
                        (f"wh-cust-{i}", f"Company {i}", f"billing{i}@example.com")
                        for i in range(CUSTOMERS)
                    ],
                )
                cur.executemany(
                    "insert into billing.subscriptions values (%s, %s, %s, now())",
                    [(f"wh-sub-{i}", f"wh-cust-{i}", plan) for i in range(CUSTOMERS)],
                )
            cur.executemany(
                "insert into billing.usage values (%s, %s, %s, %s, to_timestamp(%s))",
                [
                    (i, f"wh-sub-{i % CUSTOMERS}", metric, i % 9 + 1, now - 30 * i)
                    for i in range(first_usage_id, first_usage_id + USAGE_ROWS)
                ],
            )


def _posts(lago) -> list[dict]:
    return [r for r in lago.requests() if r["method"] == "POST"]


def test_usage_customers_and_subscriptions_land_exactly_once(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})
    catalog = lago.dump()
    plan = catalog["plans"][0]
    metric = next(m for m in catalog["billable_metrics"] if m["aggregation_type"] == "sum_agg")
    _fill_warehouse(warehouse, plan["code"], metric["code"])
    meltano = Meltano(
        workdir,
        destination=lago,
        warehouse=warehouse,
        extra_env={
            "TARGET_LAGO_STREAM_MAPS": json.dumps(STREAM_MAPS),
            "TARGET_LAGO_STREAM_ACTIONS": json.dumps(STREAM_ACTIONS),
        },
    )

    meltano.run("tap-postgres", "target-lago")
    dump = lago.dump()
    customers = {c["external_id"]: c for c in dump["customers"]}
    assert sorted(customers) == sorted(f"wh-cust-{i}" for i in range(CUSTOMERS))
    assert customers["wh-cust-3"]["name"] == "Company 3"
    assert customers["wh-cust-3"]["email"] == "billing3@example.com"
    subscriptions = {s["external_id"]: s for s in dump["subscriptions"]}
    assert sorted(subscriptions) == sorted(f"wh-sub-{i}" for i in range(CUSTOMERS))
    assert {s["plan_code"] for s in subscriptions.values()} == {plan["code"]}
    assert {s["status"] for s in subscriptions.values()} == {"active"}
    events = dump["events"]
    assert len(events) == USAGE_ROWS
    assert {e["transaction_id"] for e in events} == {f"usage-{i}" for i in range(1, USAGE_ROWS + 1)}
    assert meltano.dead_letters() == []

    # Again, incrementally: the warehouse has nothing new, so nothing new is written. The
    # bookmarks are inclusive, so the rows sitting on them come again, as already present.
    lago.requests(clear=True)
    rerun = meltano.run("tap-postgres", "target-lago")
    batches = [
        r
        for r in _posts(lago)
        if r["path"].endswith("/events/batch") and r["body_size"] != len(b'{"events":[]}')
    ]  # leaving out target-lago's start-up check, an empty batch
    assert len(batches) <= 1
    summary = target_summary(rerun.stderr, "billing-usage")
    assert summary["delivered"] == 0
    assert summary["received"] == summary["already_present"] <= 1
    assert lago.dump() == dump

    # A full re-sync sends everything again and counts nothing twice.
    meltano.run("--full-refresh", "tap-postgres", "target-lago")
    assert _posts(lago), "a full re-sync sends the rows again"
    again = lago.dump()
    assert len(again["events"]) == USAGE_ROWS
    assert len(again["customers"]) == CUSTOMERS
    assert sorted(s["lago_id"] for s in again["subscriptions"]) == sorted(
        s["lago_id"] for s in subscriptions.values()
    )

    # New usage rows in the warehouse: exactly those land.
    _fill_warehouse(warehouse, plan["code"], metric["code"], first_usage_id=USAGE_ROWS + 1)
    meltano.run("tap-postgres", "target-lago")
    assert len(lago.dump()["events"]) == 2 * USAGE_ROWS


def _meltano(workdir: Path, lago, warehouse: PostgresServer, **settings: str) -> Meltano:
    env = {
        "TARGET_LAGO_STREAM_MAPS": json.dumps(STREAM_MAPS),
        "TARGET_LAGO_STREAM_ACTIONS": json.dumps(STREAM_ACTIONS),
        **{f"TARGET_LAGO_{name.upper()}": value for name, value in settings.items()},
    }
    return Meltano(workdir, destination=lago, warehouse=warehouse, extra_env=env)


def _state_list(meltano: Meltano) -> str:
    proc = subprocess.run(
        [meltano_bin(), "state", "list"],
        cwd=ROOT,
        env=meltano.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return proc.stdout


def test_a_dry_run_then_a_real_run_delivers_every_row(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})
    catalog = lago.dump()
    metric = next(m for m in catalog["billable_metrics"] if m["aggregation_type"] == "sum_agg")
    _fill_warehouse(warehouse, catalog["plans"][0]["code"], metric["code"])

    dry = _meltano(workdir, lago, warehouse, dry_run="true").run("tap-postgres", "target-lago")
    assert "no STATE was emitted" in dry.stderr
    assert lago.requests() == []
    assert "tap-postgres-to-target-lago" not in _state_list(_meltano(workdir, lago, warehouse))

    real = _meltano(workdir, lago, warehouse).run("tap-postgres", "target-lago")
    assert target_summary(real.stderr, "billing-usage")["delivered"] == USAGE_ROWS
    assert len(lago.dump()["events"]) == USAGE_ROWS
    assert "tap-postgres-to-target-lago" in _state_list(_meltano(workdir, lago, warehouse))


def test_a_rejected_row_fixed_upstream_lands_on_the_rerun(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})
    catalog = lago.dump()
    metric = next(m for m in catalog["billable_metrics"] if m["aggregation_type"] == "sum_agg")
    _fill_warehouse(warehouse, catalog["plans"][0]["code"], metric["code"])
    with psycopg.connect(warehouse.url) as conn:  # a row early in the id order goes bad
        conn.execute("update billing.usage set metric = null where id = 17")
    meltano = _meltano(workdir, lago, warehouse)

    first = meltano.run("tap-postgres", "target-lago", check=False)
    assert first.returncode != 0
    assert target_summary(first.stderr, "billing-usage")["rejected"] == 1
    assert len(lago.dump()["events"]) == USAGE_ROWS - 1  # the good rows still landed
    [letter] = [json.loads(line) for line in meltano.dead_letters()]
    assert letter["record"]["transaction_id"] == "usage-17"
    assert letter["details"] == {"code": ["value_is_mandatory"]}

    with psycopg.connect(warehouse.url) as conn:  # fixed upstream
        conn.execute("update billing.usage set metric = %s where id = 17", (metric["code"],))
    rerun = meltano.run("tap-postgres", "target-lago")
    summary = target_summary(rerun.stderr, "billing-usage")
    assert summary["delivered"] == 1
    assert summary["already_present"] == USAGE_ROWS - 1
    events = lago.dump()["events"]
    assert len(events) == USAGE_ROWS
    assert "usage-17" in {e["transaction_id"] for e in events}
