"""`meltano run tap-lago target-postgres`: Lago into a real PostgreSQL, then only the changes.

Also what a warehouse user sees of Lago's values (issue 11): decimal strings land as exact
`numeric` columns, timestamps as `timestamp`, and customers and plans deleted in Lago are
marked deleted (`_sdc_deleted_at`, target-postgres' default soft delete) by the next run.
"""

from __future__ import annotations

import decimal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from tap_lago.tap import TapLago

from tests.lago_sandbox import Sandbox
from tests.pg import PostgresServer
from tests.pipelines.harness import Meltano, lago_objects, meltano_bin, table_values
from tests.sandbox.api import ALL_STATUSES as EVERY_STATUS

pytestmark = pytest.mark.usefixtures("meltano_installed")

ALL_STATUSES = {"status[]": EVERY_STATUS}
# stream -> (list parameters that show every object the tap reads, key column)
STREAMS = {
    "customers": ({}, "lago_id"),
    "subscriptions": (ALL_STATUSES, "lago_id"),
    "invoices": ({}, "lago_id"),
    "events": ({}, "transaction_id"),
    "fees": ({}, "lago_id"),
    "credit_notes": ({}, "lago_id"),
    "plans": ({}, "lago_id"),
    "billable_metrics": ({}, "lago_id"),
    "coupons": ({}, "lago_id"),
    "add_ons": ({}, "lago_id"),
    "taxes": ({}, "lago_id"),
    "wallets": ({}, "lago_id"),
    "applied_coupons": ({}, "lago_id"),
    "payments": ({}, "lago_id"),
    "payment_requests": ({}, "lago_id"),
    "payment_receipts": ({}, "lago_id"),
    "features": ({}, "code"),
    "webhook_endpoints": ({}, "lago_id"),
}


#: (table, column) -> PostgreSQL type: Lago's decimal strings and numbers, timestamps.
COLUMN_TYPES = {
    ("fees", "precise_amount"): "numeric",
    ("fees", "units"): "numeric",
    ("fees", "amount_cents"): "bigint",
    ("wallets", "credits_balance"): "numeric",
    ("wallets", "balance"): "numeric",
    ("wallet_transactions", "amount"): "numeric",
    ("coupons", "percentage_rate"): "numeric",
    ("events", "precise_total_amount_cents"): "numeric",
    ("taxes", "rate"): "numeric",
    ("customers", "created_at"): "timestamp without time zone",
    ("events", "timestamp"): "timestamp without time zone",
    ("fees", "created_at"): "timestamp without time zone",
    ("customers", "_unknown_fields"): "jsonb",
    ("customer_past_usage", "units"): "numeric",
    ("customer_past_usage", "from_datetime"): "timestamp without time zone",
    ("mrr", "amount_cents"): "numeric",
    ("gross_revenue", "invoices_count"): "numeric",
    ("subscription_alerts", "previous_value"): "numeric",
    ("activity_logs", "logged_at"): "timestamp without time zone",
    ("activity_logs", "activity_object"): "jsonb",
}
#: More digits than a double holds: they must survive the whole pipeline.
EXACT = "123456789012345678901234.123456789012345"


def _keys(pg: PostgresServer, table: str, key: str) -> list[str]:
    """Keys of the rows a user sees as current (not marked deleted)."""
    rows = table_values(pg, "lago", table, f'"{key}", _sdc_deleted_at')
    return sorted(str(key_value) for key_value, deleted in rows if deleted is None)


