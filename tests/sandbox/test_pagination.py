"""Pagination and the meta object, as the real server's Kaminari setup behaves."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.lago_sandbox import Sandbox

META_KEYS = ["current_page", "next_page", "prev_page", "total_pages", "total_count"]
EMPTY_META = {
    "current_page": 0,
    "next_page": None,
    "prev_page": None,
    "total_pages": 0,
    "total_count": 0,
}


def get(sb: Sandbox, path: str, **params: Any) -> requests.Response:
    return requests.get(
        sb.url + path,
        params=params,
        headers={"Authorization": f"Bearer {sb.api_key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def all_events(sandbox: Sandbox) -> list[dict]:
    body = get(sandbox, "/events", per_page=5000).json()
    assert body["meta"]["total_count"] == 2000
    return body["events"]


def test_default_page_size_is_100_with_meta_in_server_key_order(sandbox: Sandbox) -> None:
    response = get(sandbox, "/events")
    assert response.status_code == 200
    body = response.json()
    assert len(body["events"]) == 100
    assert list(body["meta"]) == META_KEYS
    assert body["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 20,
        "total_count": 2000,
    }
    assert list(body) == ["events", "meta"]


def test_no_maximum_page_size(all_events: list[dict]) -> None:
    assert len(all_events) == 2000


def test_middle_page_is_the_matching_slice(sandbox: Sandbox, all_events: list[dict]) -> None:
    body = get(sandbox, "/events", page=3, per_page=7).json()
    assert body["events"] == all_events[14:21]
    assert body["meta"] == {
        "current_page": 3,
        "next_page": 4,
        "prev_page": 2,
        "total_pages": 286,
        "total_count": 2000,
    }


def test_walking_next_page_returns_every_row_once_in_order(
    sandbox: Sandbox, all_events: list[dict]
) -> None:
    seen: list[dict] = []
    page: int | None = 1
    for _ in range(100):  # bounded walk
        if page is None:
            break
        body = get(sandbox, "/events", page=page, per_page=150).json()
        seen += body["events"]
        page = body["meta"]["next_page"]
    assert seen == all_events


def test_last_page_has_no_next_page(sandbox: Sandbox) -> None:
    body = get(sandbox, "/events", page=14, per_page=150).json()
    assert len(body["events"]) == 2000 - 13 * 150
    assert body["meta"]["next_page"] is None
    assert body["meta"]["prev_page"] == 13


@pytest.mark.parametrize("value", ["abc", "-5", ""])
def test_non_numeric_or_negative_per_page_falls_back_to_25(sandbox: Sandbox, value: str) -> None:
    body = get(sandbox, "/events", per_page=value).json()
    assert len(body["events"]) == 25
    assert body["meta"]["total_pages"] == 80


def test_per_page_with_trailing_garbage_uses_its_leading_digits(sandbox: Sandbox) -> None:
    body = get(sandbox, "/events", per_page="10abc").json()
    assert len(body["events"]) == 10


def test_per_page_zero_is_a_server_error_when_there_are_rows(sandbox: Sandbox) -> None:
    response = get(sandbox, "/customers", per_page=0)
    assert response.status_code == 500
    assert response.json() == {"status": 500, "error": "Internal Server Error"}


def test_per_page_zero_on_an_empty_list_is_the_empty_result(sandbox: Sandbox) -> None:
    response = get(sandbox, "/events", per_page=0, external_subscription_id="no-such-sub")
    assert response.status_code == 200
    assert response.json() == {"events": [], "meta": EMPTY_META}


@pytest.mark.parametrize("value", ["0", "-3", "abc", ""])
def test_page_missing_zero_negative_or_garbage_is_page_one(
    sandbox: Sandbox, all_events: list[dict], value: str
) -> None:
    body = get(sandbox, "/events", page=value, per_page=5).json()
    assert body["events"] == all_events[:5]
    assert body["meta"]["current_page"] == 1
    assert body["meta"]["prev_page"] is None


def test_page_past_the_end_is_empty_but_keeps_computed_meta(sandbox: Sandbox) -> None:
    body = get(sandbox, "/customers", page=5, per_page=10).json()
    assert body == {
        "customers": [],
        "meta": {
            "current_page": 5,
            "next_page": None,
            "prev_page": 4,
            "total_pages": 2,
            "total_count": 20,
        },
    }


def test_empty_result_has_the_all_zero_meta(sandbox: Sandbox) -> None:
    body = get(sandbox, "/events", code="no_such_metric", page=3).json()
    assert body == {"events": [], "meta": EMPTY_META}
    assert list(body["meta"]) == META_KEYS


@pytest.mark.parametrize(
    "path",
    [
        "/customers",
        "/subscriptions",
        "/invoices",
        "/billable_metrics",
        "/plans",
        "/coupons",
        "/add_ons",
        "/fees",
        "/credit_notes",
        "/wallets",
        "/taxes",
        "/applied_coupons",
    ],
)
def test_every_list_is_wrapped_with_meta(sandbox: Sandbox, path: str) -> None:
    body = get(sandbox, path, per_page=2).json()
    name = path.strip("/")
    assert list(body) == [name, "meta"]
    assert list(body["meta"]) == META_KEYS
    assert len(body[name]) == min(2, body["meta"]["total_count"])
    assert body["meta"]["total_count"] > 0
