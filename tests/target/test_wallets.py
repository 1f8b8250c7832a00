"""The wallets action through the console script: create, replay, update, faults, bad rows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.lago_sandbox import Sandbox
from tests.target.helpers import dead_letters, record, run_cli, schema

WALLET_PROPS = {"external_customer_id": {"type": "string"}, "code": {"type": "string"}}
FAULTS = [
    {"fault": kind, "probability": 0.05, "seed": n, **extra}
    for n, (kind, extra) in enumerate(
        [("lost_response", {}), ("error", {"status": 503}), ("rate_limit", {"reset_seconds": 0})]
    )
]


def api(lago: Sandbox, method: str, path: str, body: Any = None) -> dict:
    response = requests.request(
        method, lago.url + path, json=body, headers={"Authorization": f"Bearer {lago.api_key}"},
        timeout=30,
    )  # fmt: skip
    assert response.ok, response.text
    return dict(response.json())


def make_customers(lago: Sandbox, count: int) -> list[str]:
    ids = [f"cust_{n}" for n in range(count)]
    for ext in ids:
        api(lago, "POST", "/customers", {"customer": {"external_id": ext, "currency": "EUR"}})
    return ids


def summary(proc: subprocess.CompletedProcess[str], stream: str) -> dict[str, int]:
    """The counts of a stream's summary line on stderr."""
    line = next(x for x in proc.stderr.splitlines() if f"summary stream={stream} " in x)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def wallet_messages(rows: list[dict[str, Any]]) -> list[dict]:
    return [
        schema("wallets", WALLET_PROPS, ["external_customer_id", "code"]),
        *(record("wallets", r) for r in rows),
    ]


def wallet_rows(customers: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [
        {"external_customer_id": c, "code": code, "name": f"{code} of {c}", "rate_amount": 1,
         "currency": "EUR", "priority": 10 + n, "metadata": {"team": "ops"},
         "paid_credits": 100, "granted_credits": "5", **extra}
        for n, c in enumerate(customers)
        for code in ("prepaid", "promo")
    ]  # fmt: skip


def active(dump: dict) -> dict[tuple[str, str], dict]:
    """Active wallets by (customer, code); fails when one key has two."""
    out: dict[tuple[str, str], dict] = {}
    for wallet in dump["wallets"]:
        if wallet["status"] == "active":
            key = (wallet["external_customer_id"], wallet["code"])
            assert key not in out, f"two active wallets {key}"
            out[key] = wallet
    return out


def test_create_replay_update_replay(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    rows = wallet_rows(make_customers(lago, 10))
    first = run_cli(tmp_path, config, wallet_messages(rows))
    assert first.returncode == 0, first.stderr[-2000:]
    assert summary(first, "wallets")["delivered"] == 20
    assert "never grants credits" in first.stderr
    dump = lago.dump()
    wallets = active(dump)
    assert len(wallets) == 20
    main = wallets[("cust_3", "prepaid")]
    assert (main["name"], main["priority"], main["rate_amount"], main["metadata"]) == (
        "prepaid of cust_3", 13, "1.0", {"team": "ops"},
    )  # fmt: skip
    assert all(w["credits_balance"] == "0.0" for w in wallets.values())
    assert dump["wallet_transactions"] == []  # credits only through wallet_transactions

    lago.requests(clear=True)
    again = run_cli(tmp_path, config, wallet_messages(rows))
    assert again.returncode == 0, again.stderr[-2000:]
    assert summary(again, "wallets")["already_present"] == 20
    assert lago.dump() == dump
    assert not [r for r in lago.requests() if r["method"] == "PUT"]

    changed = [
        {**r, "name": "renamed", "priority": 1} if r["external_customer_id"] in ("cust_1", "cust_2")
        else r
        for r in rows
    ]  # fmt: skip
    lago.requests(clear=True)
    update = run_cli(tmp_path, config, wallet_messages(changed))
    assert update.returncode == 0, update.stderr[-2000:]
    counts = summary(update, "wallets")
    assert (counts["delivered"], counts["already_present"]) == (4, 16)
    assert len([r for r in lago.requests() if r["method"] == "PUT"]) == 4
    updated = lago.dump()
    assert active(updated)[("cust_1", "promo")]["name"] == "renamed"
    ids = {w["lago_id"] for w in wallets.values()}
    assert {w["lago_id"] for w in active(updated).values()} == ids
    replay = run_cli(tmp_path, config, wallet_messages(changed))
    assert summary(replay, "wallets")["already_present"] == 20
    assert lago.dump() == updated


def test_faults_leave_one_wallet_per_key(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    rows = wallet_rows(make_customers(lago, 30))
    lago.set_faults(FAULTS)
    for _ in range(3):
        proc = run_cli(tmp_path, {**config, "max_retries": 10}, wallet_messages(rows))
        assert proc.returncode == 0, proc.stderr[-2000:]
    fired = {r["fault"] for r in lago.requests() if r["fault"]}
    lago.set_faults([])
    assert fired == {"lost_response", "error", "rate_limit"}
    dump = lago.dump()
    assert len(dump["wallets"]) == len(active(dump)) == 60
    assert dump["wallet_transactions"] == []


def test_bad_rows_are_dead_lettered_with_lagos_reason(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    make_customers(lago, 2)
    api(lago, "POST", "/wallets", {"wallet": {"external_customer_id": "cust_1", "code": "fixed",
                                              "rate_amount": "2"}})  # fmt: skip
    rows = [
        {"external_customer_id": "cust_0", "code": "ok", "rate_amount": "1"},
        {"external_customer_id": "nobody", "code": "x", "rate_amount": "1"},
        {"external_customer_id": "cust_0", "code": "zero", "rate_amount": "0"},
        {"external_customer_id": "cust_0", "code": "", "rate_amount": "1"},
        {"external_customer_id": "cust_1", "code": "fixed", "rate_amount": "3"},
        {"external_customer_id": "cust_0", "code": "late", "rate_amount": "1",
         "expiration_at": "2001-01-01T00:00:00Z"},
        {"external_customer_id": "cust_0", "code": "old", "status": "terminated"},
    ]  # fmt: skip
    proc = run_cli(tmp_path, config, wallet_messages(rows))
    assert proc.returncode == 1
    counts = summary(proc, "wallets")
    assert (counts["delivered"], counts["rejected"], counts["skipped"]) == (1, 5, 1)
    letters = {
        (d["record"]["external_customer_id"], d["record"]["code"]): d
        for d in dead_letters(config["dead_letter_path"])
    }
    assert (letters["nobody", "x"]["http_status"], letters["nobody", "x"]["error_code"]) == (
        404, "customer_not_found",
    )  # fmt: skip
    assert letters["cust_0", "zero"]["details"] == {"rate_amount": ["value_is_out_of_range"]}
    assert letters["cust_0", ""]["details"] == {"code": ["value_is_mandatory"]}
    assert letters["cust_1", "fixed"]["details"] == {"rate_amount": ["not_updatable"]}
    assert letters["cust_0", "late"]["details"] == {"expiration_at": ["invalid_date"]}


def test_dry_run_sends_nothing(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    rows = wallet_rows(make_customers(lago, 3))
    lago.requests(clear=True)
    proc = run_cli(tmp_path, {**config, "dry_run": True}, wallet_messages(rows))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary(proc, "wallets")["delivered"] == 6
    assert "dry run: would POST /wallets" in proc.stderr
    assert lago.requests() == []
    assert lago.dump()["wallets"] == []
