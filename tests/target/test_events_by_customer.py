"""Events keyed by customer, as Lago's usage-ingestion guide writes them."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema, subscriptions_for

PROPS = {
    "transaction_id": {"type": "string"},
    "external_customer_id": {"type": "string"},
    "external_subscription_id": {"type": ["string", "null"]},
    "code": {"type": "string"},
    "timestamp": {"type": "integer"},
    "properties": {"type": "object"},
}


def guide_event(n: int, customer: str, code: str) -> dict:
    """The guide's event: a customer, no subscription, and `operation_type` in properties."""
    return {
        "transaction_id": f"guide-{n}",
        "external_customer_id": customer,
        "code": code,
        "timestamp": 1_668_461_043 + n,
        "properties": {"operation_type": "add", "seat_id": f"seat-{n}"},
    }


def test_events_keyed_by_customer_go_to_its_one_active_subscription(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, tmp_path: Path
) -> None:
    [one] = subscriptions_for(lago, ["solo"], plan["code"])
    subscriptions_for(lago, ["twin"], plan["code"])
    body = {"subscription": {"external_id": "sub_twin_2", "external_customer_id": "twin",
                             "plan_code": plan["code"]}}  # fmt: skip
    requests.post(f"{lago.url}/subscriptions", json=body, timeout=10,
                  headers={"Authorization": f"Bearer {lago.api_key}"})  # fmt: skip
    rows = [guide_event(n, "solo", metric_code) for n in range(6)]
    rows += [guide_event(10, "twin", metric_code), guide_event(11, "nobody", metric_code)]
    rows.append({**guide_event(12, "twin", metric_code), "external_subscription_id": "sub_twin"})
    messages = [schema("events", PROPS, ["transaction_id"]), *(record("events", r) for r in rows)]
    lago.requests(clear=True)
    done = run_cli(tmp_path, {**config, "allow_rejections": True}, messages)
    assert done.returncode == 0, done.stderr[-2000:]

    stored = {e["transaction_id"]: e for e in lago.dump()["events"]}
    assert sorted(stored) == sorted([*(f"guide-{n}" for n in range(6)), "guide-12"])
    assert {stored[f"guide-{n}"]["external_subscription_id"] for n in range(6)} == {one}
    assert stored["guide-0"]["properties"] == {"operation_type": "add", "seat_id": "seat-0"}
    lookups = [r for r in lago.requests() if r["method"] == "GET" and "subscriptions" in r["path"]]
    assert len(lookups) == 3  # one per customer, cached for the run
    letters = {d["record"]["transaction_id"]: d["message"] for d in
               dead_letters(config["dead_letter_path"])}  # fmt: skip
    assert "customer 'twin' has 2 active subscriptions: sub_twin" in letters["guide-10"]
    assert "sub_twin_2" in letters["guide-10"]
    assert "customer 'nobody' has no active subscription" in letters["guide-11"]

    again = run_cli(tmp_path, {**config, "allow_rejections": True}, messages)
    assert "delivered=0 already_present=7" in again.stderr
