"""Subscriptions from one table, through the console script: create, update, terminate."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import requests

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    dead_letters,
    record,
    run_cli,
    schema,
    usage_rows,
)

ANY_PROPS = {"external_id": {"type": "string"}}
FAULTS = [
    {"fault": "lost_response", "probability": 0.05, "seed": 1},
    {"fault": "error", "status": 503, "probability": 0.05, "seed": 2},
    {"fault": "rate_limit", "probability": 0.05, "reset_seconds": 0, "seed": 3},
]


def subscriptions(*rows: dict[str, Any]) -> list[dict]:
    return [
        schema("subscriptions", ANY_PROPS, ["external_id"]),
        *(record("subscriptions", r) for r in rows),
    ]


def summary(proc: Any, stream: str = "subscriptions") -> dict[str, int]:
    """The counts of a stream's summary line."""
    line = next(x for x in proc.stderr.splitlines() if f"summary stream={stream} " in x)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def writes(lago: Sandbox) -> list[tuple[str, str]]:
    """(method, path) of the writes the sandbox received, checks left out."""
    return [
        (r["method"], r["path"].split("/api/v1", 1)[1] + (f"?{r['query']}" if r["query"] else ""))
        for r in lago.requests()
        if r["method"] in ("POST", "PUT", "DELETE") and r["body_size"] != len(b'{"events":[]}')
    ]


def days(n: int) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=n)).strftime("%Y-%m-%dT00:00:00Z")


def rows_of(lago: Sandbox, external_id: str) -> list[dict]:
    return [s for s in lago.dump()["subscriptions"] if s["external_id"] == external_id]


def test_create_update_and_replays_change_nothing(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    base = {"external_customer_id": "acme", "plan_code": plan["code"]}
    first = [
        {**base, "external_id": "s_a", "name": "A", "ending_at": days(400)},
        {**base, "external_id": "s_p", "subscription_at": days(20), "status": "pending"},
    ]
    proc = run_cli(tmp_path, config, subscriptions(*first))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["delivered"] == 2
    created = lago.dump()["subscriptions"]

    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions(*first))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 2
    assert lago.dump()["subscriptions"] == created
    assert all(method == "POST" for method, _ in writes(lago))  # no PUT, no DELETE

    update = [
        {**first[0], "name": "A2", "ending_at": days(500)},
        {**first[1], "subscription_at": days(30)},
    ]
    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions(*update))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["delivered"] == 2
    assert sorted(w for w in writes(lago) if w[0] == "PUT") == [
        ("PUT", "/subscriptions/s_a"),
        ("PUT", "/subscriptions/s_p?status=pending"),
    ]
    [a] = rows_of(lago, "s_a")
    [p] = rows_of(lago, "s_p")
    assert (a["name"], a["ending_at"]) == ("A2", days(500))
    assert (p["status"], p["subscription_at"]) == ("pending", days(30))
    updated = lago.dump()["subscriptions"]

    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions(*update))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 2
    assert lago.dump()["subscriptions"] == updated


def test_created_then_plan_changed_then_terminated_over_three_runs(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    dear = max(
        lago.dump()["plans"],
        key=lambda p: p["amount_cents"] * (1 if p["interval"] == "yearly" else 12),
    )
    base = {"external_id": "s_1", "external_customer_id": "acme"}
    runs = [
        {**base, "plan_code": plan["code"], "status": "active"},
        {**base, "plan_code": dear["code"], "status": "active"},
        {**base, "plan_code": dear["code"], "status": "terminated"},
    ]
    for row in runs:
        proc = run_cli(tmp_path, config, subscriptions(row))
        assert proc.returncode == 0, proc.stderr
        assert summary(proc)["delivered"] == 1
    statuses = sorted((s["plan_code"], s["status"]) for s in rows_of(lago, "s_1"))
    assert statuses == sorted([(plan["code"], "terminated"), (dear["code"], "terminated")])
    ended = lago.dump()

    # Terminating it again: a GET confirms it is terminated, no DELETE is sent.
    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions(runs[2]))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 1
    assert writes(lago) == []
    assert lago.dump() == ended

    # The first run replayed after a re-creation by someone else: the row names the old
    # plan, so the newer subscription is left alone (no DELETE).
    proc = run_cli(tmp_path, config, subscriptions({**base, "plan_code": plan["code"]}))
    assert proc.returncode == 0
    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions({**runs[2], "terminated_at": days(-1)}))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["skipped"] == 1
    assert writes(lago) == []


