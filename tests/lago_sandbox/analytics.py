"""Analytics endpoints (LAGO_API_READS.md §11), computed from the stored organisation.

``GET /analytics/{gross_revenue,invoiced_usage,mrr,overdue_balance,invoice_collection}``
sum the stored invoices, fees and credit notes per month as the server's SQL does (each
function below says what it sums); ``GET /analytics/usage`` stands in for Lago's Data API
with usage computed from the stored events. Also the pieces the other new read endpoints
share: the organisation's id, the billing entity's id and the premium licence gate.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.store import (
    JsonObj,
    Store,
    dumps,
    forbidden,
    internal_error,
    parse_datetime,
    ruby_to_i,
)

if TYPE_CHECKING:
    from tests.lago_sandbox.server import RequestContext

#: Namespace of the sandbox's derived ids (uuid5), so they are the same on every run.
NAMESPACE = uuid.UUID("6f1c8e8a-3c55-4a43-9a53-3b1f5f0a1a90")
#: The organisation every sandbox object belongs to.
ORGANIZATION_ID = str(uuid.uuid5(NAMESPACE, "organization"))
#: Plan intervals in months, for spreading MRR (weekly is averaged instead).
_INTERVAL_MONTHS = {"monthly": 1, "quarterly": 3, "semiannual": 6, "yearly": 12}
_WEEKS_PER_MONTH = Decimal("4.33")
#: Days the Data API usage covers without a premium licence.
_UNLICENSED_USAGE_DAYS = 30


def derived_id(*parts: object) -> str:
    """A stable UUID for an object the sandbox derives from others."""
    return str(uuid.uuid5(NAMESPACE, ":".join(str(part) for part in parts)))


def billing_entity_id(code: str | None) -> str | None:
    """The ``lago_id`` of the billing entity with this code."""
    return derived_id("billing_entity", code) if code else None


def require_premium(ctx: RequestContext) -> None:
    """403 ``feature_unavailable`` unless the sandbox has a premium licence."""
    if not ctx.state.settings.get("premium"):
        raise forbidden("feature_unavailable")


def require_read(ctx: RequestContext, resource: str) -> None:
    """403 ``read_action_not_allowed_for_<resource>`` when the key may not read it (the
    ``read_denied`` setting: an organisation with API-key permissions)."""
    if resource in ctx.state.settings.get("read_denied", ()):
        raise forbidden(f"read_action_not_allowed_for_{resource}")


def first(ctx: RequestContext, name: str) -> str | None:
    """The first value of a query parameter."""
    values = ctx.query.get(name)
    return values[0] if values else None


def month_text(month: datetime) -> str:
    """A month as the analytics SQL writes it (a timestamp with milliseconds)."""
    return o.iso_ms(month)


def _dispute_lost(invoice: JsonObj) -> bool:
    return bool(invoice.get("payment_dispute_lost_at"))


class Window:
    """The months, currency and billing entity one analytics request covers."""

    def __init__(self, ctx: RequestContext, store: Store, *, by_customer: bool) -> None:
        now = store.clock()
        self.current = o.month_start(now)
        months = first(ctx, "months")
        if months is None:
            self.start = o.month_start(organization_created_at(store) or now)
        else:
            back = max(ruby_to_i(months) - 1, 0)
            self.start = o.add_months(self.current, -back)
        currency = first(ctx, "currency")
        self.currency = currency.upper() if currency else None
        code = first(ctx, "billing_entity_code")
        # An unknown code drops the filter (Analytics::BaseController#billing_entity).
        known = {c.get("billing_entity_code") for c in store.find_all("customers")}
        self.entity = code if code in known else None
        customer = first(ctx, "external_customer_id") if by_customer else None
        self.customer = customer or None

    def months(self) -> list[datetime]:
        """Every month of the window, oldest first."""
        out, month = [], self.start
        while month <= self.current:
            out.append(month)
            month = o.add_months(month, 1)
        return out

    def holds(self, month: datetime, currency: str | None) -> bool:
        """Whether a bucket is in the window and the currency filter."""
        return self.start <= month <= self.current and (
            self.currency is None or currency == self.currency
        )

    def invoice_matches(self, invoice: JsonObj) -> bool:
        """The billing entity and customer filters."""
        if self.entity is not None and invoice.get("billing_entity_code") != self.entity:
            return False
        if self.customer is not None:
            return bool((invoice.get("customer") or {}).get("external_id") == self.customer)
        return True


def organization_created_at(store: Store) -> datetime | None:
    """The organisation's creation: the earliest ``created_at`` of its catalog and customers."""
    stamps = [
        obj["created_at"]
        for resource in ("customers", "plans", "billable_metrics", "coupons", "add_ons", "taxes")
        for obj in store.find_all(resource)
        if obj.get("created_at")
    ]
    return o.parse_iso(min(stamps)) if stamps else None


