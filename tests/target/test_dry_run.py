"""Dry run: everything validated and mapped, counts and payloads reported, nothing sent."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from target_lago.target import RecordsRejectedError

from tests.lago_sandbox import Sandbox
from tests.target.helpers import EVENT_PROPS, record, run_cli, run_target, schema, usage_rows


def messages(plan_code: str, metric_code: str) -> list[dict]:
    usage = usage_rows(12, ["sub_dry"], metric_code)
    usage[4]["timestamp"] = "not a time"
    return [
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        record("customers", {"external_id": "cust_dry", "name": "Dry"}),
        schema("subscriptions", {"external_id": {"type": "string"}}, ["external_id"]),
        record(
            "subscriptions",
            {"external_id": "sub_dry", "external_customer_id": "cust_dry", "plan_code": plan_code},
        ),
        schema("events", EVENT_PROPS, ["id"]),
        *(record("events", row) for row in usage),
    ]


def test_dry_run_sends_nothing_and_reports_payloads_and_rejections(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        run = run_target({**config, "dry_run": True}, messages(plan["code"], metric_code))

    assert lago.requests() == []  # not a single request, not even a GET
    assert isinstance(run.error, RecordsRejectedError)
    assert run.counts["events"] == {
        "received": 12, "delivered": 11, "already_present": 0, "rejected": 1, "skipped": 0,
        "accepted_unverified": 0,
    }  # fmt: skip
    assert run.counts["customers"]["delivered"] == 1
    assert run.counts["subscriptions"]["delivered"] == 1
    logs = caplog.text
    shown = [m for m in caplog.messages if m.startswith("dry run: would POST /events/batch")]
    assert len(shown) == 5  # the first payloads of the stream
    first = json.loads(shown[0].split(" ", 5)[5])
    assert first["events"][0]["code"] == metric_code
    assert isinstance(first["events"][0]["timestamp"], int)
    assert "dry run: would POST /customers" in logs
    assert "'timestamp' 'not a time' is not ISO-8601" in logs
    assert "summary stream=events action=events received=12 delivered=11" in logs
    assert not Path(config["dead_letter_path"]).exists()


def test_dry_run_cli_exit_status_follows_rejections(
    lago: Sandbox, config: dict, plan: dict, metric_code: str, tmp_path: Path
) -> None:
    strict = run_cli(tmp_path, {**config, "dry_run": True}, messages(plan["code"], metric_code))
    assert strict.returncode == 1
    assert "1 record(s) would be rejected" in strict.stderr
    lenient = run_cli(
        tmp_path,
        {**config, "dry_run": True, "allow_rejections": True},
        messages(plan["code"], metric_code),
    )
    assert lenient.returncode == 0, lenient.stderr
    assert lago.requests() == []
