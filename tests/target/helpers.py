"""Helpers for target-lago tests: Singer messages and ways to run the target."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from target_lago.target import TargetLago

from tests.lago_sandbox import Sandbox

# Singer messages


def schema(stream: str, properties: dict[str, Any], keys: Iterable[str] = ()) -> dict:
    """A SCHEMA message."""
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": properties},
        "key_properties": list(keys),
    }


def record(stream: str, rec: dict[str, Any]) -> dict:
    """A RECORD message."""
    return {"type": "RECORD", "stream": stream, "record": rec}


def state(value: dict[str, Any]) -> dict:
    """A STATE message."""
    return {"type": "STATE", "value": value}


ANY: dict[str, Any] = {}  # a JSON-schema property accepting any value
EVENT_PROPS = {
    "id": {"type": "integer"},
    "code": {"type": ["string", "null"]},
    "external_subscription_id": {"type": ["string", "null"]},
    "timestamp": ANY,
    "units": {"type": ["number", "null"]},
    "transaction_id": {"type": ["string", "null"]},
}


def usage_rows(
    count: int, subscriptions: list[str], code: str, *, start: int = 0
) -> list[dict[str, Any]]:
    """Warehouse-like usage rows keyed by `id` (no transaction id: the target derives it)."""
    base = 1_735_689_600  # 2025-01-01T00:00:00Z
    return [
        {
            "id": i,
            "code": code,
            "external_subscription_id": subscriptions[i % len(subscriptions)],
            "timestamp": base + i * 37,
            "units": i % 9 + 1,
        }
        for i in range(start, start + count)
    ]


def events_messages(rows: list[dict[str, Any]], stream: str = "events") -> list[dict]:
    """SCHEMA + RECORDs of an events stream keyed by `id`."""
    return [schema(stream, EVENT_PROPS, ["id"]), *(record(stream, r) for r in rows)]


def stored_as(counts: dict[str, int], event_store: str) -> int:
    """Events a run counts as stored: delivered or already present (postgres store), or
    acknowledged without telling which (clickhouse store)."""
    if event_store == "clickhouse":
        assert counts["delivered"] == counts["already_present"] == 0, counts
        return counts["accepted_unverified"]
    assert counts["accepted_unverified"] == 0, counts
    return counts["delivered"] + counts["already_present"]


def to_lines(messages: Iterable[dict]) -> str:
    """Singer messages as JSONL text."""
    return "".join(json.dumps(m) + "\n" for m in messages)


# Running the target


@dataclass
class Run:
    """Outcome of an in-process run."""

    target: TargetLago
    stdout: str
    error: BaseException | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def states(self) -> list[dict]:
        """STATE values the target wrote to stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_target(config: dict[str, Any], messages: Iterable[dict], *, stdout: Any = None) -> Run:
    """Run TargetLago in this process on the given messages; never raises."""
    target = TargetLago(config=config)
    out = stdout if stdout is not None else io.StringIO()
    error: BaseException | None = None
    with contextlib.redirect_stdout(out):
        try:
            target.listen(io.StringIO(to_lines(messages)))
        except Exception as exc:
            error = exc
    counts = {
        name: {
            key: getattr(stats, key)
            for key in (
                "received",
                "delivered",
                "already_present",
                "rejected",
                "skipped",
                "accepted_unverified",
            )
        }
        for name, stats in target.report.streams.items()
    }
    text = out.getvalue() if isinstance(out, io.StringIO) else ""
    return Run(target=target, stdout=text, error=error, counts=counts)


def cli_command(config_path: Path) -> list[str]:
    """The target-lago console script (as installed), with a config file."""
    script = Path(sys.executable).with_name("target-lago")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "target_lago"]
    return [*exe, "--config", str(config_path)]


def cli_env() -> dict[str, str]:
    """Environment for a subprocess run (info logs on stderr)."""
    env = dict(os.environ)
    env.pop("TARGET_LAGO_API_KEY", None)
    return env


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    """Write a config file for the CLI."""
    path = tmp_path / "target_config.json"
    path.write_text(json.dumps(config))
    return path


def run_cli(
    tmp_path: Path, config: dict[str, Any], messages: Iterable[dict], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the console script on the messages; returns the finished process."""
    return subprocess.run(
        cli_command(write_config(tmp_path, config)),
        input=to_lines(messages),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=cli_env(),
        check=False,
    )


def dead_letters(path: str | Path) -> list[dict[str, Any]]:
    """Lines of a dead-letter file ([] when absent)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


CHECK_BODY = b'{"events":[]}'  # target-lago's start-up check of the events endpoint


def is_check(request: dict[str, Any]) -> bool:
    """Whether a logged request is the target's start-up check of the events endpoint."""
    return request["path"].endswith("/events/batch") and request["body_size"] == len(CHECK_BODY)


def posts(lago: Sandbox) -> list[dict[str, Any]]:
    """POST requests the sandbox received under /api/v1, in arrival order (no checks)."""
    return [
        r
        for r in lago.requests()
        if r["method"] == "POST" and "/api/v1/" in r["path"] and not is_check(r)
    ]


def subscriptions_for(lago: Sandbox, customers: list[str], plan_code: str) -> list[str]:
    """Create one active subscription per customer through the sandbox's own API."""
    ids = []
    for customer in customers:
        body = {
            "subscription": {
                "external_id": f"sub_{customer}",
                "external_customer_id": customer,
                "plan_code": plan_code,
            }
        }
        response = requests.post(
            f"{lago.url}/subscriptions",
            json=body,
            headers={"Authorization": f"Bearer {lago.api_key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        ids.append(f"sub_{customer}")
    return ids
