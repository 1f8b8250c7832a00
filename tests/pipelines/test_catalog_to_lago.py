"""`meltano run tap-lago-catalog target-lago`: a catalog kept in git, applied to Lago."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lago_sandbox.catalog import entitlements_of, features_of
from tests.pipelines.harness import Meltano, target_summary

pytestmark = pytest.mark.usefixtures("meltano_installed")
PRICING = Path(__file__).parents[1] / "target" / "pricing.yaml"


def test_a_catalog_file_is_applied_replayed_repriced_and_refused(
    sandbox_factory: Any, workdir: Path
) -> None:
    lago = sandbox_factory(seed={"customers": 0, "events": 0, "catalog": False})
    lago.configure(premium=True)
    catalog = workdir / "catalog.yml"
    catalog.write_text(PRICING.read_text())
    meltano = Meltano(workdir, destination=lago, extra_env={"TAP_LAGO_CATALOG_PATH": str(catalog)})
    assert lago.state is not None

    def org() -> dict[str, Any]:
        store = lago.state.store
        return {
            **lago.dump(),
            "features": features_of(store),
            "entitlements": entitlements_of(store),
        }

    meltano.run("tap-lago-catalog", "target-lago")
    created = org()
    assert {p["code"] for p in created["plans"]} == {"team", "business"}
    assert len(created["entitlements"]["business"]) == 2

    replay = meltano.run("tap-lago-catalog", "target-lago")
    assert org() == created
    assert target_summary(replay.stderr, "plans") == {
        "received": 2,
        "delivered": 0,
        "already_present": 2,
        "rejected": 0,
        "skipped": 0,
        "accepted_unverified": 0,
    }

    content = yaml.safe_load(PRICING.read_text())
    team = next(p for p in content["plans"] if p["code"] == "team")
    team["charges"][0]["properties"]["amount"] = "0.003"
    catalog.write_text(yaml.safe_dump(content))
    repriced = meltano.run("tap-lago-catalog", "target-lago")
    assert target_summary(repriced.stderr, "plans")["delivered"] == 1
    after = org()
    changed = [
        p["code"]
        for p in after["plans"]
        if p != next(q for q in created["plans"] if q["code"] == p["code"])
    ]
    assert changed == ["team"]
    assert {k: v for k, v in after.items() if k != "plans"} == {
        k: v for k, v in created.items() if k != "plans"
    }

    # A plan with subscriptions keeps its interval: the change is a dead letter.
    lago.upsert(
        "subscriptions",
        {
            "external_customer_id": "c1",
            "external_id": "s1",
            "plan_code": "business",
            "status": "active",
        },
    )
    business = next(p for p in content["plans"] if p["code"] == "business")
    business["interval"] = "monthly"
    catalog.write_text(yaml.safe_dump(content))
    refused = meltano.run("tap-lago-catalog", "target-lago", check=False)
    assert refused.returncode != 0
    [letter] = [json.loads(line) for line in meltano.dead_letters()]
    assert (letter["record"]["code"], letter["details"]) == (
        "business",
        {"interval": ["not_applied"]},
    )
    assert "a plan with subscriptions keeps its interval" in letter["message"]
