"""Usage history, alerts, analytics and logs (issue 13), through the ``tap-lago`` script.

One licensed sandbox serves a first and a second run of the new streams; the session's
unlicensed sandbox shows premium streams skipped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from tap_lago.client import parse_datetime

from tests.tap.conftest import SyncResult, parse_messages, tap_config
from tests.tap.test_cli import tap_lago
from tests.tap.test_records import _invalid_records
from tests.tap.test_sync import schema_of

USAGE = ("customer_past_usage", "subscription_lifetime_usage", "subscription_alerts")
ANALYTICS = ("gross_revenue", "invoiced_usage", "mrr", "overdue_balance", "invoice_collection")
PREMIUM = ("invoiced_usage", "mrr", "invoice_collection", "activity_logs", "api_logs")
NEW = (*USAGE, "wallet_alerts", *ANALYTICS, "usage", "activity_logs", "api_logs")
#: Streams the analytics are checked against.
SOURCES = ("invoices", "fees", "subscriptions", "plans")
KEYS = {
    "customer_past_usage": (
        "external_subscription_id",
        "from_datetime",
        "lago_invoice_id",
        "lago_charge_id",
    ),
    "gross_revenue": ("month", "currency", "billing_entity_id"),
    "invoiced_usage": ("month", "currency", "code"),
    "mrr": ("month", "currency"),
    "overdue_balance": ("month", "currency", "billing_entity_id"),
    "invoice_collection": ("month", "payment_status", "currency"),
    "usage": ("start_of_period_dt", "end_of_period_dt", "billable_metric_code", "amount_currency"),
    "activity_logs": ("activity_id",),
    "api_logs": ("request_id",),
}


class Run:
    """One run of the console script: exit status, Singer messages, log lines."""

    def __init__(self, args: list[str]) -> None:
        proc = tap_lago(*args)
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        self.result = SyncResult(parse_messages(proc.stdout), proc.stdout)

    def lines(self, text: str) -> list[str]:
        return [line for line in self.stderr.splitlines() if text in line]


def select(tmp_path: Path, config: dict[str, Any], streams: tuple[str, ...]) -> list[str]:
    """Arguments running the tap on ``streams`` only."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    catalog = json.loads(tap_lago("--config", str(config_file), "--discover").stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] in streams
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps(catalog))
    return ["--config", str(config_file), "--catalog", str(catalog_file)]


def lago_get(sb: Any, path: str, **params: Any) -> Any:
    response = requests.get(
        sb.url + path,
        params={"per_page": 100000, **params},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=60,
    )
    assert response.status_code == 200, (path, response.text)
    return response.json()


