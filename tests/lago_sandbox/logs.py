"""Activity logs and API logs (LAGO_API_READS.md §12), premium only.

The logs are derived from the stored organisation, the same ones on every run: each
customer, subscription, wallet, invoice, credit note, plan and billable metric has its
``<resource>.created`` activity, logged at its ``created_at``; plans and billable metrics
were made in the front end by a user, invoices and credit notes by the system, the rest
through the API, and each API activity has the ``POST`` request that made it in the API
logs. An object created while the sandbox runs has its activity too; changes and
deletions are not logged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.analytics import derived_id, first, require_premium, require_read
from tests.lago_sandbox.store import (
    JsonObj,
    Store,
    dumps,
    internal_error,
    not_found,
    page_window,
    parse_datetime,
)

if TYPE_CHECKING:
    from tests.lago_sandbox.server import RequestContext

#: ``organization.audit_logs_period``: lists show the last 30 days.
RETENTION = timedelta(days=30)
USER_EMAIL = "admin@acme.example"
API_CLIENT = "lago-python-client v1.30.0"

# resource -> (model class, source, API path of its creation, fields in the activity)
_SOURCES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "customers": ("Customer", "api", "/customers", ("external_id", "name", "currency")),
    "subscriptions": (
        "Subscription",
        "api",
        "/subscriptions",
        ("external_id", "external_customer_id", "plan_code", "status"),
    ),
    "wallets": ("Wallet", "api", "/wallets", ("external_customer_id", "code", "currency")),
    "invoices": ("Invoice", "system", "", ("number", "currency", "invoice_type")),
    "credit_notes": ("CreditNote", "system", "", ("number", "currency", "lago_invoice_id")),
    "plans": ("Plan", "front", "", ("code", "name", "interval")),
    "billable_metrics": ("BillableMetric", "front", "", ("code", "name", "aggregation_type")),
}


def _customer_of(resource: str, obj: JsonObj) -> str | None:
    if resource in ("customers",):
        return obj.get("external_id")
    if "external_customer_id" in obj:
        return obj.get("external_customer_id")
    return (obj.get("customer") or {}).get("external_id")


def activities(store: Store) -> list[JsonObj]:
    """Every activity, newest first (``logged_at DESC``; the server has no tie-breaker,
    the sandbox orders ties by ``activity_id``)."""
    out = []
    for resource, (model, source, _, fields) in _SOURCES.items():
        kind = model[0].lower() + "".join(f"_{c.lower()}" if c.isupper() else c for c in model[1:])
        for obj in store.find_all(resource):
            if not obj.get("created_at"):
                continue
            logged = o.iso(o.parse_iso(obj["created_at"]))
            out.append(
                {
                    "activity_id": derived_id("activity", resource, obj["lago_id"]),
                    "user_email": USER_EMAIL if source == "front" else None,
                    "activity_type": f"{kind}.created",
                    "activity_source": source,
                    # ClickHouse Map(String, String): every value a string.
                    "activity_object": {
                        name: str(obj[name]) for name in ("lago_id", *fields) if obj.get(name)
                    },
                    "activity_object_changes": None,
                    "external_customer_id": _customer_of(resource, obj),
                    "external_subscription_id": obj.get("external_id")
                    if resource == "subscriptions"
                    else None,
                    "resource_id": obj["lago_id"],
                    "resource_type": model,
                    "logged_at": logged,
                    "created_at": logged,
                    "_path": _SOURCES[resource][2],
                }
            )
    out.sort(key=lambda a: a["activity_id"])
    out.sort(key=lambda a: a["logged_at"], reverse=True)
    return out


def api_logs(store: Store) -> list[JsonObj]:
    """The ``POST`` of each API activity, newest first (ties by ``request_id``)."""
    out = []
    for activity in activities(store):
        if activity["activity_source"] != "api":
            continue
        path = activity.pop("_path")
        body = {k: v for k, v in activity["activity_object"].items() if k != "lago_id"}
        out.append(
            {
                "request_id": derived_id("request", activity["activity_id"]),
                "client": API_CLIENT,
                "http_method": "post",
                "http_status": 200,
                "request_origin": "https://app.acme.example/",
                "request_path": f"/api/v1{path}",
                "request_body": body,
                "request_response": {"lago_id": activity["resource_id"]},
                "api_version": "v1",
                "logged_at": activity["logged_at"],
                "created_at": activity["created_at"],
            }
        )
    out.sort(key=lambda a: a["request_id"])
    out.sort(key=lambda a: a["logged_at"], reverse=True)
    return out


def _bound(ctx: RequestContext, name: str, *, end: bool) -> str | None:
    """``from_date``/``to_date`` as an ISO time to compare with (a date is its whole day);
    an invalid value is a 500, as the server's unrescued parse error is."""
    value = first(ctx, name)
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise internal_error()
    if end and len(value.strip()) == 10:
        parsed += timedelta(days=1, seconds=-1)
    return o.iso(parsed)