def _month_of(value: str) -> datetime:
    return o.month_start(o.parse_iso(value))


# ------------------------------------------------------------------------------ the series


def gross_revenue(store: Store, window: Window) -> list[JsonObj]:
    """Finalized invoices (not self-billed, no lost dispute), each worth its
    ``total_amount_cents`` less the ``refund_amount_cents`` of all its credit notes (any
    status), by ``issuing_date`` month; plus pay-in-advance fees not yet invoiced, worth
    ``amount_cents``, by ``created_at`` month. Per month, currency and billing entity."""
    refunds: dict[str | None, int] = defaultdict(int)
    for note in store.find_all("credit_notes"):
        refunds[note.get("lago_invoice_id")] += int(note.get("refund_amount_cents") or 0)
    amounts: dict[tuple[datetime, str, str | None], Decimal] = defaultdict(Decimal)
    counts: dict[tuple[datetime, str, str | None], int] = defaultdict(int)
    for invoice in store.find_all("invoices", status="finalized"):
        if invoice.get("self_billed") or _dispute_lost(invoice):
            continue
        if not window.invoice_matches(invoice):
            continue
        key = (
            _month_of(invoice["issuing_date"]),
            invoice["currency"],
            invoice.get("billing_entity_code"),
        )
        amounts[key] += invoice["total_amount_cents"] - refunds[invoice["lago_id"]]
        counts[key] += 1
    customers = {c["lago_id"]: c for c in store.find_all("customers")}
    for fee in store.find_all("fees", lago_invoice_id=None):
        if not fee.get("pay_in_advance"):
            continue
        customer = customers.get(fee.get("lago_customer_id")) or {}
        if window.customer is not None and customer.get("external_id") != window.customer:
            continue
        entity = customer.get("billing_entity_code")
        if window.entity is not None and entity != window.entity:
            continue
        key = (_month_of(fee["created_at"]), fee["amount_currency"], entity)
        amounts[key] += fee["amount_cents"]
        counts.setdefault(key, 0)
    rows = [
        {
            "month": month_text(month),
            "amount_cents": float(amount),
            "currency": currency,
            "invoices_count": f"{counts[(month, currency, entity)]}.0",
            "billing_entity_id": billing_entity_id(entity),
        }
        for (month, currency, entity), amount in amounts.items()
        if window.holds(month, currency)
    ]
    # ORDER BY month ASC; the server has no tie-breaker, the sandbox orders the rest.
    return sorted(rows, key=lambda r: (r["month"], r["currency"], r["billing_entity_id"] or ""))


def invoiced_usage(store: Store, window: Window) -> list[JsonObj]:
    """Charge fees attached to an invoice (any invoice status; not self-billed, no lost
    dispute), each worth ``amount_cents - precise_coupons_amount_cents``, by the fee's
    ``created_at`` month, per billable metric code and currency."""
    invoices = {i["lago_id"]: i for i in store.find_all("invoices")}
    amounts: dict[tuple[datetime, str, str], Decimal] = defaultdict(Decimal)
    for fee in store.find_all("fees"):
        item = fee.get("item") or {}
        invoice = invoices.get(fee.get("lago_invoice_id"))
        if item.get("type") != "charge" or invoice is None:
            continue
        if invoice.get("self_billed") or _dispute_lost(invoice):
            continue
        if not window.invoice_matches(invoice):
            continue
        worth = Decimal(fee["amount_cents"]) - Decimal(fee.get("precise_coupons_amount_cents") or 0)
        amounts[(_month_of(fee["created_at"]), item["code"], fee["amount_currency"])] += worth
    rows: list[JsonObj] = [
        {
            "month": month_text(month),
            "code": code,
            "currency": currency,
            "amount_cents": float(amount),
        }
        for (month, code, currency), amount in amounts.items()
        if window.holds(month, currency)
    ]
    rows.sort(key=lambda r: r["code"])
    rows.sort(key=lambda r: (r["month"], r["amount_cents"]), reverse=True)
    return rows


