"""Customers deleted upstream are deleted in Lago, last, exactly once in effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    dead_letters,
    events_messages,
    record,
    run_cli,
    schema,
    subscriptions_for,
    usage_rows,
)

PROPS = {
    "external_id": {"type": "string"},
    "name": {"type": "string"},
    "_sdc_deleted_at": {"type": ["string", "null"]},
    "is_deleted": {"type": ["boolean", "null"]},
}


def customers(*rows: dict) -> list[dict]:
    return [schema("customers", PROPS, ["external_id"]), *(record("customers", r) for r in rows)]


def kept(lago: Sandbox) -> set[str]:
    return {c["external_id"] for c in lago.dump()["customers"]}


def summary(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "summary stream=customers" in line)


def test_a_deleted_row_deletes_the_customer_after_every_other_write_and_replays_are_no_ops(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, tmp_path: Path
) -> None:
    rows = [{"external_id": f"c{n}", "name": f"C{n}"} for n in range(4)]
    assert run_cli(tmp_path, config, customers(*rows)).returncode == 0
    subs = subscriptions_for(lago, ["c0"], plan["code"])
    deleted: list[dict[str, Any]] = [
        {**rows[0], "_sdc_deleted_at": "2026-11-29T10:00:00Z"},  # as an SDK tap marks it
        {**rows[1], "is_deleted": True},  # ignored: not the configured column
        {**rows[2], "_sdc_deleted_at": None},
    ]
    # The events of c0's subscription come after its deletion in the input, yet land first.
    messages = [*customers(*deleted), *events_messages(usage_rows(5, subs, metric_code))]
    lago.requests(clear=True)
    done = run_cli(tmp_path, config, messages)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kept(lago) == {"c1", "c2", "c3"}
    writes = [(r["method"], r["path"].split("/api/v1")[1]) for r in lago.requests()
              if r["method"] in ("POST", "DELETE") and r["body_size"] != 13]  # fmt: skip
    assert writes[-1] == ("DELETE", "/customers/c0")
    assert ("POST", "/events/batch") in writes[:-1]
    # c0 deleted; c1 and c2 unchanged (read, compared, not sent again).
    assert "received=3 delivered=1 already_present=2" in summary(done.stderr)

    again = run_cli(tmp_path, config, customers(*deleted))
    assert again.returncode == 0
    assert "delivered=0 already_present=3" in summary(again.stderr)  # deleting again: present
    assert kept(lago) == {"c1", "c2", "c3"}

    by_flag = run_cli(
        tmp_path, {**config, "customer_deleted_column": "is_deleted"}, customers(*deleted)
    )
    assert by_flag.returncode == 0
    assert kept(lago) == {"c0", "c2", "c3"}  # c0 came back (upserted), c1 was deleted
    assert not dead_letters(config["dead_letter_path"])


def test_a_dry_run_deletes_nothing(lago: Sandbox, config: dict, tmp_path: Path) -> None:
    assert run_cli(tmp_path, config, customers({"external_id": "c9", "name": "C9"})).returncode == 0
    lago.requests(clear=True)
    gone = {"external_id": "c9", "_sdc_deleted_at": "2026-01-01T00:00:00Z"}
    done = run_cli(tmp_path, {**config, "dry_run": True}, customers(gone))
    assert done.returncode == 0
    assert "dry run: would DELETE /customers/c9" in done.stderr
    assert lago.requests() == []
    assert kept(lago) == {"c9"}


def test_deletions_under_faults_delete_each_customer_once(
    lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    rows = [{"external_id": f"f{n}", "name": f"F{n}"} for n in range(40)]
    assert run_cli(tmp_path, config, customers(*rows)).returncode == 0
    lago.set_faults(
        [
            {"path": "/api/v1/customers/", "fault": "lost_response", "probability": 0.2, "seed": 1},
            {"path": "/api/v1/customers/", "fault": "error", "status": 503, "probability": 0.1,
             "seed": 2},
        ]
    )  # fmt: skip
    gone = [{**r, "_sdc_deleted_at": "2026-11-29T10:00:00Z"} for r in rows[:20]]
    for _ in range(3):
        done = run_cli(tmp_path, {**config, "max_retries": 10}, customers(*gone))
        assert done.returncode == 0, done.stderr[-2000:]
    assert all(rule["fired"] > 0 for rule in lago.faults())
    lago.set_faults([])
    assert kept(lago) == {f"f{n}" for n in range(20, 40)}
