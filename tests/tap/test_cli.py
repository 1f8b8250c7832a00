"""The ``tap-lago`` console script: about, discover, catalog, state, test, maps, flattening."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tap_lago.tap import TapLago

from tests.tap.conftest import parse_messages, run_tap, tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = (
    "api_key",
    "api_url",
    "start_date",
    "end_date",
    "events_window_days",
    "page_size",
    "events_page_size",
    "lookback_window_days",
    "request_timeout",
    "max_retries",
)


def tap_lago(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("tap-lago", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "tap_lago"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def config_file(sandbox: Any, tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tap_config(sandbox, page_size=50)))
    return path


def test_about_markdown_lists_every_setting() -> None:
    proc = tap_lago("--about", "--format=markdown")
    assert proc.returncode == 0, proc.stderr
    for setting in SETTINGS:
        assert f"| {setting} |" in proc.stdout
    assert "https://api.eu.getlago.com/api/v1" in proc.stdout
    assert "stream-maps" in proc.stdout
    assert "schema-flattening" in proc.stdout


def test_about_json_marks_the_key_secret() -> None:
    proc = tap_lago("--about", "--format=json")
    about = json.loads(proc.stdout)
    props = about["settings"]["properties"]
    assert props["api_key"]["secret"] is True
    assert about["settings"]["required"] == ["api_key"]
    assert props["api_url"]["default"] == "https://api.getlago.com/api/v1"
    assert props["page_size"]["default"] == 100
    assert props["events_page_size"]["default"] == 1000
    assert props["max_retries"]["default"] == 8


def test_discover_lists_every_stream_with_keys(config_file: Path) -> None:
    proc = tap_lago("--config", str(config_file), "--discover")
    assert proc.returncode == 0, proc.stderr
    catalog = json.loads(proc.stdout)
    entries = {s["tap_stream_id"]: s for s in catalog["streams"]}
    assert set(entries) == set(
        TapLago(config={"api_key": "unused"}, parse_env_config=False).streams
    )
    assert entries["events"]["key_properties"] == ["transaction_id", "external_subscription_id"]
    assert entries["events"]["replication_key"] == "timestamp"
    assert entries["subscriptions"]["replication_method"] == "FULL_TABLE"


def test_catalog_and_state_select_and_resume(config_file: Path, tmp_path: Path) -> None:
    catalog = json.loads(tap_lago("--config", str(config_file), "--discover").stdout)
    for entry in catalog["streams"]:
        for meta in entry["metadata"]:
            if meta["breadcrumb"] == []:
                meta["metadata"]["selected"] = entry["tap_stream_id"] in {"taxes", "fees"}
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps(catalog))

    # Warnings shown, as some runners (Meltano among them) show them: the run closes its
    # connections, so none is reported unclosed.
    first = tap_lago(
        "--config",
        str(config_file),
        "--catalog",
        str(catalog_file),
        env={"PYTHONWARNINGS": "default"},
    )
    assert first.returncode == 0, first.stderr
    assert "ResourceWarning" not in first.stderr
    messages = parse_messages(first.stdout)
    assert {m["stream"] for m in messages if m["type"] == "RECORD"} == {"taxes", "fees"}
    state = [m["value"] for m in messages if m["type"] == "STATE"][-1]

    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    second = tap_lago(
        "--config", str(config_file), "--catalog", str(catalog_file), "--state", str(state_file)
    )
    assert second.returncode == 0, second.stderr
    again = [m for m in parse_messages(second.stdout) if m["type"] == "RECORD"]
    # Fees resume from their bookmark (the inclusive boundary only); taxes are full table.
    fees = [m for m in again if m["stream"] == "fees"]
    first_fees = [m for m in messages if m["type"] == "RECORD" and m["stream"] == "fees"]
    assert len(fees) < len(first_fees)
    bookmark = state["bookmarks"]["fees"]["replication_key_value"]
    assert all(m["record"]["created_at"] >= bookmark[:19] for m in fees)


def test_test_flag_reads_one_record_per_stream(config_file: Path) -> None:
    proc = tap_lago("--config", str(config_file), "--test")
    assert proc.returncode == 0, proc.stderr
    records = [m for m in parse_messages(proc.stdout) if m["type"] == "RECORD"]
    per_stream: dict[str, int] = {}
    for m in records:
        per_stream[m["stream"]] = per_stream.get(m["stream"], 0) + 1
    assert {"customers", "events", "invoices", "fees"} <= set(per_stream)
    assert max(per_stream.values()) == 1


def test_stream_maps_and_flattening(sandbox: Any) -> None:
    config = tap_config(
        sandbox,
        stream_maps={"customers": {"email": None, "customer_ref": "external_id"}},
        flattening_enabled=True,
        flattening_max_depth=1,
    )
    result = run_tap(config, streams={"customers"})
    record = result.records["customers"][0]
    assert "email" not in record
    assert record["customer_ref"] == record["external_id"]
    assert "billing_configuration__invoice_grace_period" in record
    schema = result.schemas["customers"]["schema"]["properties"]
    assert "billing_configuration__invoice_grace_period" in schema
