"""`meltano run tap-lago target-lago`: copy an organisation into an empty one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import lago_copy
from tests.pipelines.harness import Meltano, target_summary

pytestmark = pytest.mark.usefixtures("meltano_installed")


def test_a_whole_organisation_is_copied_and_a_second_run_changes_nothing(
    sandbox_factory: Any, workdir: Path
) -> None:
    source, destination = lago_copy.organisations(sandbox_factory)
    meltano = Meltano(
        workdir,
        source=source,
        destination=destination,
        extra_env={"TAP_LAGO__SELECT_FILTER": json.dumps(list(lago_copy.COPIED))},
    )
    meltano.run("tap-lago", "target-lago")

    src, first = source.dump(), destination.dump()
    found, explained = lago_copy.differences(src, first), lago_copy.expected(src, first)
    assert found == explained, sorted(found ^ explained)
    assert len(first["wallet_transactions"]) == 1
    assert meltano.dead_letters() == []

    again = meltano.run("tap-lago", "target-lago")
    assert destination.dump() == first
    for stream in ("plans", "customers", "subscriptions", "subscription_plans", "events"):
        assert target_summary(again.stderr, stream)["delivered"] == 0, stream
    # The active subscription's and the scheduled downgrade's, compared with the source above.
    assert sorted(o["status"] for o in first["overridden_plans"]) == ["active", "pending"]
    assert target_summary(again.stderr, "wallet_balances")["already_present"] == 1
