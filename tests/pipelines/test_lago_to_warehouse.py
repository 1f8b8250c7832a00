"""`meltano run tap-lago target-postgres`: Lago into a real PostgreSQL, then only the changes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.pg import PostgresServer
from tests.pipelines.harness import Meltano, lago_objects, meltano_bin, table_values

pytestmark = pytest.mark.usefixtures("meltano_installed")

ALL_STATUSES = {"status[]": ["active", "pending", "terminated", "canceled"]}
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
}


def _keys(pg: PostgresServer, table: str, key: str) -> list[str]:
    return sorted(str(row[0]) for row in table_values(pg, "lago", table, f'"{key}"'))


def test_each_stream_lands_as_a_table_then_only_changes_merge(
    sandbox_factory, warehouse: PostgresServer, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"seed": 11, "customers": 8, "events": 600})
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
        "customers": on_bookmark("customers", "lago_id", "updated_at"),
        "invoices": on_bookmark("invoices", "lago_id", "updated_at"),
        "events": on_bookmark("events", "transaction_id", "timestamp"),
    }

    # Change a customer, an invoice's payment status, and add an event; run again.
    first_run_done = time.time()
    time.sleep(1.1)
    customer = lago_objects(lago, "customers")[0]
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
    time.sleep(1.1)
    meltano.run("tap-lago", "target-postgres")

    def touched(table: str, key: str) -> set[str]:
        rows = table_values(warehouse, "lago", table, f'"{key}", _sdc_batched_at')
        return {str(k) for k, batched in rows if batched.timestamp() > first_run_done}

    changes = {
        "customers": ("lago_id", customer["lago_id"]),
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
    # Merged, not appended: still one row per object.
    for stream, (params, key) in STREAMS.items():
        assert len(_keys(warehouse, stream, key)) == len(lago_objects(lago, stream, params))