def emitted(stream: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A served object as the tap emits it: decimal strings as numbers, "" for null keys."""
    props = schema_of(stream)["properties"]
    out = {
        name: float(value)
        if isinstance(value, str) and props[name].get("type") == ["number", "null"]
        else value
        for name, value in obj.items()
    }
    for key in KEYS.get(stream, ()):
        if out.get(key) is None:
            out[key] = ""
    return out


def served(sb: Any) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """What the sandbox serves for each new stream, keyed as the tap keys it."""
    dump = sb.dump()
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)

    def add(stream: str, obj: dict[str, Any]) -> None:
        row = emitted(stream, obj)
        out[stream][tuple(row[k] for k in KEYS.get(stream, ("lago_id",)))] = row

    # Each stream reads the first subscription listed per external id, among its statuses.
    read: dict[str, set[tuple[str, str]]] = defaultdict(set)

    def first_time(stream: str, sub: dict[str, Any], statuses: tuple[str, ...]) -> bool:
        key = (sub["external_customer_id"], sub["external_id"])
        if sub["status"] not in statuses or key in read[stream]:
            return False
        read[stream].add(key)
        return True

    for sub in dump["subscriptions"]:
        customer, external_id = sub["external_customer_id"], sub["external_id"]
        if first_time("subscription_alerts", sub, ("active", "pending", "terminated", "canceled")):
            alerts = lago_get(sb, f"/subscriptions/{external_id}/alerts",
                              subscription_status=sub["status"])  # fmt: skip
            for alert in alerts["alerts"]:
                add("subscription_alerts", alert)
        if first_time("subscription_lifetime_usage", sub, ("active", "terminated")):
            path = f"/subscriptions/{external_id}/lifetime_usage"
            add("subscription_lifetime_usage", lago_get(sb, path)["lifetime_usage"])
        if not first_time("customer_past_usage", sub, ("active", "terminated")):
            continue
        body = lago_get(sb, f"/customers/{customer}/past_usage",
                        external_subscription_id=external_id)  # fmt: skip
        for period in body["usage_periods"]:
            for charge in period.pop("charges_usage"):
                add("customer_past_usage", {
                    **{("invoice_" + k if k.endswith("amount_cents") else k): v
                       for k, v in period.items()},
                    **charge,
                    "lago_charge_id": charge["charge"]["lago_id"],
                    "billable_metric_code": charge["billable_metric"]["code"],
                    "external_customer_id": customer,
                    "external_subscription_id": external_id,
                })  # fmt: skip
    for wallet in dump["wallets"]:
        path = f"/customers/{wallet['external_customer_id']}/wallets/{wallet['code']}/alerts"
        for alert in lago_get(sb, path)["alerts"]:
            add("wallet_alerts", alert)
    for name in ANALYTICS:
        body = lago_get(sb, f"/analytics/{name}")
        for row in next(iter(body.values())):
            add(name, row)
    for row in lago_get(sb, "/analytics/usage", time_granularity="monthly")["usages"]:
        add("usage", row)
    for name in ("activity_logs", "api_logs"):
        for row in lago_get(sb, f"/{name}")[name]:
            add(name, row)
    return out


@pytest.fixture(scope="module")
def lago(sandbox_factory: Any) -> Any:
    """A licensed organisation, with a customer created now (so the logs hold one)."""
    sb = sandbox_factory({"seed": 5, "customers": 8, "events": 600})
    sb.configure(premium=True)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sb.upsert("customers", {"external_id": "read-api-1", "name": "Fresh", "created_at": now})
    return sb


@pytest.fixture(scope="module")
def runs(
    lago: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Run, Run, list[dict[str, Any]]]]:
    """The first run, then a second from its state after one more customer was created;
    and the past-usage requests of the second run."""
    tmp_path = tmp_path_factory.mktemp("read-api")
    args = select(tmp_path, tap_config(lago, page_size=3), (*NEW, *SOURCES))
    first = Run(args)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(first.result.last_state))
    lago.requests(clear=True)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lago.upsert("customers", {"external_id": "read-api-2", "name": "Later", "created_at": now})
    second = Run([*args, "--state", str(state_file)])
    past = [r for r in lago.requests() if r["path"].endswith("/past_usage")]
    yield first, second, past


def by_key(result: SyncResult, stream: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    records = result.records.get(stream, [])
    keyed = {tuple(r[k] for k in KEYS.get(stream, ("lago_id",))): r for r in records}
    assert len(keyed) == len(records), f"{stream}: a key was emitted twice"
    return keyed


def test_each_stream_emits_what_the_sandbox_serves(lago: Any, runs: Any) -> None:
    first, _, _ = runs
    assert first.returncode == 0, first.stderr[-2000:]
    expected = served(lago)
    for stream in NEW:
        got = by_key(first.result, stream)
        assert got, f"{stream}: the sandbox should serve some"
        want = expected[stream]
        if stream == "subscription_lifetime_usage":  # to_datetime is the time of the request
            for row in [*got.values(), *want.values()]:
                row.pop("to_datetime")
        if stream in ("activity_logs", "api_logs"):  # the customer made after the first run
            want = {k: v for k, v in want.items() if v["logged_at"] <= first_run_end(first)}
        assert set(got) == set(want), stream
        assert [k for k in got if got[k] != want[k]] == [], stream


def first_run_end(run: Run) -> str:
    """The latest log time the first run could see."""
    return max(r["logged_at"] for r in run.result.records["activity_logs"])


def test_records_validate_against_the_schema_emitted(runs: Any) -> None:
    first, second, _ = runs
    assert _invalid_records(first.result) == []
    assert _invalid_records(second.result) == []
    keys = first.result.schemas["customer_past_usage"]["key_properties"]
    assert keys == list(KEYS["customer_past_usage"])


def test_a_second_run_reads_only_the_bookmarks_boundary(runs: Any) -> None:
    first, second, past_requests = runs
    assert second.returncode == 0, second.stderr[-2000:]
    # Past usage: per subscription, only the bookmark's own period again, one page each.
    partitions = first.result.last_state["bookmarks"]["customer_past_usage"]["partitions"]
    bookmark = {
        p["context"]["external_subscription_id"]: parse_datetime(p["replication_key_value"])
        for p in partitions
        if "replication_key_value" in p
    }
    again = second.result.records["customer_past_usage"]
    assert again, "the boundary periods are read again"
    assert all(
        parse_datetime(r["from_datetime"]) == bookmark[r["external_subscription_id"]] for r in again
    )
    assert len(again) < len(first.result.records["customer_past_usage"]) / 2
    assert past_requests and all("page=1&" in r["query"] for r in past_requests)
    assert second.result.last_state["bookmarks"]["customer_past_usage"]["partitions"] == partitions
    # Logs: the boundary and what was logged since (the customer created between the runs).
    for stream in ("activity_logs", "api_logs"):
        mark = parse_datetime(first.result.last_state["bookmarks"][stream]["replication_key_value"])
        logged = [parse_datetime(r["logged_at"]) for r in second.result.records[stream]]
        assert min(logged) == mark, stream
        assert [t for t in logged if t > mark], stream
    created = [r for r in second.result.records["activity_logs"]
               if r["activity_object"].get("external_id") == "read-api-2"]  # fmt: skip
    assert len(created) == 1


def test_analytics_agree_with_the_invoices_fees_and_credit_notes(lago: Any, runs: Any) -> None:
    first, _, _ = runs
    records = first.result.records
    invoices = [i for i in records["invoices"] if i["status"] == "finalized"]
    refunds: dict[str, int] = defaultdict(int)
    for note in lago.dump()["credit_notes"]:  # every credit note counts, drafts included
        refunds[note["lago_invoice_id"]] += note["refund_amount_cents"]

    def month(value: str) -> str:
        return value[:7]

    gross: dict[tuple[str, str], float] = defaultdict(float)
    collection: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for invoice in invoices:
        key = (month(invoice["issuing_date"]), invoice["currency"])
        gross[key] += invoice["total_amount_cents"] - refunds[invoice["lago_id"]]
        counted = collection[(month(invoice["issuing_date"]), invoice["payment_status"])]
        counted[0] += 1
        counted[1] += invoice["total_amount_cents"]
    assert sums(records["gross_revenue"], ("currency",)) == gross
    assert {
        (month(r["month"]), r["payment_status"]): [r["invoices_count"], r["amount_cents"]]
        for r in records["invoice_collection"]
        if r["payment_status"]
    } == collection
    assert all(r["invoices_count"] == 0 for r in records["invoice_collection"] if not r["currency"])

    overdue: dict[tuple[str, str], float] = defaultdict(float)
    for invoice in records["invoices"]:
        if invoice["payment_overdue"]:
            overdue[(month(invoice["payment_due_date"]), invoice["currency"])] += invoice[
                "total_amount_cents"
            ]
    assert overdue, "the organisation should have overdue invoices"
    assert sums(records["overdue_balance"], ("currency",)) == overdue

    usage: dict[tuple[str, str], float] = defaultdict(float)
    for fee in records["fees"]:
        if fee["item"]["type"] == "charge" and fee["lago_invoice_id"]:
            worth = fee["amount_cents"] - float(fee["precise_coupons_amount_cents"])
            usage[(month(fee["created_at"]), fee["item"]["code"])] += worth
    assert sums(records["invoiced_usage"], ("code",)) == usage

    assert monthly_mrr(records) == pytest.approx(sums(records["mrr"], ("currency",)), abs=0.01)


def sums(rows: list[dict[str, Any]], by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Amounts per month (``YYYY-MM``) and the ``by`` fields, rows with an amount only."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for row in rows:
        if row["amount_cents"] is not None:
            key = (row["month"][:7], *(row[name] for name in by))
            out[key] += float(row["amount_cents"])
    return dict(out)


def monthly_mrr(records: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], float]:
    """MRR as the sandbox README defines it, from the fees, invoices and plans emitted:
    each subscription fee of a finalized invoice, taxes included, goes to its issuing
    month (monthly plans) or in twelfths to the twelve months from it (yearly, in advance).
    """
    issued = {i["lago_id"]: i["issuing_date"] for i in records["invoices"]
              if i["status"] == "finalized"}  # fmt: skip
    plans = {p["code"]: p["interval"] for p in records["plans"]}
    intervals = {s["lago_id"]: plans[s["plan_code"]] for s in records["subscriptions"]}
    months = {r["month"][:7] for r in records["mrr"]}
    out: dict[tuple[str, str], float] = defaultdict(float)
    for fee in records["fees"]:
        if fee["item"]["type"] != "subscription" or fee["lago_invoice_id"] not in issued:
            continue
        worth = Decimal(fee["amount_cents"]) + fee["taxes_amount_cents"]
        worth -= Decimal(str(fee["precise_coupons_amount_cents"]))
        assert intervals[fee["lago_subscription_id"]] in ("monthly", "yearly")
        count = 12 if intervals[fee["lago_subscription_id"]] == "yearly" else 1
        year, number = map(int, issued[fee["lago_invoice_id"]][:7].split("-"))
        for step in range(count):
            index = year * 12 + number - 1 + step
            key = f"{index // 12:04d}-{index % 12 + 1:02d}"
            if key in months:
                out[(key, fee["amount_currency"])] += float(worth / count)
    return dict(out)


def test_without_a_licence_premium_streams_are_skipped_with_one_line(
    sandbox: Any, tmp_path: Path
) -> None:
    args = select(tmp_path, tap_config(sandbox), (*PREMIUM, "gross_revenue"))
    bookmark = {"replication_key": "logged_at", "replication_key_value": "2026-01-01T00:00:00Z"}
    state = {"bookmarks": {"activity_logs": dict(bookmark)}}
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    run = Run([*args, "--state", str(state_file)])

    assert run.returncode == 0, run.stderr[-2000:]
    for stream in PREMIUM:
        lines = run.lines(f"{stream}: ")
        skipped = [line for line in lines if "premium licence" in line]
        assert len(skipped) == 1, lines
        assert "skipped" in skipped[0] and "feature_unavailable" in skipped[0]
    assert not run.lines("ERROR")
    kinds = {(m["type"], m.get("stream")) for m in run.result.messages}
    for stream in PREMIUM:
        assert ("RECORD", stream) not in kinds
        assert ("ACTIVATE_VERSION", stream) not in kinds  # the warehouse keeps its rows
    assert run.result.records["gross_revenue"], "the other streams complete"
    assert run.result.last_state["bookmarks"]["activity_logs"] == bookmark


def test_another_403_ends_the_run_with_one_actionable_line(
    sandbox_factory: Any, tmp_path: Path
) -> None:
    sb = sandbox_factory({"seed": 5, "customers": 2, "events": 0})
    sb.configure(premium=True, read_denied=["analytic"])
    run = Run(select(tmp_path, tap_config(sb), ("gross_revenue",)))
    assert run.returncode == 1
    errors = run.lines("ERROR")
    assert len(errors) == 1, run.stderr[-2000:]
    assert "read_action_not_allowed_for_analytic" in errors[0]
    assert "Give the key read access" in errors[0]
    assert "Traceback" not in run.stderr