def _matches_all(ctx: RequestContext, row: JsonObj, filters: dict[str, str]) -> bool:
    """Each ``name[]`` filter given: the row's field is one of the values."""
    for param, field in filters.items():
        wanted = ctx.query.get(param)
        if wanted and str(row.get(field)) not in wanted:
            return False
    return True


def _listed(ctx: RequestContext, rows: list[JsonObj], filters: dict[str, str]) -> list[JsonObj]:
    """The rows within retention, ``from_date``..``to_date`` and the filters."""
    oldest = o.iso(ctx.store.clock() - RETENTION)
    low = max(oldest, _bound(ctx, "from_date", end=False) or oldest)
    high = _bound(ctx, "to_date", end=True)
    return [
        row
        for row in rows
        if row["logged_at"] >= low
        and (high is None or row["logged_at"] <= high)
        and _matches_all(ctx, row, filters)
    ]


def _page(ctx: RequestContext, wrapper: str, rows: list[JsonObj]) -> bytes:
    offset, limit, meta = page_window(ctx.query, len(rows))
    return dumps({wrapper: rows[offset : offset + limit], "meta": meta})


_ACTIVITY_FILTERS = {
    "activity_types[]": "activity_type",
    "activity_sources[]": "activity_source",
    "user_emails[]": "user_email",
    "resource_ids[]": "resource_id",
    "resource_types[]": "resource_type",
}


def list_activity_logs(ctx: RequestContext) -> bytes:
    """``GET /activity_logs``."""
    require_read(ctx, "activity_log")
    require_premium(ctx)
    with ctx.store.lock:
        rows = activities(ctx.store)
    for row in rows:
        row.pop("_path")
    for name in ("external_customer_id", "external_subscription_id"):
        value = first(ctx, name)
        if value:
            rows = [row for row in rows if row[name] == value]
    return _page(ctx, "activity_logs", _listed(ctx, rows, _ACTIVITY_FILTERS))


def get_activity_log(ctx: RequestContext) -> bytes:
    """``GET /activity_logs/{activity_id}`` (no retention window)."""
    require_read(ctx, "activity_log")
    require_premium(ctx)
    with ctx.store.lock:
        rows = activities(ctx.store)
    for row in rows:
        row.pop("_path")
        if row["activity_id"] == ctx.path_params["activity_id"]:
            return dumps({"activity_log": row})
    raise not_found("activity_log")


def _status_matches(wanted: list[str], status: int) -> bool:
    for value in wanted:
        if value == "succeeded" and status <= 399:
            return True
        if value == "failed" and status > 399:
            return True
        if value.isdigit() and int(value) == status:
            return True
    return False


def _path_matches(wanted: list[str], path: str) -> bool:
    for pattern in wanted:
        if pattern == path or ("*" in pattern and path.startswith(pattern.split("*", 1)[0])):
            return True
    return False


def list_api_logs(ctx: RequestContext) -> bytes:
    """``GET /api_logs``."""
    require_read(ctx, "api_log")
    require_premium(ctx)
    with ctx.store.lock:
        rows = api_logs(ctx.store)
    statuses = ctx.query.get("http_statuses[]")
    if statuses:
        rows = [row for row in rows if _status_matches(statuses, row["http_status"])]
    paths = ctx.query.get("request_paths[]")
    if paths:
        rows = [row for row in rows if _path_matches(paths, row["request_path"])]
    version = first(ctx, "api_version")
    if version:
        rows = [row for row in rows if row["api_version"] == version]
    filters = {"http_methods[]": "http_method", "clients[]": "client"}
    return _page(ctx, "api_logs", _listed(ctx, rows, filters))


def get_api_log(ctx: RequestContext) -> bytes:
    """``GET /api_logs/{request_id}`` (no retention window)."""
    require_read(ctx, "api_log")
    require_premium(ctx)
    with ctx.store.lock:
        rows = api_logs(ctx.store)
    for row in rows:
        if row["request_id"] == ctx.path_params["request_id"]:
            return dumps({"api_log": row})
    raise not_found("api_log")


ROUTES: list[tuple[str, str, Callable[[RequestContext], bytes]]] = [
    ("GET", "/activity_logs", list_activity_logs),
    ("GET", "/activity_logs/{activity_id}", get_activity_log),
    ("GET", "/api_logs", list_api_logs),
    ("GET", "/api_logs/{request_id}", get_api_log),
]
