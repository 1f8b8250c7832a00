"""Strict mode of ``GET /wallets``: refused without ``external_customer_id``, like a gateway."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox
from tests.sandbox.api import get, listed

SMALL = {"seed": 9, "customers": 4, "events": 0}


def test_off_by_default_and_switched_by_the_admin_setting(sandbox_factory: Any) -> None:
    sb: Sandbox = sandbox_factory(SMALL)
    assert get(sb, "/wallets").status_code == 200
    assert sb.configure(strict_wallets=422)["strict_wallets"] == 422

    refused = get(sb, "/wallets")
    assert refused.status_code == 422
    body = refused.json()
    assert body["status"] == 422
    assert body["validation"][0]["location"] == ["query"]
    assert "external_customer_id" in body["validation"][0]["message"]

    customer = next(w["external_customer_id"] for w in sb.dump()["wallets"])
    one = listed(sb, "/wallets", external_customer_id=customer)
    assert one and {w["external_customer_id"] for w in one} == {customer}
    # The nested route names the customer in its path: never refused.
    assert get(sb, f"/customers/{customer}/wallets").status_code == 200

    sb.configure(strict_wallets=400)
    rails = get(sb, "/wallets")
    assert rails.status_code == 400
    assert rails.json()["error"].endswith(": external_customer_id")

    sb.configure(strict_wallets=None)
    assert get(sb, "/wallets").status_code == 200


def test_a_bad_setting_is_refused(sandbox_factory: Any) -> None:
    sb: Sandbox = sandbox_factory(SMALL)
    for body in ({"strict_wallets": 500}, {"no_such_setting": True}):
        response = requests.post(f"{sb.base_url}/_sandbox/settings", json=body, timeout=10)
        assert response.status_code == 400
    assert requests.get(f"{sb.base_url}/_sandbox/settings", timeout=10).json() == {
        "settings": {
            "strict_wallets": None,
            "premium": False,
            "read_denied": [],
            "rate_limits": None,
        }
    }


@pytest.mark.parametrize("status", [422])
def test_command_line_option(status: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lago_sandbox", "--port", "0", "--api-key", "k",
         "--customers", "2", "--events", "0", "--strict-wallets", str(status)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().split("=", 1)[1]
        response = requests.get(f"{url}/wallets", headers={"Authorization": "Bearer k"}, timeout=10)
        assert response.status_code == status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