def mrr(store: Store, window: Window) -> list[JsonObj]:
    """Subscription fees of finalized invoices (not self-billed, no lost dispute), each
    worth ``amount_cents - precise_coupons_amount_cents + taxes_amount_cents``, spread by
    the plan's interval: monthly to the invoice's issuing month; quarterly, semiannual and
    yearly in equal shares over 3, 6 or 12 months, forward from the issuing month when paid
    in advance, backward from the month before it in arrears; weekly as the month's weekly
    fees averaged, times 4.33. One row per month and currency, and a row with a null
    currency and amount for a month without any (unless ``currency`` is given)."""
    invoices = {
        i["lago_id"]: i
        for i in store.find_all("invoices", status="finalized")
        if not i.get("self_billed") and not _dispute_lost(i) and window.invoice_matches(i)
    }
    subscriptions = {s["lago_id"]: s for s in store.find_all("subscriptions")}
    plans = {p["code"]: p for p in store.find_all("plans")}
    spread: dict[tuple[datetime, str], Decimal] = defaultdict(Decimal)
    weekly: dict[tuple[datetime, str], list[Decimal]] = defaultdict(list)
    for fee in store.find_all("fees"):
        invoice = invoices.get(fee.get("lago_invoice_id"))
        if (fee.get("item") or {}).get("type") != "subscription" or invoice is None:
            continue
        worth = (
            Decimal(fee["amount_cents"])
            - Decimal(fee.get("precise_coupons_amount_cents") or 0)
            + Decimal(fee.get("taxes_amount_cents") or 0)
        )
        subscription = subscriptions.get(fee.get("lago_subscription_id")) or {}
        interval = (plans.get(subscription.get("plan_code")) or {}).get("interval", "monthly")
        issued = _month_of(invoice["issuing_date"])
        currency = fee["amount_currency"]
        if interval == "weekly":
            weekly[(issued, currency)].append(worth)
            continue
        count = _INTERVAL_MONTHS.get(interval, 1)
        begin = issued if fee.get("pay_in_advance") or count == 1 else o.add_months(issued, -count)
        for step in range(count):
            spread[(o.add_months(begin, step), currency)] += worth / count
    for key, worths in weekly.items():
        spread[key] += sum(worths, Decimal(0)) / len(worths) * _WEEKS_PER_MONTH
    rows: list[JsonObj] = []
    for month in window.months():
        currencies = sorted(c for m, c in spread if m == month and window.holds(m, c))
        if not currencies and window.currency is None:
            rows.append({"month": month_text(month), "amount_cents": None, "currency": None})
        for currency in currencies:
            amount = spread[(month, currency)].quantize(Decimal("0.000001"))
            rows.append(
                {
                    "month": month_text(month),
                    "amount_cents": o.decimal_str(amount),
                    "currency": currency,
                }
            )
    return rows


def overdue_balance(store: Store, window: Window) -> list[JsonObj]:
    """Invoices with ``payment_overdue`` (any status but deleted, hidden ones included; not
    self-billed), each worth ``total_amount_cents - total_paid_amount_cents`` less the
    ``offset_amount_cents`` of its finalized credit notes, by ``payment_due_date`` month,
    per currency and billing entity, with the invoices' ids."""
    offsets: dict[str | None, int] = defaultdict(int)
    for note in store.find_all("credit_notes"):
        if o.listed("credit_notes", note):  # finalized
            offsets[note.get("lago_invoice_id")] += int(note.get("offset_amount_cents") or 0)
    amounts: dict[tuple[datetime, str, str | None], Decimal] = defaultdict(Decimal)
    ids: dict[tuple[datetime, str, str | None], list[str]] = defaultdict(list)
    for invoice in store.find_all("invoices"):
        if not invoice.get("payment_overdue") or invoice.get("status") == "deleted":
            continue
        if invoice.get("self_billed") or not window.invoice_matches(invoice):
            continue
        key = (
            _month_of(invoice["payment_due_date"]),
            invoice["currency"],
            invoice.get("billing_entity_code"),
        )
        amounts[key] += (
            invoice["total_amount_cents"]
            - int(invoice.get("total_paid_amount_cents") or 0)
            - offsets[invoice["lago_id"]]
        )
        ids[key].append(invoice["lago_id"])
    rows = [
        {
            "month": month_text(month),
            "amount_cents": o.decimal_str(amount),
            "currency": currency,
            "lago_invoice_ids": sorted(ids[(month, currency, entity)]),
            "billing_entity_id": billing_entity_id(entity),
        }
        for (month, currency, entity), amount in amounts.items()
        if window.holds(month, currency)
    ]
    return sorted(rows, key=lambda r: (r["month"], r["currency"], r["billing_entity_id"] or ""))