def _get(lago: Sandbox, path: str) -> dict:
    response = requests.get(
        f"{lago.url}{path}",
        params={"per_page": 500},
        headers={"Authorization": f"Bearer {lago.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def _lists_without_paging(lago: Sandbox, warehouse: PostgresServer) -> None:
    """Billing entities (one unpaginated list), and the payment methods of each customer and
    the entitlements of each plan (child streams): current rows are what Lago lists."""
    entities = sorted(e["lago_id"] for e in _get(lago, "/billing_entities")["billing_entities"])
    assert entities and _keys(warehouse, "billing_entities", "lago_id") == entities
    methods = sorted(
        m["lago_id"]
        for c in lago_objects(lago, "customers")
        for m in _get(lago, f"/customers/{c['external_id']}/payment_methods")["payment_methods"]
    )
    assert methods and _keys(warehouse, "payment_methods", "lago_id") == methods
    entitlements = sorted(
        (p["code"], e["code"])
        for p in lago_objects(lago, "plans")
        for e in _get(lago, f"/plans/{p['code']}/entitlements")["entitlements"]
    )
    rows = table_values(warehouse, "lago", "entitlements", "plan_code, code, _sdc_deleted_at")
    assert entitlements and sorted((p, c) for p, c, gone in rows if gone is None) == entitlements


def _column_types(pg: PostgresServer) -> dict[tuple[str, str], str]:
    rows = table_values(
        pg,
        "information_schema",
        "columns",
        "table_name, column_name, data_type",
    )
    return {(table, column): kind for table, column, kind in rows}


def test_each_stream_lands_as_a_table_then_only_changes_merge(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 11, "customers": 8, "events": 600, "unattached_events": 3})
    # Licensed, so the premium streams (selected, as every stream is) land with rows too;
    # unlicensed they are skipped with a warning (tests/tap/test_read_api.py).
    lago.configure(premium=True)
    fee = lago_objects(lago, "fees")[0]
    lago.upsert("fees", {"lago_id": fee["lago_id"], "precise_amount": EXACT})
    meltano = Meltano(
        workdir,
        source=lago,
        warehouse=warehouse,
        extra_env={
            "TARGET_POSTGRES_ADD_RECORD_METADATA": "true",
            "TAP_LAGO_LOOKBACK_WINDOW_DAYS": "0",
        },
    )
    meltano.run("tap-lago", "target-postgres")

    for stream, (params, key) in STREAMS.items():
        expected = sorted(str(obj[key]) for obj in lago_objects(lago, stream, params))
        assert expected, f"the seeded organisation has no {stream}"
        assert _keys(warehouse, stream, key) == expected, stream
    _lists_without_paging(lago, warehouse)
    # Every stream of the tap lands as a table.
    listed = table_values(warehouse, "information_schema", "tables", "table_schema, table_name")
    tables = {table for schema, table in listed if schema == "lago"}
    assert set(TapLago(config={"api_key": "unused"}, parse_env_config=False).streams) <= tables

    # Every stream is a table; the usage history, analytics and logs hold rows.
    types = _column_types(warehouse)
    tables = {table for table, _ in types}
    streams = TapLago(config={"api_key": "unused"}, parse_env_config=False).streams
    assert set(streams) - tables == set()
    for table in ("customer_past_usage", "subscription_lifetime_usage", "gross_revenue", "mrr",
                  "invoice_collection", "usage", "activity_logs"):  # fmt: skip
        assert table_values(warehouse, "lago", table, "count(*)")[0][0] > 0, table

    # Decimals are exact numerics, timestamps are timestamps.
    assert {column: types.get(column) for column in COLUMN_TYPES} == COLUMN_TYPES
    exact = dict(table_values(warehouse, "lago", "fees", "lago_id::text, precise_amount"))
    assert exact[fee["lago_id"]] == decimal.Decimal(EXACT)
    # Events sent without a subscription have the key "" (a key column is never null).
    unattached = table_values(
        warehouse, "lago", "events", "transaction_id, external_subscription_id"
    )
    assert sorted(s for t, s in unattached if t.startswith("unattached_")) == ["", "", ""]

    # Meltano keeps the bookmarks in its system database.
    state = subprocess.run(
        [meltano_bin(), "state", "list"],
        env=meltano.env(),
        cwd=meltano.env()["MELTANO_PROJECT_ROOT"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "tap-lago-to-target-postgres" in state.stdout

    # The bookmarks are inclusive: a record sitting exactly on one is read again.
    def on_bookmark(table: str, key: str, replication_key: str) -> set[str]:
        rows = table_values(warehouse, "lago", table, f'"{key}", "{replication_key}"')
        newest = max(value for _, value in rows)
        return {str(k) for k, value in rows if value == newest}

    boundary = {
        "invoices": on_bookmark("invoices", "lago_id", "updated_at"),
        "events": on_bookmark("events", "transaction_id", "timestamp"),
    }

    # Change a customer, an invoice's payment status, and add an event; run again.
    first_run_done = time.time()
    time.sleep(1.1)
    customers = lago_objects(lago, "customers")
    customer, gone = customers[0], customers[-1]
    invoice = lago_objects(lago, "invoices")[0]
    new_status = "succeeded" if invoice["payment_status"] != "succeeded" else "failed"
    lago.upsert("customers", {"lago_id": customer["lago_id"], "name": "Renamed Ltd"})
    lago.upsert("invoices", {"lago_id": invoice["lago_id"], "payment_status": new_status})
    subscription = next(s for s in lago_objects(lago, "subscriptions") if s["status"] == "active")
    metric = lago_objects(lago, "billable_metrics")[0]
    lago.upsert(
        "events",
        {
            "transaction_id": "pipeline-new-event",
            "external_subscription_id": subscription["external_id"],
            "code": metric["code"],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "properties": {},
        },
    )
    # A customer and a plan deleted in Lago.
    plan = next(p for p in lago_objects(lago, "plans") if p["code"] != subscription["plan_code"])
    for path in (f"/customers/{gone['external_id']}", f"/plans/{plan['code']}"):
        response = requests.delete(
            lago.url + path, headers={"Authorization": f"Bearer {lago.api_key}"}, timeout=30
        )
        assert response.status_code == 200, response.text
    time.sleep(1.1)
    meltano.run("tap-lago", "target-postgres")

    # What a user sees: the deleted ones are marked deleted, nothing else is.
    for table, lago_id in (("customers", gone["lago_id"]), ("plans", plan["lago_id"])):
        deleted = {
            str(k): when
            for k, when in table_values(warehouse, "lago", table, "lago_id, _sdc_deleted_at")
        }
        assert deleted[lago_id] is not None, table
        assert [k for k, when in deleted.items() if when is not None] == [lago_id], table

    def touched(table: str, key: str) -> set[str]:
        rows = table_values(warehouse, "lago", table, f'"{key}", _sdc_batched_at')
        return {str(k) for k, batched in rows if batched.timestamp() > first_run_done}

    changes = {
        "invoices": ("lago_id", invoice["lago_id"]),
        "events": ("transaction_id", "pipeline-new-event"),
    }
    for table, (key, changed) in changes.items():
        rewritten = touched(table, key)
        assert changed in rewritten, table
        assert rewritten - boundary[table] <= {changed}, table
    names = {str(k): v for k, v in table_values(warehouse, "lago", "customers", "lago_id, name")}
    assert names[customer["lago_id"]] == "Renamed Ltd"
    statuses = {
        str(k): v for k, v in table_values(warehouse, "lago", "invoices", "lago_id, payment_status")
    }
    assert statuses[invoice["lago_id"]] == new_status
    # Customers are a full table: every one is written again.
    assert touched("customers", "lago_id") == {c["lago_id"] for c in customers} - {gone["lago_id"]}
    # Merged, not appended: still one current row per object.
    for stream, (params, key) in STREAMS.items():
        expected = sorted(str(obj[key]) for obj in lago_objects(lago, stream, params))
        assert _keys(warehouse, stream, key) == expected, stream
    # The deleted customer's payment methods and the deleted plan's entitlements included.
    _lists_without_paging(lago, warehouse)
