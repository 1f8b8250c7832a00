"""`meltano run tap-lago target-lago`: copy an organisation into an empty one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipelines.harness import Meltano

pytestmark = pytest.mark.usefixtures("meltano_installed")


def test_customers_subscriptions_and_events_are_copied(sandbox_factory, workdir: Path) -> None:
    source = sandbox_factory(seed={"seed": 42, "customers": 6, "events": 400})
    destination = sandbox_factory(seed={"seed": 42, "customers": 0, "events": 0})
    meltano = Meltano(
        workdir,
        source=source,
        destination=destination,
        extra_env={"TAP_LAGO__SELECT_FILTER": '["customers", "subscriptions", "events"]'},
    )
    meltano.run("tap-lago", "target-lago")

    src, dst = source.dump(), destination.dump()
    fields = ("external_id", "name", "email", "currency", "country")
    assert sorted(tuple(c.get(f) for f in fields) for c in dst["customers"]) == sorted(
        tuple(c.get(f) for f in fields) for c in src["customers"]
    )
    live = {"active", "pending"}
    assert sorted(
        (s["external_id"], s["external_customer_id"], s["plan_code"], s["status"])
        for s in dst["subscriptions"]
    ) == sorted(
        (s["external_id"], s["external_customer_id"], s["plan_code"], s["status"])
        for s in src["subscriptions"]
        if s["status"] in live
    )

    def event_rows(events: list[dict]) -> list[str]:
        fields = ("transaction_id", "external_subscription_id", "code", "timestamp", "properties")
        return sorted(json.dumps([e[f] for f in fields], sort_keys=True) for e in events)

    assert event_rows(dst["events"]) == event_rows(src["events"])
    assert meltano.dead_letters() == []
