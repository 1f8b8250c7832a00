"""tap-lago piped into target-lago copies an organisation into an empty one, idempotently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.lago_sandbox import Sandbox
from tests.target.helpers import cli_command, cli_env, dead_letters, write_config

COPIED = ("customers", "subscriptions", "events")


def tap_command(tmp_path: Path, source: Sandbox) -> list[str]:
    config = tmp_path / "tap_config.json"
    config.write_text(json.dumps({"api_key": source.api_key, "api_url": source.url}))
    script = Path(sys.executable).with_name("tap-lago")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "tap_lago"]
    discovered = subprocess.run(
        [*exe, "--config", str(config), "--discover"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    catalog = json.loads(discovered.stdout)
    for stream in catalog["streams"]:
        for entry in stream["metadata"]:
            if entry["breadcrumb"] == []:
                entry["metadata"]["selected"] = stream["tap_stream_id"] in COPIED
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(catalog))
    return [*exe, "--config", str(config), "--catalog", str(catalog_path)]


def pipe(tmp_path: Path, source: Sandbox, target_config: dict[str, Any]) -> str:
    """Run `tap-lago | target-lago`; returns the target's stderr."""
    tap = subprocess.Popen(
        tap_command(tmp_path, source),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    target = subprocess.run(
        cli_command(write_config(tmp_path, target_config)),
        stdin=tap.stdout,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=cli_env(),
        check=False,
    )
    assert tap.stdout is not None
    tap.stdout.close()
    assert tap.wait(timeout=60) == 0
    assert target.returncode == 0, target.stderr[-3000:]
    assert json.loads(target.stdout.splitlines()[-1])["bookmarks"]  # the tap's state, relayed
    return target.stderr


def event_rows(events: list[dict]) -> list[str]:
    fields = ("transaction_id", "external_subscription_id", "code", "timestamp", "properties")
    return sorted(json.dumps([e[f] for f in fields], sort_keys=True) for e in events)


def test_tap_lago_into_target_lago_copies_an_organisation(
    sandbox_factory: Any, lago: Sandbox, config: dict, tmp_path: Path
) -> None:
    source = sandbox_factory(seed={"seed": 42, "customers": 6, "events": 400})
    src = source.dump()

    pipe(tmp_path, source, config)
    first = lago.dump()

    fields = ("external_id", "name", "email", "currency", "country", "billing_entity_code")
    assert sorted(tuple(c.get(f) for f in fields) for c in first["customers"]) == sorted(
        tuple(c.get(f) for f in fields) for c in src["customers"]
    )
    for copy in first["customers"]:
        original = next(c for c in src["customers"] if c["external_id"] == copy["external_id"])
        assert [m["key"] for m in copy["metadata"]] == [m["key"] for m in original["metadata"]]
        assert {t["code"] for t in copy["taxes"]} == {t["code"] for t in original["taxes"]}

    def live(subs: list[dict]) -> list[tuple]:
        return sorted(
            (s["external_id"], s["external_customer_id"], s["plan_code"], s["status"])
            for s in subs
            if s["status"] in {"active", "pending"}
        )

    assert live(first["subscriptions"]) == live(src["subscriptions"])
    assert {s["status"] for s in first["subscriptions"]} <= {"active", "pending"}
    assert event_rows(first["events"]) == event_rows(src["events"])
    assert dead_letters(config["dead_letter_path"]) == []

    # The same copy again changes nothing: events already present, subscriptions no-ops.
    stderr = pipe(tmp_path, source, config)
    second = lago.dump()
    assert event_rows(second["events"]) == event_rows(first["events"])
    assert live(second["subscriptions"]) == live(first["subscriptions"])
    assert len(second["customers"]) == len(first["customers"])
    assert f"received={len(src['events'])} delivered=0 already_present={len(src['events'])}" in (
        stderr
    )
