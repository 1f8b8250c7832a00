"""STATE only after acknowledgement; 401 stops the run; routing and config errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from singer_sdk.exceptions import ConfigValidationError
from target_lago.client import LagoAuthError, LagoUnavailableError
from target_lago.target import StreamRoutingError, TargetLago

from tests.lago_sandbox import Sandbox
from tests.target.helpers import (
    EVENT_PROPS,
    events_messages,
    record,
    run_cli,
    run_target,
    schema,
    state,
    usage_rows,
)

BATCH = "/api/v1/events/batch"


class StateProbe(io.StringIO):
    """stdout that records how many events Lago holds at the moment each STATE is written."""

    def __init__(self, lago: Sandbox) -> None:
        super().__init__()
        self.lago = lago
        self.seen: list[tuple[dict, int]] = []

    def write(self, text: str) -> int:
        if text.strip():
            self.seen.append((json.loads(text), len(self.lago.dump()["events"])))
        return super().write(text)


def test_state_is_written_only_after_every_earlier_event_is_acknowledged(
    lago: Sandbox, config: dict, metric_code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drain (and so emit the latest STATE) after every record, with slow event writes
    # in flight: each STATE must wait for the events received before it.
    monkeypatch.setattr(TargetLago, "_MAX_RECORD_AGE_IN_MINUTES", 0)
    lago.set_faults([{"method": "POST", "path": BATCH, "fault": "latency", "delay_ms": 40}])
    rows = usage_rows(45, ["sub_a"], metric_code)
    messages: list[dict[str, Any]] = [schema("events", EVENT_PROPS, ["id"])]
    for n, row in enumerate(rows, start=1):
        messages.append(record("events", row))
        if n % 15 == 0:
            messages.append(state({"events_sent": n}))
    probe = StateProbe(lago)

    run = run_target({**config, "max_in_flight": 4}, messages, stdout=probe)

    assert run.error is None
    assert probe.seen, "no STATE was written"
    for value, stored in probe.seen:
        assert stored >= value["events_sent"], (value, stored)
    assert probe.seen[-1] == ({"events_sent": 45}, 45)


def test_no_state_when_a_batch_before_it_was_never_acknowledged(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    lago.set_faults([{"method": "POST", "path": BATCH, "fault": "error", "status": 503}])
    messages = [*events_messages(usage_rows(120, ["sub_a"], metric_code)), state({"n": 120})]
    run = run_target({**config, "max_retries": 2}, messages)
    assert isinstance(run.error, LagoUnavailableError)
    assert "after 2 retries" in str(run.error)
    assert run.states == []
    assert lago.dump()["events"] == []


def test_wrong_api_key_stops_at_once_without_showing_the_key(
    lago: Sandbox, config: dict, metric_code: str
) -> None:
    secret = "wrong-key-7f3a9c"
    messages = [*events_messages(usage_rows(250, ["sub_a"], metric_code)), state({"n": 1})]
    run = run_target({**config, "api_key": secret, "max_in_flight": 1}, messages)
    assert isinstance(run.error, LagoAuthError)
    text = str(run.error)
    assert "HTTP 401" in text
    assert f"{lago.url}/events/batch" in text
    assert secret not in text
    assert len(lago.requests()) == 1  # the start-up check: no retry, no batch
    assert run.states == []


def test_wrong_api_key_cli_exits_1_with_one_clear_line(
    lago: Sandbox, config: dict, metric_code: str, tmp_path: Path
) -> None:
    secret = "wrong-key-cli-55"
    messages = events_messages(usage_rows(5, ["sub_a"], metric_code))
    proc = run_cli(tmp_path, {**config, "api_key": secret}, messages)
    assert proc.returncode == 1
    assert "HTTP 401 Unauthorized" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert secret not in proc.stderr + proc.stdout
    assert not any(secret in p.read_text() for p in tmp_path.iterdir() if p.suffix == ".jsonl")


def test_stream_without_action_fails_at_its_schema(lago: Sandbox, config: dict) -> None:
    run = run_target(config, [schema("orders", {"id": {"type": "integer"}}, ["id"])])
    assert isinstance(run.error, StreamRoutingError)
    message = str(run.error)
    assert "'orders'" in message
    assert all(action in message for action in ("customers", "subscriptions", "events"))
    assert "stream_actions" in message
    assert lago.requests() == []


def test_stream_actions_route_exact_names_defaults_and_globs(
    lago: Sandbox, config: dict, plan: dict, metric_code: str
) -> None:
    cfg = {
        **config,
        "stream_actions": {
            "*": "events",
            "crm_accounts": "customers",
            "billing_*_subs": "subscriptions",
        },
    }
    usage = usage_rows(3, ["sub_g"], metric_code)
    messages = [
        schema("crm_accounts", {"external_id": {"type": "string"}}, ["external_id"]),
        record("crm_accounts", {"external_id": "cust_g", "name": "Glob", "currency": "EUR"}),
        schema("customers", {"external_id": {"type": "string"}}, ["external_id"]),
        record("customers", {"external_id": "cust_d", "name": "Default"}),
        schema("billing_eu_subs", {"external_id": {"type": "string"}}, ["external_id"]),
        record(
            "billing_eu_subs",
            {"external_id": "sub_g", "external_customer_id": "cust_g", "plan_code": plan["code"]},
        ),
        *events_messages(usage, stream="warehouse_usage"),
    ]
    run = run_target(cfg, messages)
    assert run.error is None
    actions = {name: stats.action for name, stats in run.target.report.streams.items()}
    assert actions == {
        "crm_accounts": "customers",
        "customers": "customers",
        "billing_eu_subs": "subscriptions",
        "warehouse_usage": "events",
    }
    dump = lago.dump()
    assert {c["external_id"] for c in dump["customers"]} == {"cust_g", "cust_d"}
    assert [s["external_id"] for s in dump["subscriptions"]] == ["sub_g"]
    assert len(dump["events"]) == 3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"batch_size": 101}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"stream_actions": {"orders": "invoices"}}, "invoices"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"api_key": None}, "api_key"),
    ],
)
def test_bad_config_is_a_config_validation_error(config: dict, change: dict, expected: str) -> None:
    cfg = {**config, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(ConfigValidationError) as info:
        TargetLago(config=cfg)
    assert expected in " ".join([str(info.value), *info.value.errors])
