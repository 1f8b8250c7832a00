"""Small helpers of the sandbox tests: authenticated GETs and whole lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests

from tests.lago_sandbox import Sandbox

ALL_STATUSES = ["pending", "active", "terminated", "canceled", "incomplete"]


def get(sb: Sandbox, path: str, **params: Any) -> requests.Response:
    """GET an API path of the sandbox with its key."""
    return requests.get(
        sb.url + path,
        params=params,
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


def listed(sb: Sandbox, path: str, **params: Any) -> list[dict]:
    """Every object of a list endpoint, in one page."""
    response = get(sb, path, per_page=100000, **params)
    assert response.status_code == 200, response.text
    return response.json()[path.strip("/").split("/")[-1]]


def ts(value: str | None) -> float:
    """Seconds since the epoch of an API timestamp."""
    assert value is not None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
