"""The ``extra_streams`` setting: Lago lists tap-lago does not declare, read as streams."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from singer_sdk.exceptions import FatalAPIError
from tap_lago.replication import canonical

from tests.tap.conftest import SyncResult, parse_messages, run_tap, tap_config

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_SIZE = 5

CUSTOMER_INVOICES: dict[str, Any] = {
    "name": "customer_invoices",
    "path": "/customers/{external_id}/invoices",
    "records_key": "invoices",
    "primary_keys": ["lago_id"],
    "parent_stream": "customers",
}
EXTRA_STREAMS: list[dict[str, Any]] = [
    CUSTOMER_INVOICES,
    {
        "name": "finalized_invoices",
        "path": "/invoices",
        "records_key": "invoices",
        "primary_keys": ["lago_id"],
        "params": {"status": "finalized"},
        "replication_key": "updated_at",
    },
    {"name": "plan_codes", "path": "/plans", "records_key": "plans", "primary_keys": ["code"]},
    {
        "name": "plan_details",
        "path": "/plans/{code}",
        "records_key": "plan",
        "primary_keys": ["lago_id"],
        "parent_stream": "plan_codes",
    },
]
NAMES = {entry["name"] for entry in EXTRA_STREAMS}


def tap_lago(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("tap-lago", path=str(Path(sys.executable).parent))
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False
    )


def lago(sandbox: Any, path: str, **params: Any) -> Any:
    """One API answer, read directly (what the tap should emit)."""
    response = requests.get(
        f"{sandbox.url}{path}",
        params={"per_page": 1000, **params},
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def write(tmp_path: Path, name: str, value: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def sync(tmp_path: Path, config: str, catalog: str, state: Any = None) -> SyncResult:
    args = ["--config", config, "--catalog", catalog]
    if state is not None:
        args += ["--state", write(tmp_path, "state.json", state)]
    proc = tap_lago(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SyncResult(parse_messages(proc.stdout), proc.stdout)


def test_extra_streams_are_discovered_and_synced_page_by_page(sandbox: Any, tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "config.json",
        tap_config(sandbox, page_size=PAGE_SIZE, extra_streams=EXTRA_STREAMS),
    )
    discovered = tap_lago("--config", config, "--discover")
    assert discovered.returncode == 0, discovered.stderr[-3000:]
    catalog = json.loads(discovered.stdout)
    entries = {entry["tap_stream_id"]: entry for entry in catalog["streams"]}
    assert set(entries) >= NAMES
    assert entries["customer_invoices"]["key_properties"] == ["lago_id"]
    assert entries["customer_invoices"]["schema"]["additionalProperties"] is True
    assert entries["customer_invoices"]["replication_method"] == "FULL_TABLE"
    assert entries["finalized_invoices"]["replication_method"] == "INCREMENTAL"
    assert entries["finalized_invoices"]["replication_key"] == "updated_at"
    for entry in catalog["streams"]:
        for metadata in entry["metadata"]:
            if metadata["breadcrumb"] == []:
                metadata["metadata"]["selected"] = entry["tap_stream_id"] in NAMES
    catalog_file = write(tmp_path, "catalog.json", catalog)

    sandbox.requests(clear=True)
    result = sync(tmp_path, config, catalog_file)
    requested = sandbox.requests()

    assert set(result.records) == NAMES
    assert result.schemas["customer_invoices"]["key_properties"] == ["lago_id"]
    # Each customer's invoices, customer after customer, exactly as the API lists them.
    customers = lago(sandbox, "/customers")["customers"]
    per_customer = {
        c["external_id"]: lago(sandbox, f"/customers/{c['external_id']}/invoices")["invoices"]
        for c in customers
    }
    assert result.records["customer_invoices"] == [
        invoice for c in customers for invoice in per_customer[c["external_id"]]
    ]
    # ... read PAGE_SIZE at a time, every page of every customer once, in order.
    pages: dict[str, list[int]] = {}
    for request in requested:
        if match := re.fullmatch(r"/api/v1/customers/([^/]+)/invoices", request["path"]):
            query = parse_qs(request["query"])
            assert query["per_page"] == [str(PAGE_SIZE)]
            pages.setdefault(match.group(1), []).append(int(query["page"][0]))
    assert pages == {
        ext: list(range(1, max(1, math.ceil(len(invoices) / PAGE_SIZE)) + 1))
        for ext, invoices in per_customer.items()
    }
    assert max(len(p) for p in pages.values()) >= 3

    finalized = lago(sandbox, "/invoices", status="finalized")["invoices"]
    assert result.records["finalized_invoices"] == finalized
    bookmark = result.last_state["bookmarks"]["finalized_invoices"]["replication_key_value"]
    assert bookmark == max(canonical(i["updated_at"]) for i in finalized)

    plans = lago(sandbox, "/plans")["plans"]
    assert result.records["plan_codes"] == plans
    assert result.records["plan_details"] == [
        lago(sandbox, f"/plans/{p['code']}")["plan"] for p in plans
    ]

    # The next sync reads finalized invoices from the bookmark on.
    again = sync(tmp_path, config, catalog_file, state=result.last_state)
    assert again.records["finalized_invoices"] == [
        i for i in finalized if canonical(i["updated_at"]) >= bookmark
    ]


BAD_ENTRIES: list[tuple[dict[str, Any], str]] = [
    ({**CUSTOMER_INVOICES, "name": None}, "extra_streams[0].name is missing"),
    ({**CUSTOMER_INVOICES, "path": ""}, "extra_streams[1].path is missing"),
    ({**CUSTOMER_INVOICES, "name": "invoices"}, "extra_streams[2].name 'invoices' is already"),
    ({**CUSTOMER_INVOICES, "name": "a", "parent_stream": "clients"}, "[3].parent_stream 'clients'"),
    (
        {**CUSTOMER_INVOICES, "name": "b", "path": "/customers/{customer_id}/invoices"},
        "extra_streams[4].path {customer_id} is not a field of customers records: use one of",
    ),
    ({**CUSTOMER_INVOICES, "name": "c", "parent_stream": None}, "[5].path '/customers/{external"),
    ({**CUSTOMER_INVOICES, "name": "d", "record_key": "x"}, "extra_streams[6].record_key is not"),
]


@pytest.mark.parametrize("command", [("--discover",), ()], ids=["discover", "sync"])
def test_each_bad_entry_is_one_line_naming_the_field(
    sandbox: Any, tmp_path: Path, command: tuple[str, ...]
) -> None:
    entries = [entry for entry, _ in BAD_ENTRIES]
    config = write(tmp_path, "config.json", tap_config(sandbox, extra_streams=entries))
    sandbox.requests(clear=True)
    proc = tap_lago("--config", config, *command)

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "| ERROR " in line]
    for index, (_, expected) in enumerate(BAD_ENTRIES):
        named = [line for line in errors if f"extra_streams[{index}]" in line]
        assert len(named) == 1, (index, errors)
        assert expected in named[0], named[0]
        assert re.search(r": (use|give|name|choose|set|list) ", named[0]), named[0]  # the fix
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"records_key": "invoice"}, "extra_streams[0].records_key"),
        ({"primary_keys": ["id"]}, "extra_streams[0].primary_keys"),
        ({"path": "/customers/{external_id}/bills"}, "extra_streams[0].path"),
        ({"replication_key": "number"}, "extra_streams[0].replication_key"),
    ],
    ids=["records_key", "primary_keys", "path", "replication_key"],
)
def test_a_setting_the_api_contradicts_fails_naming_it(
    sandbox: Any, change: dict[str, Any], named: str
) -> None:
    config = tap_config(sandbox, extra_streams=[{**CUSTOMER_INVOICES, **change}])
    with pytest.raises(FatalAPIError, match=re.escape(named)):
        run_tap(config, streams={"customer_invoices"})
