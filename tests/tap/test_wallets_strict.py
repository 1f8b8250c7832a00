"""Wallets under a server that requires ``external_customer_id`` on ``GET /wallets``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.tap.conftest import run_tap, tap_config


@pytest.mark.parametrize("status", [422, 400], ids=["gateway-422", "rails-400"])
def test_wallets_are_listed_per_customer_when_the_list_is_refused(
    sandbox_factory: Any, status: int
) -> None:
    sb = sandbox_factory(seed={"seed": 21, "customers": 8, "events": 0})
    streams = {"wallets", "wallet_transactions"}
    lenient = run_tap(tap_config(sb, page_size=3), streams=streams)
    assert lenient.records["wallets"] and lenient.records["wallet_transactions"]

    sb.configure(strict_wallets=status)
    sb.requests(clear=True)
    strict = run_tap(tap_config(sb, page_size=3), streams=streams)
    sb.configure(strict_wallets=None)

    for stream in streams:
        assert sorted(r["lago_id"] for r in strict.records[stream]) == sorted(
            r["lago_id"] for r in lenient.records[stream]
        ), stream
    wallet_lists = [r for r in sb.requests() if r["path"] == "/api/v1/wallets"]
    assert [r["status"] for r in wallet_lists if "external_customer_id" not in r["query"]] == [
        status
    ]
    per_customer = [r for r in wallet_lists if "external_customer_id" in r["query"]]
    asked = {parse_qs(r["query"])["external_customer_id"][0] for r in per_customer}
    assert asked == {c["external_id"] for c in sb.dump()["customers"]}
    assert all(r["status"] == 200 for r in per_customer)
