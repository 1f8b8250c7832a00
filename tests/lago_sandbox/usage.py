"""Usage history and usage alerts (LAGO_API_READS.md §7, §8, §9).

- ``GET /customers/{external_customer_id}/past_usage``: one period per invoice that bills
  charges of the subscription, its ``charges_usage`` computed from the stored events of
  that closed period (``objects.customer_usage``);
- ``GET /subscriptions/{external_id}/lifetime_usage``;
- ``GET /subscriptions/{external_id}/alerts`` and
  ``GET /customers/{external_customer_id}/wallets/{code}/alerts``: alerts derived from
  the subscriptions and wallets (the same ones on every run).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.analytics import ORGANIZATION_ID, derived_id, first, require_read
from tests.lago_sandbox.store import (
    JsonObj,
    Store,
    dumps,
    internal_error,
    not_found,
    page_window,
    ruby_to_i,
    unprocessable,
)

if TYPE_CHECKING:
    from tests.lago_sandbox.server import RequestContext

#: Subscription statuses ``GET /subscriptions/{external_id}/alerts`` looks one up in.
ALERT_LOOKUP_STATUSES = ("active", "pending", "terminated", "canceled")


def _events_between(store: Store, external_id: str, low: datetime, high: datetime) -> list:
    """The subscription's events in ``[low, high]`` (a bisect on the events' time order)."""
    lo, hi = low.timestamp(), high.timestamp() + 1
    rows, start, stop = store.list_rows(
        "events",
        (("usage", external_id, lo, hi),),
        lambda e: e.get("external_subscription_id") == external_id,
        (lo, hi),
    )
    return [row.obj for row in rows[start:stop]]


def usage_of(
    store: Store,
    subscription: JsonObj,
    period: tuple[datetime, datetime] | None = None,
) -> JsonObj:
    """``objects.customer_usage`` of a subscription (current period, or ``period``)."""
    now = store.clock()
    low, high = period or o.period_bounds(now)
    customer = store.customer(subscription["external_customer_id"]) or {}
    plan = store.find_one("plans", code=subscription.get("plan_code")) or {}
    metrics = {m["code"]: m for m in store.find_all("billable_metrics")}
    events = _events_between(store, subscription["external_id"], low, high)
    return o.customer_usage(customer, subscription, plan, metrics, events, now=now, period=period)


# ----------------------------------------------------------------------------- past usage


def past_usage(store: Store, customer_ext: str, subscription_ext: str) -> list[JsonObj]:
    """Every billed charge period of the subscription(s) with this external id, newest first.

    A period is one invoice (any status) holding charge fees of one of those subscriptions:
    ``from_datetime``/``to_datetime`` are the fees' period; ``amount_cents`` and
    ``taxes_amount_cents`` are the whole invoice's ``fees_amount_cents`` and
    ``taxes_amount_cents``. An unknown (or deleted) customer or subscription gives none.
    """
    if store.customer(customer_ext) is None:
        return []
    subscriptions = {
        s["lago_id"]: s
        for s in store.find_all("subscriptions", external_id=subscription_ext)
        if s.get("external_customer_id") == customer_ext
    }
    if not subscriptions:
        return []
    periods: dict[tuple[str, str], list[JsonObj]] = {}
    for fee in store.find_all("fees", external_subscription_id=subscription_ext):
        if (fee.get("item") or {}).get("type") != "charge" or not fee.get("lago_invoice_id"):
            continue
        if fee.get("lago_subscription_id") in subscriptions and fee.get("from_date"):
            periods.setdefault((fee["lago_invoice_id"], fee["lago_subscription_id"]), []).append(
                fee
            )
    rows = []
    for (invoice_id, subscription_id), fees in periods.items():
        invoice = store.find_one("invoices", lago_id=invoice_id)
        if invoice is None:
            continue
        low = min(o.parse_iso(fee["from_date"]) for fee in fees)
        high = max(o.parse_iso(fee["to_date"]) for fee in fees)
        usage = usage_of(store, subscriptions[subscription_id], (low, high))
        taxes = invoice["taxes_amount_cents"]
        rows.append(
            {
                "from_datetime": o.iso(low),
                "to_datetime": o.iso(high),
                "issuing_date": invoice["issuing_date"],
                "currency": invoice["currency"],
                "amount_cents": invoice["fees_amount_cents"],
                "taxes_amount_cents": taxes,
                "total_amount_cents": invoice["fees_amount_cents"] + taxes,
                "lago_invoice_id": invoice_id,
                "charges_usage": usage["charges_usage"],
                "_order": (invoice["created_at"], invoice_id),
            }
        )
    # charges_from_datetime DESC, then created_at DESC, id ASC.
    rows.sort(key=lambda r: r["_order"][1])
    rows.sort(key=lambda r: (r["from_datetime"], r["_order"][0]), reverse=True)
    for row in rows:
        del row["_order"]
    return rows


def customer_past_usage(ctx: RequestContext) -> bytes:
    """``GET /customers/{external_customer_id}/past_usage`` (the customer is not looked up)."""
    require_read(ctx, "customer_usage")
    subscription_ext = first(ctx, "external_subscription_id")
    if not subscription_ext:
        raise unprocessable({"external_subscription_id": ["value_is_mandatory"]})
    metric = first(ctx, "billable_metric_code")
    store = ctx.store
    with store.lock:
        if metric and store.find_one("billable_metrics", code=metric) is None:
            raise not_found("billable_metric")
        rows = past_usage(store, ctx.path_params["external_customer_id"], subscription_ext)
    if metric:
        for row in rows:
            row["charges_usage"] = [
                c for c in row["charges_usage"] if c["billable_metric"]["code"] == metric
            ]
    offset, limit, meta = page_window(ctx.query, len(rows))
    count = first(ctx, "periods_count")
    if count is not None and rows:
        # A LIMIT after the page's OFFSET, and the page size of the meta (READS §7).
        limit = ruby_to_i(count)
        if limit <= 0:
            raise internal_error()
        _, _, meta = page_window({**ctx.query, "per_page": [str(limit)]}, len(rows))
    return dumps({"usage_periods": rows[offset : offset + limit], "meta": meta})


# -------------------------------------------------------------------------- lifetime usage


def lifetime_usage(store: Store, external_id: str) -> JsonObj:
    """The lifetime usage of the subscriptions sharing ``external_id``.

    It is created when the first of them starts and handed to each successor, so it has
    that first subscription's id and is held by the active one (else the latest started).
    ``invoiced_usage_amount_cents`` sums their charge fees on finalized invoices (as if the
    organisation had the lifetime-usage integration); ``current_usage_amount_cents`` is the
    holder's current usage when it is active.
    """
    started = sorted(
        (s for s in store.find_all("subscriptions", external_id=external_id) if s["started_at"]),
        key=lambda s: s["started_at"],
    )
    if not started:
        raise not_found("lifetime_usage")
    active = [s for s in started if s["status"] == "active"]
    holder = active[0] if active else started[-1]
    ids = {s["lago_id"] for s in started}
    finalized = {i["lago_id"] for i in store.find_all("invoices", status="finalized")}
    invoiced = sum(
        fee["amount_cents"]
        for fee in store.find_all("fees", external_subscription_id=external_id)
        if fee.get("lago_subscription_id") in ids
        and (fee.get("item") or {}).get("type") == "charge"
        and fee.get("lago_invoice_id") in finalized
    )
    current = 0
    if holder["status"] == "active":
        current = sum(c["amount_cents"] for c in usage_of(store, holder)["charges_usage"])
    return {
        "lago_id": derived_id("lifetime_usage", started[0]["lago_id"]),
        "lago_subscription_id": holder["lago_id"],
        "external_subscription_id": external_id,
        "external_historical_usage_amount_cents": 0,
        "invoiced_usage_amount_cents": invoiced,
        "current_usage_amount_cents": current,
        "from_datetime": holder.get("subscription_at"),
        "to_datetime": o.iso(store.clock()),
    }


def subscription_lifetime_usage(ctx: RequestContext) -> bytes:
    """``GET /subscriptions/{external_id}/lifetime_usage`` (404 lifetime_usage_not_found)."""
    require_read(ctx, "lifetime_usage")
    with ctx.store.lock:
        return dumps({"lifetime_usage": lifetime_usage(ctx.store, ctx.path_params["external_id"])})


# ---------------------------------------------------------------------------------- alerts


def _roll(*parts: object) -> int:
    """A number from 0 to 99 fixed by ``parts`` (which objects have alerts, and which)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return digest[0] * 100 // 256


