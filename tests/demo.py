"""The README's demo: Lago -> warehouse -> Lago, through Meltano, on this machine only.

Run it with ``bash .ci/demo`` (which installs everything first). It starts the Lago sandbox
with a seeded organisation and a throwaway PostgreSQL warehouse, then runs:

1. ``meltano run tap-lago target-postgres`` (Lago into the warehouse);
2. ``meltano run tap-postgres target-lago`` three times: usage rows of the warehouse into Lago
   events, an incremental rerun that sends nothing new, and a full re-sync that counts nothing
   twice;

and prints row counts per stream on each side.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.lago_sandbox import Sandbox
from tests.pg import PostgresServer
from tests.pipelines.harness import Meltano, lago_total, table_rows, target_summary

API_KEY = "demo-api-key-not-a-secret"
SEED = {"seed": 42, "customers": 25, "events": 5000, "months": 3}
USAGE_ROWS = 1500

# What the warehouse receives, and how to count the same thing on the Lago side.
STREAM_COUNTS: dict[str, dict[str, Any]] = {
    "customers": {},
    "subscriptions": {"status[]": ["active", "pending", "terminated", "canceled"]},
    "invoices": {},
    "events": {},
    "fees": {},
    "credit_notes": {},
    "plans": {},
    "billable_metrics": {},
    "coupons": {},
    "add_ons": {},
    "taxes": {},
    "wallets": {},
    "applied_coupons": {},
}


def step(meltano: Meltano, *args: str) -> str:
    """Run one pipeline, say how long it took, and return its log."""
    run = meltano.run(*args)
    print(f"  meltano run {' '.join(args)}: ok in {run.seconds:.1f} s")
    return run.stderr


def build_usage_table(lago: Sandbox, pg: PostgresServer) -> tuple[str, str]:
    """Create `billing.usage`: metered rows for the active subscriptions, as a warehouse has."""
    dump = lago.dump()
    metrics = {m["code"]: m for m in dump["billable_metrics"]}
    plans = {p["code"]: p for p in dump["plans"]}
    chosen: tuple[str, str] | None = None
    subscriptions: list[str] = []
    for sub in dump["subscriptions"]:
        if sub["status"] != "active":
            continue
        for charge in plans[sub["plan_code"]].get("charges") or []:
            metric = metrics.get(charge["billable_metric_code"])
            if metric and metric["aggregation_type"] == "sum_agg" and metric.get("field_name"):
                if chosen is None:
                    chosen = (metric["code"], metric["field_name"])
                if metric["code"] == chosen[0]:
                    subscriptions.append(sub["external_id"])
    if chosen is None or not subscriptions:
        raise SystemExit("the seeded organisation has no active subscription on a sum metric")
    code, field = chosen
    now = int(time.time())
    rows = [
        (i, subscriptions[i % len(subscriptions)], code, (i % 17) + 1, now - 60 * i)
        for i in range(1, USAGE_ROWS + 1)
    ]
    with psycopg.connect(pg.url) as conn:
        conn.execute("create schema if not exists billing")
        conn.execute(
            "create table billing.usage (id integer primary key, subscription_ref text not null,"
            " metric text not null, quantity integer not null, occurred_at timestamptz not null)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "insert into billing.usage values (%s, %s, %s, %s, to_timestamp(%s))", rows
            )
    return code, field


def main() -> None:
    """Run the demo and print what landed where."""
    print("Starting the Lago sandbox and a PostgreSQL warehouse on 127.0.0.1 ...")
    with (
        tempfile.TemporaryDirectory(prefix="lago-demo-") as tmp,
        PostgresServer() as pg,
        Sandbox(api_key=API_KEY, seed=SEED) as lago,
    ):
        meltano = Meltano(Path(tmp), source=lago, destination=lago, warehouse=pg)
        print(f"  Lago sandbox: {lago.url}  (seed {SEED})")
        print(f"  PostgreSQL:   127.0.0.1:{pg.port}, database warehouse")

        print("\n1. Lago -> warehouse")
        step(meltano, "tap-lago", "target-postgres")
        print(f"\n  {'stream':<18}{'Lago API':>10}{'warehouse':>11}")
        for stream, params in STREAM_COUNTS.items():
            rows = table_rows(pg, "lago", stream)
            shown = "-" if rows is None else str(rows)
            print(f"  {stream:<18}{lago_total(lago, stream, params):>10}{shown:>11}")
        # Child streams: one list per wallet, one usage snapshot per active subscription.
        dump = lago.dump()
        children = {
            "wallet_transactions": len(dump["wallet_transactions"]),
            "customer_usage": sum(s["status"] == "active" for s in dump["subscriptions"]),
        }
        for stream, count in children.items():
            rows = table_rows(pg, "lago", stream)
            shown = "-" if rows is None else str(rows)
            print(f"  {stream:<18}{count:>10}{shown:>11}")

        print("\n2. Warehouse -> Lago (reverse ETL of billing.usage into events)")
        code, field = build_usage_table(lago, pg)
        print(f"  billing.usage: {USAGE_ROWS} rows of metric {code!r}")
        meltano.extra_env["TARGET_LAGO_STREAM_ACTIONS"] = json.dumps({"billing-usage": "events"})
        meltano.extra_env["TARGET_LAGO_STREAM_MAPS"] = json.dumps(
            {
                "billing-usage": {
                    "transaction_id": "'usage-' + str(id)",
                    "external_subscription_id": "subscription_ref",
                    "code": "metric",
                    "timestamp": "occurred_at",
                    "properties": f"{{'{field}': quantity}}",
                    "subscription_ref": "__NULL__",
                    "metric": "__NULL__",
                    "quantity": "__NULL__",
                    "occurred_at": "__NULL__",
                }
            }
        )
        before = len(lago.dump()["events"])
        runs = (
            ("first run", ()),
            ("incremental rerun", ()),
            ("full re-sync", ("--full-refresh",)),
        )
        for label, flags in runs:
            log = step(meltano, *flags, "tap-postgres", "target-lago")
            after = len(lago.dump()["events"])
            counts = target_summary(log, "billing-usage")
            print(
                f"  {label}: target-lago received {counts['received']}, delivered "
                f"{counts['delivered']}, already present {counts['already_present']}, "
                f"rejected {counts['rejected']}; events in Lago {before} -> {after}"
            )
            before = after
        print(f"  dead letters: {len(meltano.dead_letters())}")
    print("\nDone.")


if __name__ == "__main__":
    main()
