"""Admin endpoints under /_sandbox/: reset, dump, upsert, faults, requests."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.lago_sandbox import server as sandbox_server
from tests.lago_sandbox.objects import RESOURCES

SMALL = {"seed": 9, "customers": 4, "events": 40}


@pytest.fixture
def sb(sandbox_factory: Any) -> Sandbox:
    return sandbox_factory(SMALL)


def api(sb: Sandbox, path: str, **params: Any) -> Any:
    response = requests.get(
        sb.url + path,
        params={"per_page": 100000, **params},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_dump_holds_every_resource_in_list_order(sb: Sandbox) -> None:
    dump = sb.dump()
    assert list(dump) == list(RESOURCES)
    assert dump["customers"] == api(sb, "/customers")["customers"]
    assert dump["events"] == api(sb, "/events")["events"]
    assert dump["fees"] == api(sb, "/fees")["fees"]
    statuses = {s["status"] for s in dump["subscriptions"]}
    assert statuses > {"active"}, "dump must include every subscription status"


def test_reset_with_options_and_back_to_the_start_options(sb: Sandbox) -> None:
    original = sb.dump()
    counts = sb.reset({"customers": 0, "events": 0, "seed": 9})
    assert counts["customers"] == 0
    assert counts["events"] == 0
    assert counts["plans"] == len(original["plans"]) > 0
    empty = sb.dump()
    assert [p["code"] for p in empty["plans"]] == [p["code"] for p in original["plans"]]
    assert api(sb, "/customers")["meta"]["total_count"] == 0
    counts = sb.reset()
    assert counts == {name: len(rows) for name, rows in original.items()}
    assert sb.dump() == original


def test_reset_response_shape_and_bad_options(sb: Sandbox) -> None:
    response = requests.post(sb.base_url + "/_sandbox/reset", timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert set(response.json()["counts"]) == set(RESOURCES)
    bad = requests.post(sb.base_url + "/_sandbox/reset", json={"colour": "red"}, timeout=30)
    assert bad.status_code == 400
    assert "colour" in bad.json()["error"]


def test_reset_clears_writes(sb: Sandbox) -> None:
    sb.upsert("events", {"transaction_id": "temp", "external_subscription_id": "x", "code": "c"})
    sb.reset()
    assert all(e["transaction_id"] != "temp" for e in sb.dump()["events"])


def test_upsert_merges_and_moves_updated_at(sb: Sandbox) -> None:
    invoice = next(i for i in sb.dump()["invoices"] if i["payment_status"] != "succeeded")
    time.sleep(1.1)
    changed = sb.upsert("invoices", {"lago_id": invoice["lago_id"], "payment_status": "succeeded"})
    assert len(changed) == 1
    assert changed[0]["payment_status"] == "succeeded"
    assert changed[0]["updated_at"] > invoice["updated_at"]
    assert {k: v for k, v in changed[0].items() if k not in ("payment_status", "updated_at")} == {
        k: v for k, v in invoice.items() if k not in ("payment_status", "updated_at")
    }
    fetched = api(sb, f"/invoices/{invoice['lago_id']}")["invoice"]
    assert fetched["payment_status"] == "succeeded"
    assert fetched["updated_at"] == changed[0]["updated_at"]


def test_upsert_of_a_resource_without_updated_at_does_not_add_one(sb: Sandbox) -> None:
    plan = sb.dump()["plans"][0]
    changed = sb.upsert("plans", {"lago_id": plan["lago_id"], "name": "Renamed"})[0]
    assert changed["name"] == "Renamed"
    assert "updated_at" not in changed


def test_upsert_inserts_new_objects_completed_with_defaults(sb: Sandbox) -> None:
    created = sb.upsert(
        "customers", [{"external_id": "admin-1", "name": "A"}, {"external_id": "admin-2"}]
    )
    assert [c["external_id"] for c in created] == ["admin-1", "admin-2"]
    for customer in created:
        assert customer["lago_id"]
        assert customer["created_at"]
        assert "billing_configuration" in customer
    listed = [c["external_id"] for c in api(sb, "/customers")["customers"]]
    assert {"admin-1", "admin-2"} <= set(listed)


def test_upsert_events_matched_by_subscription_and_transaction_id(sb: Sandbox) -> None:
    event = sb.dump()["events"][0]
    changed = sb.upsert(
        "events",
        {
            "external_subscription_id": event["external_subscription_id"],
            "transaction_id": event["transaction_id"],
            "properties": {"patched": 1},
        },
    )[0]
    assert changed["lago_id"] == event["lago_id"]
    assert changed["properties"] == {"patched": 1}
    events = sb.dump()["events"]
    assert sum(1 for e in events if e["transaction_id"] == event["transaction_id"]) == 1
    single = api(sb, f"/events/{event['transaction_id']}")["event"]
    assert single["properties"] == {"patched": 1}


def test_upsert_unknown_resource_is_400(sb: Sandbox) -> None:
    response = requests.post(sb.base_url + "/_sandbox/upsert/widgets", json={}, timeout=30)
    assert response.status_code == 400
    assert "widgets" in response.json()["error"]


def test_requests_log_fields_and_clear(sb: Sandbox) -> None:
    sb.requests(clear=True)
    api(sb, "/customers", page=2)
    requests.post(
        sb.url + "/events",
        json={"event": {"transaction_id": "r", "code": "c"}},
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )
    log = sb.requests()
    assert log[0] == {
        "method": "GET",
        "path": "/api/v1/customers",
        "query": "per_page=100000&page=2",
        "status": 200,
        "body_size": 0,
        "fault": None,
    }
    assert log[1]["method"] == "POST"
    assert log[1]["path"] == "/api/v1/events"
    assert log[1]["body_size"] > 0
    assert len(log) == 2, "admin calls are not logged"
    sb.requests(clear=True)
    assert sb.requests() == []


def test_unknown_admin_endpoint_is_404(sb: Sandbox) -> None:
    assert requests.get(sb.base_url + "/_sandbox/nothing", timeout=30).status_code == 404


def test_admin_refuses_a_non_loopback_client(sb: Sandbox) -> None:
    """Feed one request over a socket pair, as if it came from 10.1.2.3."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"GET /_sandbox/dump HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        server = sb._server
        assert server is not None
        sandbox_server.SandboxHandler(ours, ("10.1.2.3", 5555), server)
        ours.close()
        theirs.settimeout(5)
        reply = b""
        while chunk := theirs.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(body)["status"] == 403
    assert sandbox_server._is_loopback("127.0.0.1")
    assert sandbox_server._is_loopback("::1")


def test_server_binds_to_loopback(sb: Sandbox) -> None:
    assert sb.base_url.startswith("http://127.0.0.1:")