def invoice_collection(store: Store, window: Window) -> list[JsonObj]:
    """Finalized invoices (not self-billed, no lost dispute) by ``issuing_date`` month,
    payment status and currency: how many, and their ``total_amount_cents``. A month
    without any gives one row with null status and currency (unless ``currency`` is
    given)."""
    counts: dict[tuple[datetime, str, str], int] = defaultdict(int)
    amounts: dict[tuple[datetime, str, str], int] = defaultdict(int)
    for invoice in store.find_all("invoices", status="finalized"):
        if invoice.get("self_billed") or _dispute_lost(invoice):
            continue
        if not window.invoice_matches(invoice):
            continue
        key = (
            _month_of(invoice["issuing_date"]),
            invoice["payment_status"],
            invoice["currency"],
        )
        counts[key] += 1
        amounts[key] += invoice["total_amount_cents"]
    rows: list[JsonObj] = []
    for month in window.months():
        keys = sorted(k for k in counts if k[0] == month and window.holds(month, k[2]))
        if not keys and window.currency is None:
            rows.append(
                {
                    "month": month_text(month),
                    "payment_status": None,
                    "invoices_count": 0,
                    "amount_cents": 0.0,
                    "currency": None,
                }
            )
        for key in keys:
            rows.append(
                {
                    "month": month_text(month),
                    "payment_status": key[1],
                    "invoices_count": counts[key],
                    "amount_cents": float(amounts[key]),
                    "currency": key[2],
                }
            )
    return rows


# ---------------------------------------------------------------------- usage (Data API)


def _periods(granularity: str, start: date, end: date) -> list[tuple[date, date]]:
    """The periods of a granularity covering ``start``..``end`` (inclusive days)."""
    if granularity == "monthly":
        begin = start.replace(day=1)
    elif granularity == "weekly":
        begin = start - timedelta(days=start.weekday())
    else:
        begin = start
    out = []
    while begin <= end:
        if granularity == "monthly":
            following = (begin.replace(day=28) + timedelta(days=4)).replace(day=1)
        elif granularity == "weekly":
            following = begin + timedelta(days=7)
        else:
            following = begin + timedelta(days=1)
        out.append((begin, following - timedelta(days=1)))
        begin = following
    return out


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), timezone.utc)