def test_a_pending_subscription_is_canceled(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    row = {"external_id": "s_f", "external_customer_id": "acme", "plan_code": plan["code"],
           "subscription_at": days(15), "status": "pending"}  # fmt: skip
    proc = run_cli(tmp_path, config, subscriptions(row, {**row, "status": "canceled"}))
    assert proc.returncode == 0, proc.stderr
    [sub] = rows_of(lago, "s_f")
    assert sub["status"] == "canceled"
    assert ("DELETE", "/subscriptions/s_f?status=pending") in writes(lago)
    before = lago.dump()
    proc = run_cli(tmp_path, config, subscriptions(row, {**row, "status": "canceled"}))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 2
    assert lago.dump() == before


def test_a_termination_follows_the_events_received_before_it(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, tmp_path: Path
) -> None:
    row = {"external_id": "s_e", "external_customer_id": "acme", "plan_code": plan["code"]}
    before, after = (
        usage_rows(150, ["s_e"], metric_code),
        usage_rows(20, ["s_e"], metric_code, start=150),
    )
    messages = [
        schema("subscriptions", ANY_PROPS, ["external_id"]),
        schema("events", EVENT_PROPS, ["id"]),
        record("subscriptions", row),
        *(record("events", e) for e in before),
        record("subscriptions", {**row, "status": "terminated"}),
        *(record("events", e) for e in after),
    ]
    proc = run_cli(tmp_path, config, messages)
    assert proc.returncode == 0, proc.stderr
    order = writes(lago)
    delete = order.index(("DELETE", "/subscriptions/s_e"))
    batches = [i for i, w in enumerate(order) if w == ("POST", "/events/batch")]
    assert order[0] == ("POST", "/subscriptions")
    assert len([i for i in batches if i < delete]) == 2  # the 150 events before it
    assert len([i for i in batches if i > delete]) == 1  # the 20 after it
    assert summary(proc, "events")["delivered"] == 170
    [sub] = rows_of(lago, "s_e")
    assert sub["status"] == "terminated"


def test_faults_over_three_replays_leave_one_subscription_each(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    base = {"external_customer_id": "acme", "plan_code": plan["code"]}
    rows = [{**base, "external_id": f"s_{i}", "name": f"N{i}"} for i in range(40)]
    ends = [{**rows[i], "status": "terminated"} for i in range(10)]
    lago.set_faults(FAULTS)
    for _ in range(3):
        proc = run_cli(tmp_path, {**config, "max_retries": 8}, subscriptions(*rows, *ends))
        assert proc.returncode == 0, proc.stderr
    lago.set_faults([])
    subs = lago.dump()["subscriptions"]
    for i in range(40):
        [sub] = [s for s in subs if s["external_id"] == f"s_{i}"]
        assert (sub["status"], sub["name"]) == ("terminated" if i < 10 else "active", f"N{i}")
    assert any(r["fault"] for r in lago.requests())


def test_bad_rows_are_dead_lettered_with_lagos_reason(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    base = {"external_customer_id": "acme", "plan_code": plan["code"]}
    rows = [
        {**base, "external_id": "s_ok"},
        {**base, "external_id": "s_ok", "ending_at": "2020-01-01T00:00:00Z"},  # in the past
        {**base, "external_id": "s_prem", "plan_overrides": {"amount_cents": 1}},
        {**base, "external_id": "s_never", "status": "terminated"},
    ]
    proc = run_cli(tmp_path, config, subscriptions(*rows))
    assert proc.returncode == 1
    letters = {
        (x["record"]["external_id"], x["error_code"])
        for x in dead_letters(config["dead_letter_path"])
    }
    assert letters == {
        ("s_ok", "validation_errors"),
        ("s_prem", "feature_unavailable"),
        ("s_never", "subscription_not_found"),
    }


def test_a_dry_run_sends_nothing(lago: Sandbox, config: dict, plan: dict, tmp_path: Path) -> None:
    row = {"external_id": "s_d", "external_customer_id": "acme", "plan_code": plan["code"]}
    proc = run_cli(
        tmp_path, {**config, "dry_run": True}, subscriptions(row, {**row, "status": "terminated"})
    )
    assert proc.returncode == 0, proc.stderr
    assert "would DELETE /subscriptions/s_d" in proc.stderr
    assert lago.requests() == []


def test_an_ended_subscription_is_not_started_again(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    # Creations and ends in different batches, replayed; and one ended in Lago directly.
    base = {"external_customer_id": "acme", "plan_code": plan["code"]}
    rows = [{**base, "external_id": f"s_{i}"} for i in range(4)]
    messages = subscriptions(*rows, {**rows[0], "status": "terminated"})
    small = {**config, "batch_size": 2}
    proc = run_cli(tmp_path, small, messages)
    assert proc.returncode == 0, proc.stderr
    ended = requests.delete(
        f"{lago.url}/subscriptions/s_1", headers={"Authorization": f"Bearer {lago.api_key}"}
    )
    assert ended.status_code == 200
    before = lago.dump()
    proc = run_cli(tmp_path, small, messages)
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 5
    assert lago.dump() == before
    # A row with a new subscription_at starts it again.
    proc = run_cli(tmp_path, config, subscriptions({**rows[1], "subscription_at": days(-3)}))
    assert proc.returncode == 0, proc.stderr
    assert sorted(s["status"] for s in rows_of(lago, "s_1")) == ["active", "terminated"]


def test_a_history_row_of_a_subscription_lago_never_had_is_skipped(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    row = {"external_id": "s_h", "external_customer_id": "acme", "plan_code": plan["code"],
           "status": "terminated", "terminated_at": days(-10)}  # fmt: skip
    proc = run_cli(tmp_path, config, subscriptions(row))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["skipped"] == 1
    assert rows_of(lago, "s_h") == []


def test_an_ending_row_leaves_a_re_created_subscription_alone(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    row = {"external_id": "s_r", "external_customer_id": "acme", "plan_code": plan["code"],
           "subscription_at": days(-30)}  # fmt: skip
    proc = run_cli(tmp_path, config, subscriptions(row, {**row, "status": "terminated"}))
    assert proc.returncode == 0, proc.stderr
    # Re-created since, with another start: a replay of the ending row must not end it.
    proc = run_cli(tmp_path, config, subscriptions({**row, "subscription_at": days(-1)}))
    assert proc.returncode == 0, proc.stderr
    lago.requests(clear=True)
    proc = run_cli(tmp_path, config, subscriptions(row, {**row, "status": "terminated"}))
    assert proc.returncode == 0, proc.stderr
    assert [w for w in writes(lago) if w[0] == "DELETE"] == []
    assert sorted(s["status"] for s in rows_of(lago, "s_r")) == ["active", "terminated"]


def test_a_downgrade_replayed_is_not_scheduled_again(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    dear = max(
        lago.dump()["plans"],
        key=lambda p: p["amount_cents"] * (1 if p["interval"] == "yearly" else 12),
    )
    row = {"external_id": "s_dn", "external_customer_id": "acme", "plan_code": dear["code"]}
    proc = run_cli(tmp_path, config, subscriptions(row))
    assert proc.returncode == 0, proc.stderr
    down = subscriptions({**row, "plan_code": plan["code"]})
    proc = run_cli(tmp_path, config, down)
    assert proc.returncode == 0, proc.stderr
    before = lago.dump()
    assert sorted(s["status"] for s in rows_of(lago, "s_dn")) == ["active", "pending"]
    proc = run_cli(tmp_path, config, down)
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 1
    assert lago.dump() == before


def test_statuses_in_other_spellings_end_and_unknown_ones_are_rejected(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    base = {"external_customer_id": "acme", "plan_code": plan["code"]}
    live = [{**base, "external_id": f"s_{n}"} for n in range(3)]
    assert run_cli(tmp_path, config, subscriptions(*live)).returncode == 0
    ending = [
        {**live[0], "status": " Terminated"},
        {**live[1], "status": "TERMINATED"},
        {**base, "external_id": "s_new", "status": "bogus"},
    ]
    proc = run_cli(tmp_path, config, subscriptions(*ending))
    assert proc.returncode == 1  # the unknown status is a dead letter
    statuses = {s["external_id"]: s["status"] for s in lago.dump()["subscriptions"]}
    assert statuses == {"s_0": "terminated", "s_1": "terminated", "s_2": "active"}
    [letter] = dead_letters(config["dead_letter_path"])
    assert letter["details"] == {"status": ["value_is_invalid"]}


def test_a_table_of_successive_plans_replayed_schedules_no_downgrade(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    plans = sorted(lago.dump()["plans"], key=lambda p: (p["amount_cents"], p["code"]))
    history = [
        {"external_id": "s_h", "external_customer_id": "acme", "plan_code": plans[0]["code"]},
        {"external_id": "s_h", "external_customer_id": "acme", "plan_code": plans[1]["code"]},
    ]
    first = run_cli(tmp_path, config, subscriptions(*history))
    assert first.returncode == 0, first.stderr
    assert summary(first)["skipped"] == 1  # the older plan: a later row supersedes it
    after = lago.dump()["subscriptions"]
    assert [(s["plan_code"], s["status"]) for s in after] == [(plans[1]["code"], "active")]
    for _ in range(2):  # replays of the whole history
        again = run_cli(tmp_path, config, subscriptions(*history))
        assert again.returncode == 0, again.stderr
        assert lago.dump()["subscriptions"] == after  # no downgrade scheduled


def test_a_downgrade_listed_before_its_active_row_in_another_batch_stays_a_downgrade(
    lago: Sandbox, config: dict, plan: dict, tmp_path: Path
) -> None:
    # As tap-lago lists them: the pending downgrade (naming the plan it follows) comes
    # first, and with batch_size 1 its active row is written in a later batch.
    dear = max(
        lago.dump()["plans"],
        key=lambda p: p["amount_cents"] * (1 if p["interval"] == "yearly" else 12),
    )
    base = {"external_id": "s_split", "external_customer_id": "acme"}
    pending = {
        **base,
        "plan_code": plan["code"],
        "status": "pending",
        "previous_plan_code": dear["code"],
    }
    active = {**base, "plan_code": dear["code"], "status": "active", "next_plan_code": plan["code"]}
    settings = {**config, "batch_size": 1}
    proc = run_cli(tmp_path, settings, subscriptions(pending, active))
    assert proc.returncode == 0, proc.stderr
    rows = {s["status"]: s for s in rows_of(lago, "s_split")}
    assert set(rows) == {"active", "pending"}
    assert rows["active"]["plan_code"] == dear["code"]
    assert rows["active"]["next_plan_code"] == rows["pending"]["plan_code"] == plan["code"]
    before = lago.dump()
    proc = run_cli(tmp_path, settings, subscriptions(pending, active))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["already_present"] == 2
    assert lago.dump() == before