def _alert(parent: str, code: str, created: datetime, now: datetime, **fields: Any) -> JsonObj:
    processed = created + timedelta(hours=6)
    return {
        "lago_id": derived_id("alert", parent, code),
        "lago_organization_id": ORGANIZATION_ID,
        "external_subscription_id": None,
        "subscription_external_id": None,
        "lago_wallet_id": None,
        "wallet_code": None,
        "billable_metric": None,
        "code": code,
        "previous_value": "0.0",
        "last_processed_at": o.iso(processed) if processed < now else None,
        "created_at": o.iso(created),
        **fields,
    }


def subscription_alerts(store: Store, external_id: str) -> list[JsonObj]:
    """Alerts of the subscriptions sharing ``external_id``: two in three have a usage-amount
    alert, and one in three of those a units alert on the plan's first metric too."""
    subscriptions = sorted(
        store.find_all("subscriptions", external_id=external_id), key=lambda s: s["created_at"]
    )
    if not subscriptions or _roll("alerts", external_id) >= 67:
        return []
    first_one, now = subscriptions[0], store.clock()
    created = o.parse_iso(first_one["created_at"]) + timedelta(hours=1)
    ids = {"external_subscription_id": external_id, "subscription_external_id": external_id}
    alerts = [
        _alert(
            external_id,
            "usage_amount",
            created,
            now,
            **ids,
            alert_type="current_usage_amount",
            name="Usage amount",
            direction="increasing",
            previous_value=o.decimal_str(_roll("previous", external_id) * 150),
            thresholds=[
                {"code": "warn", "value": "5000.0", "recurring": False},
                {"code": "critical", "value": "10000.0", "recurring": False},
            ],
        )
    ]
    plan = store.find_one("plans", code=first_one.get("plan_code")) or {}
    charges = plan.get("charges") or []
    metric = (
        store.find_one("billable_metrics", code=charges[0]["billable_metric_code"])
        if charges
        else None
    )
    if metric is not None and _roll("units", external_id) < 34:
        alerts.append(
            _alert(
                external_id,
                f"{metric['code']}_units",
                created + timedelta(minutes=5),
                now,
                **ids,
                alert_type="billable_metric_current_usage_units",
                name=None,
                direction="increasing",
                billable_metric=metric,
                thresholds=[{"code": None, "value": "1000.0", "recurring": True}],
            )
        )
    return _newest_first(alerts)


