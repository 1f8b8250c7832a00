"""tap-lago piped into target-lago copies an organisation into an empty one, idempotently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import lago_copy
from tests.lago_sandbox import Sandbox
from tests.target.helpers import cli_command, cli_env, dead_letters, write_config


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
                entry["metadata"]["selected"] = stream["tap_stream_id"] in lago_copy.COPIED
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


def test_tap_lago_into_target_lago_copies_an_organisation(
    sandbox_factory: Any, config: dict, tmp_path: Path
) -> None:
    source, destination = lago_copy.organisations(sandbox_factory)
    settings = {**config, "api_url": destination.url, **lago_copy.copy_settings()}
    src = source.dump()

    pipe(tmp_path, source, settings)
    first = destination.dump()
    assert dead_letters(settings["dead_letter_path"]) == []
    found = lago_copy.differences(src, first)
    assert found == lago_copy.expected(src, first), sorted(found ^ lago_copy.expected(src, first))
    wallet = next(w for w in first["wallets"] if w["credits_balance"] == lago_copy.BALANCE)
    [grant] = first["wallet_transactions"]
    assert (grant["lago_wallet_id"], grant["credit_amount"]) == (wallet["lago_id"], "25.0")
    assert any(c["metadata"] for c in first["customers"])  # compared with the rest above
    assert first["entitlements"] and first["features"]  # compared with the rest above
    # The overridden subscription has its own plan in the copy too (compared above).
    # So has the scheduled downgrade, applied once the subscription it follows is there.
    own, pending = sorted(first["overridden_plans"], key=lambda o: o["status"])
    assert (own["plan"]["amount_cents"], own["plan"]["name"]) == (12345, "Negotiated")
    assert own["plan"]["charges"][0]["invoice_display_name"] == "Negotiated usage"
    [fixed] = own["plan"]["fixed_charges"]
    assert (fixed["units"], fixed["invoice_display_name"]) == (3, "Negotiated seats")
    assert [t["amount_cents"] for t in own["plan"]["usage_thresholds"]] == [50000]
    assert (pending["status"], pending["plan"]["amount_cents"]) == ("pending", 777)

    # The same copy again changes nothing.
    stderr = pipe(tmp_path, source, settings)
    assert destination.dump() == first
    for stream in ("taxes", "features", "plans", "entitlements", "coupons", "customers",
                   "wallets", "wallet_balances", "subscriptions", "subscription_plans",
                   "events"):  # fmt: skip
        line = next(x for x in stderr.splitlines() if f"summary stream={stream} " in x)
        assert " delivered=0 " in line, line