def usage(ctx: RequestContext, store: Store) -> list[JsonObj]:
    """Per period and billable metric: the units and amount of every started subscription,
    computed from its events as current usage is (``objects.customer_usage``), periods with
    events only. Licensed: ``time_granularity`` (default daily), ``from_date``,
    ``to_date`` (default: the first event's day to today), ``currency``,
    ``external_customer_id``, ``external_subscription_id``, ``plan_code`` and
    ``billable_metric_code``. Unlicensed: ``billable_metric_code`` only, daily, over the
    last 30 days (``DataApi::UsagesService#filtered_params``)."""
    now = store.clock()
    today = now.date()
    metric_code = first(ctx, "billable_metric_code")
    premium = bool(ctx.state.settings.get("premium"))
    events = store.find_all("events")
    if premium:
        granularity = first(ctx, "time_granularity") or "daily"
        oldest = min((e["timestamp"] for e in events), default=None)
        start = _date_param(ctx, "from_date") or (o.parse_iso(oldest).date() if oldest else today)
        end = _date_param(ctx, "to_date") or today
        filters = {
            name: first(ctx, name)
            for name in (
                "currency",
                "external_customer_id",
                "external_subscription_id",
                "plan_code",
            )
        }
    else:
        granularity, start, end = "daily", today - timedelta(days=_UNLICENSED_USAGE_DAYS), today
        filters = {}
    if granularity not in ("daily", "weekly", "monthly"):
        granularity = "daily"
    by_subscription: dict[str, list[JsonObj]] = defaultdict(list)
    for event in events:
        if event.get("external_subscription_id"):
            by_subscription[event["external_subscription_id"]].append(event)
    customers = {c["external_id"]: c for c in store.find_all("customers")}
    plans = {p["code"]: p for p in store.find_all("plans")}
    metrics = {m["code"]: m for m in store.find_all("billable_metrics")}
    totals: dict[tuple[date, date, str, str], list[Decimal]] = {}
    periods = _periods(granularity, start, end)
    for sub in store.find_all("subscriptions"):
        if not sub.get("started_at") or not _usage_matches(sub, filters):
            continue
        customer = customers.get(sub["external_customer_id"])
        plan = plans.get(sub.get("plan_code"))
        own = by_subscription.get(sub["external_id"])
        if customer is None or plan is None or not own:
            continue
        began = o.parse_iso(sub["started_at"])
        ended = o.parse_iso(sub["terminated_at"]) if sub.get("terminated_at") else None
        for low, high in periods:
            period = (_midnight(low), _midnight(high) + timedelta(days=1, seconds=-1))
            if period[1] < began or (ended is not None and period[0] > ended):
                continue
            if ended is not None:  # a successor sharing the external id takes the rest
                period = (period[0], min(period[1], ended))
            computed = o.customer_usage(customer, sub, plan, metrics, own, now=now, period=period)
            currency = computed["currency"]
            wanted = filters.get("currency")
            if wanted and currency != wanted.upper():
                continue
            for charge in computed["charges_usage"]:
                code = charge["billable_metric"]["code"]
                if not charge["events_count"] or (metric_code and code != metric_code):
                    continue
                total = totals.setdefault((low, high, code, currency), [Decimal(0), Decimal(0)])
                total[0] += Decimal(charge["units"])
                total[1] += charge["amount_cents"]
    return [
        {
            "organization_id": ORGANIZATION_ID,
            "start_of_period_dt": low.isoformat(),
            "end_of_period_dt": high.isoformat(),
            "amount_currency": currency,
            "amount_cents": int(amount),
            "billable_metric_code": code,
            "units": o.decimal_str(units),
            "is_billable_metric_deleted": code not in metrics,
        }
        for (low, high, code, currency), (units, amount) in sorted(totals.items())
    ]


def _usage_matches(sub: JsonObj, filters: dict[str, str | None]) -> bool:
    checks = (
        ("external_customer_id", sub.get("external_customer_id")),
        ("external_subscription_id", sub.get("external_id")),
        ("plan_code", sub.get("plan_code")),
    )
    return all(not filters.get(name) or filters[name] == value for name, value in checks)


def _date_param(ctx: RequestContext, name: str) -> date | None:
    value = first(ctx, name)
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise internal_error()  # the Data API call fails: unrescued on the server
    return parsed.date()


# ------------------------------------------------------------------------------ the routes

_SERIES: dict[str, tuple[str, Callable[[Store, Window], list[JsonObj]], bool, bool]] = {
    # endpoint: (wrapper, series, premium only, filter by external_customer_id)
    "gross_revenue": ("gross_revenues", gross_revenue, False, True),
    "invoiced_usage": ("invoiced_usages", invoiced_usage, True, False),
    "mrr": ("mrrs", mrr, True, False),
    "overdue_balance": ("overdue_balances", overdue_balance, False, True),
    "invoice_collection": ("invoice_collections", invoice_collection, True, False),
}


def _series_handler(endpoint: str) -> Callable[[RequestContext], bytes]:
    wrapper, series, premium, by_customer = _SERIES[endpoint]

    def handler(ctx: RequestContext) -> bytes:
        require_read(ctx, "analytic")
        if premium:
            require_premium(ctx)
        with ctx.store.lock:
            rows = series(ctx.store, Window(ctx, ctx.store, by_customer=by_customer))
        return dumps({wrapper: rows})

    handler.__name__ = f"analytics_{endpoint}"
    return handler


def analytics_usage(ctx: RequestContext) -> bytes:
    """``GET /analytics/usage`` (no 403 without a licence: a narrower answer)."""
    require_read(ctx, "analytic")
    with ctx.store.lock:
        rows = usage(ctx, ctx.store)
    return dumps({"usages": rows})


ROUTES: list[tuple[str, str, Callable[[RequestContext], bytes]]] = [
    *(("GET", f"/analytics/{endpoint}", _series_handler(endpoint)) for endpoint in _SERIES),
    ("GET", "/analytics/usage", analytics_usage),
]