def wallet_alerts(store: Store, wallet: JsonObj) -> list[JsonObj]:
    """Alerts of a wallet: half the wallets have a low-balance alert."""
    if _roll("alerts", wallet["lago_id"]) >= 50:
        return []
    created = o.parse_iso(wallet["created_at"]) + timedelta(hours=2)
    return [
        _alert(
            wallet["lago_id"],
            "low_balance",
            created,
            store.clock(),
            lago_wallet_id=wallet["lago_id"],
            wallet_code=wallet.get("code"),
            alert_type="wallet_balance_amount",
            name="Low balance",
            direction="decreasing",
            previous_value=wallet.get("balance") or "0.0",
            thresholds=[{"code": "low", "value": "10.0", "recurring": False}],
        )
    ]


def _newest_first(alerts: list[JsonObj]) -> list[JsonObj]:
    """``created_at DESC, id ASC``."""
    alerts.sort(key=lambda a: a["lago_id"])
    alerts.sort(key=lambda a: a["created_at"], reverse=True)
    return alerts


def _alerts_page(ctx: RequestContext, alerts: list[JsonObj]) -> bytes:
    offset, limit, meta = page_window(ctx.query, len(alerts))
    return dumps({"alerts": alerts[offset : offset + limit], "meta": meta})


def list_subscription_alerts(ctx: RequestContext) -> bytes:
    """``GET /subscriptions/{external_id}/alerts``: the subscription must exist in
    ``subscription_status`` (or ``status``; default active), else 404."""
    require_read(ctx, "alert")
    external_id = ctx.path_params["external_id"]
    status = first(ctx, "subscription_status") or first(ctx, "status") or "active"
    with ctx.store.lock:
        found = status in ALERT_LOOKUP_STATUSES and ctx.store.find_one(
            "subscriptions", external_id=external_id, status=status
        )
        if not found:
            raise not_found("subscription")
        return _alerts_page(ctx, subscription_alerts(ctx.store, external_id))


def list_wallet_alerts(ctx: RequestContext) -> bytes:
    """``GET /customers/{external_customer_id}/wallets/{code}/alerts``: 404
    customer_not_found, then wallet_not_found; an active wallet wins a code collision."""
    require_read(ctx, "alert")
    store = ctx.store
    with store.lock:
        customer = store.customer(ctx.path_params["external_customer_id"])
        if customer is None:
            raise not_found("customer")
        wallets = [
            w
            for w in store.find_all("wallets", lago_customer_id=customer["lago_id"])
            if w.get("code") == ctx.path_params["code"]
        ]
        if not wallets:
            raise not_found("wallet")
        wallet = min(wallets, key=lambda w: w.get("status") != "active")
        return _alerts_page(ctx, wallet_alerts(store, wallet))


ROUTES: list[tuple[str, str, Callable[[RequestContext], bytes]]] = [
    ("GET", "/customers/{external_customer_id}/past_usage", customer_past_usage),
    ("GET", "/subscriptions/{external_id}/lifetime_usage", subscription_lifetime_usage),
    ("GET", "/subscriptions/{external_id}/alerts", list_subscription_alerts),
    ("GET", "/customers/{external_customer_id}/wallets/{code}/alerts", list_wallet_alerts),
]
