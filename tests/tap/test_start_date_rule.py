"""One ``start_date`` rule: it limits facts; dimensions are whole on a first sync."""

from __future__ import annotations

from typing import Any

from tap_lago.client import parse_datetime

from tests.tap.conftest import run_tap, tap_config


def test_start_date_leaves_no_subscription_without_its_customer(sandbox: Any) -> None:
    dump = sandbox.dump()
    stamps = sorted(c["updated_at"] for c in dump["customers"])
    start = stamps[len(stamps) // 2]  # half the customers were last updated before it
    assert stamps[0] < start
    result = run_tap(
        tap_config(sandbox, start_date=start, lookback_window_days=0),
        streams={"customers", "subscriptions", "fees", "events"},
    )

    customers = {r["external_id"] for r in result.records["customers"]}
    subscriptions = result.records["subscriptions"]
    orphans = [
        s["external_id"] for s in subscriptions if s["external_customer_id"] not in customers
    ]
    assert subscriptions
    assert orphans == []
    assert customers == {c["external_id"] for c in dump["customers"]}

    # Facts still start at start_date.
    since = parse_datetime(start)
    assert all(parse_datetime(f["created_at"]) >= since for f in result.records["fees"])
    assert all(parse_datetime(e["timestamp"]) >= since for e in result.records["events"])
