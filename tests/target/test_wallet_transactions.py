"""The wallet_transactions action through the console script: exactly one transaction per
record under replays, lost responses, 503s, 429s and kill -9."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    cli_command,
    cli_env,
    dead_letters,
    record,
    run_cli,
    run_target,
    schema,
    to_lines,
    write_config,
)
from tests.target.test_wallets import FAULTS, api, make_customers, summary

STREAM = "wallet_transactions"
PROPS = {"id": {"type": "integer"}, "external_customer_id": {"type": ["string", "null"]},
         "wallet_code": {"type": ["string", "null"]}, "granted_credits": {}, "paid_credits": {},
         "voided_credits": {}}  # fmt: skip
POST_PATH = "/api/v1/wallet_transactions"


def messages(rows: list[dict[str, Any]]) -> list[dict]:
    return [schema(STREAM, PROPS, ["id"]), *(record(STREAM, r) for r in rows)]


def make_wallets(lago: Sandbox, count: int) -> dict[str, str]:
    """One active `main` wallet per customer, with 1000 credits granted; customer -> lago_id."""
    out = {}
    for ext in make_customers(lago, count):
        body = {"external_customer_id": ext, "code": "main", "rate_amount": "1",
                "granted_credits": "1000"}  # fmt: skip
        out[ext] = api(lago, "POST", "/wallets", {"wallet": body})["wallet"]["lago_id"]
    return out


def rows_for(wallets: dict[str, str], count: int, start: int = 0) -> list[dict[str, Any]]:
    """Grants, top-ups and voids spread over the wallets; every fifth names the wallet_id."""
    customers = sorted(wallets)
    rows = []
    for n in range(start, start + count):
        customer = customers[n % len(customers)]
        row: dict[str, Any] = {"id": n, "name": f"row {n}"}
        if n % 5 == 0:
            row["wallet_id"] = wallets[customer]
        else:
            row.update(external_customer_id=customer, wallet_code="main")
        k = (n // len(customers)) % 3
        row[("granted_credits", "paid_credits", "voided_credits")[k]] = (2.5, 10, "0.75")[k]
        rows.append(row)
    return rows


def by_record(dump: dict) -> collections.Counter[str]:
    """Transactions per target_lago_id."""
    return collections.Counter(
        m["value"]
        for tx in dump["wallet_transactions"]
        for m in tx.get("metadata") or []
        if m["key"] == "target_lago_id"
    )


def test_create_replay_and_a_changed_record(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    wallets = make_wallets(lago, 6)
    rows = rows_for(wallets, 60)
    first = run_cli(tmp_path, config, messages(rows))
    assert first.returncode == 0, first.stderr[-2000:]
    assert summary(first, STREAM)["delivered"] == 60
    dump = lago.dump()
    ids = by_record(dump)
    assert len(ids) == 60 and set(ids.values()) == {1}
    mine = [tx for tx in dump["wallet_transactions"] if tx["name"] == "row 7"]
    assert [(tx["transaction_status"], tx["status"], tx["credit_amount"]) for tx in mine] == [
        ("purchased", "pending", "10.0")
    ]
    # Per customer: 1000 granted at creation, 2.5 per grant, minus 0.75 per void.
    balances = {w["external_customer_id"]: w["credits_balance"] for w in dump["wallets"]}
    assert balances["cust_0"] == "1007.75"  # 4 grants, 3 top-ups (pending), 3 voids
    replay = run_cli(tmp_path, config, messages(rows))
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert summary(replay, STREAM)["already_present"] == 60
    assert lago.dump() == dump
    # A record is a transaction: the same key with another amount is not a second one.
    changed = [{**r, "granted_credits": 99} if r["id"] == 0 else r for r in rows]
    again = run_cli(tmp_path, config, messages(changed))
    assert summary(again, STREAM)["already_present"] == 60
    assert lago.dump() == dump


def test_faults_over_three_replays_leave_one_transaction_per_record(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    wallets = make_wallets(lago, 8)
    rows = rows_for(wallets, 120)
    lago.set_faults(FAULTS)
    for _ in range(3):
        proc = run_cli(tmp_path, {**config, "max_retries": 10}, messages(rows))
        assert proc.returncode == 0, proc.stderr[-2000:]
    fired = collections.Counter(
        (r["method"], r["fault"]) for r in lago.requests() if r["fault"] and r["path"] == POST_PATH
    )
    lago.set_faults([])
    assert fired["POST", "lost_response"] > 0, fired
    ids = by_record(lago.dump())
    assert len(ids) == 120 and set(ids.values()) == {1}


def test_bad_rows_are_dead_lettered_with_lagos_reason(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    wallets = make_wallets(lago, 2)
    rows = [
        {"id": 1, "external_customer_id": "cust_0", "wallet_code": "main", "granted_credits": 1},
        {"id": 2, "external_customer_id": "cust_0", "wallet_code": "nope", "granted_credits": 1},
        {"id": 3, "external_customer_id": "cust_1", "wallet_code": "main", "voided_credits": 5000},
        {"id": 4, "wallet_id": wallets["cust_1"], "paid_credits": "abc"},
        {"id": 5, "external_customer_id": "ghost", "wallet_code": "main", "granted_credits": 1},
        {"id": 6, "wallet_id": wallets["cust_1"], "granted_credits": -2},
        {"id": 7, "wallet_id": wallets["cust_1"], "granted_credits": 0},
        {"external_customer_id": "cust_0", "wallet_code": "main", "granted_credits": 1},
    ]
    proc = run_cli(tmp_path, config, messages(rows))
    assert proc.returncode == 1
    counts = summary(proc, STREAM)
    assert (counts["delivered"], counts["rejected"], counts["skipped"]) == (1, 6, 1)
    letters = {d["record"].get("id"): d for d in dead_letters(config["dead_letter_path"])}
    assert letters[2]["error_code"] == "wallet_not_found"
    assert letters[2]["transaction_id"].startswith("tl-")
    assert (letters[3]["http_status"], letters[3]["details"]) == (
        422, {"voided_credits": ["insufficient_credits"]},
    )  # fmt: skip
    assert letters[4]["details"] == {"paid_credits": ["invalid_paid_credits", "invalid_amount"]}
    assert (letters[5]["http_status"], letters[5]["error_code"]) == (404, "customer_not_found")
    assert "negative" in letters[6]["message"]
    assert letters[None]["details"] == {"id": ["value_is_mandatory"]}


def test_dry_run_sends_nothing(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    wallets = make_wallets(lago, 2)
    before = lago.dump()
    lago.requests(clear=True)
    proc = run_cli(tmp_path, {**config, "dry_run": True}, messages(rows_for(wallets, 10)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary(proc, STREAM)["delivered"] == 10
    assert lago.requests() == []
    assert lago.dump() == before


def test_killed_mid_run_then_rerun_makes_each_transaction_once(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    wallets = make_wallets(lago, 10)
    rows = rows_for(wallets, 300)
    input_path = tmp_path / "transactions.singer"
    input_path.write_text(to_lines(messages(rows)))
    lago.set_faults(
        [
            {"method": "POST", "path": POST_PATH, "fault": "lost_response", "probability": 0.2},
            {"method": "POST", "path": POST_PATH, "fault": "latency", "delay_ms": 20},
        ]
    )
    command = cli_command(write_config(tmp_path, {**config, "max_retries": 10}))
    with input_path.open() as stdin:
        proc = subprocess.Popen(
            command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=tmp_path, env=cli_env(),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(by_record(lago.dump())) < 40 and time.monotonic() < deadline:
            assert proc.poll() is None, "the target finished before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert out == b""
    lago.set_faults([])
    partial = by_record(lago.dump())
    assert 0 < len(partial) < 300 and set(partial.values()) == {1}

    rerun = run_cli(tmp_path, config, messages(rows))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    counts = summary(rerun, STREAM)
    assert counts["already_present"] >= len(partial)
    assert counts["delivered"] + counts["already_present"] == 300
    ids = by_record(lago.dump())
    assert len(ids) == 300 and set(ids.values()) == {1}


def test_a_lago_without_the_metadata_filter_stops_the_run(
    lago: Sandbox, config: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from target_lago.actions import wallet_transactions as module

    original = module.list_all

    def unfiltered(client: Any, path: str, params: dict, root: str) -> Any:
        return original(client, path, {}, root)  # as lago-api before v1.51.0 answers

    monkeypatch.setattr(module, "list_all", unfiltered)
    wallets = make_wallets(lago, 1)  # its initial grant carries no target_lago_id
    run = run_target(config, messages(rows_for(wallets, 3)))
    assert isinstance(run.error, module.LagoFilterUnsupported), run.error
    assert "older than v1.51.0" in str(run.error)
    assert len(lago.dump()["wallet_transactions"]) == 1  # nothing posted


def test_amounts_become_exact_decimal_strings() -> None:
    import decimal

    from target_lago.actions.wallet_transactions import transaction_payload
    from target_lago.mapping import RecordRejected

    row = {"id": 1, "wallet_id": "w", "paid_credits": 10, "granted_credits": 0.1,
           "voided_credits": "1e3"}  # fmt: skip
    body = transaction_payload(row, ["id"])
    assert (body["paid_credits"], body["granted_credits"], body["voided_credits"]) == (
        "10", "0.1", "1000",
    )  # fmt: skip
    assert transaction_payload({**row, "paid_credits": decimal.Decimal("2.50")}, ["id"])[
        "paid_credits"
    ] == "2.5"  # one spelling per amount, as for events
    assert body["metadata"] == [{"key": "target_lago_id", "value": body["metadata"][0]["value"]}]
    assert body == transaction_payload({**row, "name": None, "loaded_at": 5}, ["id"])
    assert body != transaction_payload({**row, "id": 2}, ["id"])
    for field, value in [("paid_credits", True), ("granted_credits", "12,5"),
                         ("voided_credits", float("nan")), ("paid_credits", -1)]:  # fmt: skip
        with pytest.raises(RecordRejected) as caught:
            transaction_payload({**row, field: value}, ["id"])
        assert caught.value.details == {field: [f"invalid_{field}", "invalid_amount"]}


def test_customers_then_wallets_then_transactions_in_one_run(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    # The transactions come first in the input: they still wait for their wallet.
    msgs = [
        schema(STREAM, PROPS, ["id"]),
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        schema("wallets", {"code": {"type": "string"}}, ["external_customer_id", "code"]),
        *(record(STREAM, r) for r in [
            {"id": 1, "external_customer_id": "new", "wallet_code": "main", "granted_credits": 5},
            {"id": 2, "external_customer_id": "new", "wallet_code": "main", "voided_credits": 2},
        ]),
        record("customers", {"external_id": "new", "currency": "EUR"}),
        record("wallets", {"external_customer_id": "new", "code": "main", "rate_amount": "1"}),
    ]  # fmt: skip
    proc = run_cli(tmp_path, config, msgs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    writes = [r["path"].rsplit("/api/v1", 1)[1] for r in lago.requests()
              if r["method"] == "POST" and r["status"] == 200]  # fmt: skip
    assert writes == ["/customers", "/wallets", "/wallet_transactions", "/wallet_transactions"]
    [wallet] = lago.dump()["wallets"]
    assert wallet["credits_balance"] == "3.0"  # the void came after its grant
