"""Builders of Lago API objects, in exactly the shape of the list endpoints.

Every object built here is a list item of the official spec (the component named in
:data:`COMPONENTS`): every required field is present, nullable required fields are an
explicit ``null``, decimals are strings, money in minor units is an integer, timestamps are
``YYYY-MM-DDTHH:MM:SSZ`` (event ``timestamp`` and subscription ``started_at`` carry
milliseconds, as the real server's ``iso8601(3)``) and dates are ``YYYY-MM-DD``.

The store of the sandbox keeps these dicts and serves them as they are; :func:`complete`
fills in a partial object (a write, or ``/_sandbox/upsert``), :func:`customer_usage`
computes the current usage of a subscription from its events, and :func:`listed` says
whether the real server's list endpoint shows an object.

Where the spec and the real server (v1.51.0) disagree:

* followed the server: invoices carry ``voided_at`` (not in the spec); a wallet's
  ``terminated_at`` has milliseconds (a raw Time); hidden invoice statuses
  (``generating``/``open``/``closed``) exist although the spec's enum lacks them (the list
  never shows them); wallets carry ``balance``, which the spec requires without defining;
  payments (built in ``cash.py``) carry the server's nulls and provider class names
  (``cash.spec_view``).
* kept to the spec where the server would send ``null`` to a non-nullable field: an
  absent ``billing_configuration.payment_provider`` (and its code and customer id), and an
  absent invoice ``file_url`` (drafts and unfinished invoices) and
  ``payment_dispute_lost_at`` are left out rather than sent as ``null``.
* spec defects avoided by choice of data: ``on_termination_credit_note`` is nullable but its
  enum has no ``null``, so plans are paid in advance and the field is ``"credit"``; event
  ``properties`` values are ``oneOf [string, number, integer]``, which rejects every JSON
  integer, so seeded whole quantities are numeric strings.
* credit notes have no status field in the API: a draft (which the list hides) is one
  whose ``error_details`` is not empty.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

RESOURCES: tuple[str, ...] = (
    "customers",
    "subscriptions",
    "invoices",
    "billable_metrics",
    "plans",
    "events",
    "coupons",
    "add_ons",
    "fees",
    "credit_notes",
    "wallets",
    "wallet_transactions",
    "taxes",
    "applied_coupons",
    # Built, seeded and served by cash.py and organisation.py.
    "payments",
    "payment_requests",
    "payment_receipts",
    "payment_methods",
    "billing_entities",
    "features",
    "entitlements",
    "webhook_endpoints",
)

COMPONENTS: dict[str, str] = {
    "customers": "CustomerObjectExtended",
    "subscriptions": "SubscriptionObject",
    "invoices": "InvoiceObject",
    "billable_metrics": "BillableMetricObject",
    "plans": "PlanObject",
    "events": "EventObject",
    "coupons": "CouponObject",
    "add_ons": "AddOnObject",
    "fees": "FeeObject",
    "credit_notes": "CreditNoteObject",
    "wallets": "WalletObject",
    "wallet_transactions": "WalletTransactionObject",
    "taxes": "TaxObject",
    "applied_coupons": "AppliedCouponObjectExtended",
    "payments": "PaymentObject",
    "payment_requests": "PaymentRequestObject",
    "payment_receipts": "PaymentReceiptObject",
    "payment_methods": "PaymentMethodObject",
    "billing_entities": "BillingEntityObject",
    "features": "FeatureObject",
    "entitlements": "PlanEntitlementObject",
    "webhook_endpoints": "WebhookEndpointObject",
}

USAGE_COMPONENT = "CustomerUsageObject"

SUBSCRIPTION_STATUSES = ("active", "pending", "terminated", "canceled")
VISIBLE_INVOICE_STATUSES = frozenset({"draft", "finalized", "voided", "failed", "pending"})
HIDDEN_INVOICE_STATUSES = frozenset({"generating", "open", "closed", "deleted"})
AGGREGATION_TYPES = (
    "count_agg",
    "sum_agg",
    "max_agg",
    "unique_count_agg",
    "latest_agg",
    "weighted_sum_agg",
)

ORGANIZATION_PREFIX = "ACM"
BILLING_ENTITY_CODE = "acme_corp"
DEFAULT_CURRENCY = "EUR"

IdFactory = Callable[[], str]


# --------------------------------------------------------------------------- time helpers


def new_lago_id() -> str:
    """Return a new random ``lago_id`` (a UUID4 string)."""
    return str(uuid.uuid4())


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def iso(dt: datetime) -> str:
    """Format a datetime as the server does (``iso8601``): ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    if dt.tzinfo is not timezone.utc:
        dt = _utc(dt)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z"
    )


def iso_ms(dt: datetime) -> str:
    """Format a datetime with milliseconds (``iso8601(3)``): ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    dt = _utc(dt)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_date(value: datetime | date) -> str:
    """Format a date (or the UTC date of a datetime) as ``YYYY-MM-DD``."""
    if isinstance(value, datetime):
        value = _utc(value).date()
    return value.isoformat()


_FRACTION = re.compile(r"\.(\d+)")


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 date-time (``Z`` or an offset; a bare date is midnight) into UTC.

    Raises:
        ValueError: when ``value`` is not an ISO-8601 date or date-time.
    """
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), timezone.utc)
    # Python 3.10's fromisoformat takes only 3 or 6 fractional digits: pad or cut to 6.
    text = _FRACTION.sub(lambda match: "." + (match.group(1) + "000000")[:6], text)
    return _utc(datetime.fromisoformat(text))


def month_start(dt: datetime) -> datetime:
    """Return the first instant (UTC) of the calendar month containing ``dt``."""
    dt = _utc(dt)
    return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(dt: datetime, months: int) -> datetime:
    """Return ``dt`` moved by whole calendar months (the day is clamped to the month)."""
    index = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_first = date(year + (month == 12), month % 12 + 1, 1)
    last_day = (next_first - timedelta(days=1)).day
    return dt.replace(year=year, month=month, day=min(dt.day, last_day))


def period_bounds(now: datetime) -> tuple[datetime, datetime]:
    """Return the calendar month containing ``now``: first second and last second."""
    start = month_start(now)
    return start, add_months(start, 1) - timedelta(seconds=1)


def decimal_str(value: Decimal | int | float) -> str:
    """Format a decimal as the server does (Ruby ``BigDecimal#to_s``): ``"3.0"``, ``"12.5"``."""
    number = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if number == number.to_integral_value():
        return f"{int(number)}.0"
    text = format(number.normalize(), "f")
    return text


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


# ------------------------------------------------------------------------------- visibility


def listed(resource: str, obj: dict[str, Any]) -> bool:
    """Return whether the real server's list endpoint shows ``obj`` at all.

    Invoices in ``generating``, ``open``, ``closed`` or ``deleted`` are hidden. Credit
    notes are listed only when finalized; the API shape has no status field, so a draft
    credit note is one that carries ``error_details`` (a tax error keeps it in draft).
    Subscriptions are shown by status filter, which is the server's business.
    """
    if resource == "invoices":
        return obj.get("status") in VISIBLE_INVOICE_STATUSES
    if resource == "credit_notes":
        return not obj.get("error_details")
    return True


# --------------------------------------------------------------------------- the builders


def tax_object(
    new_id: IdFactory, now: datetime, code: str, name: str, rate: float, **extra: Any
) -> dict[str, Any]:
    """Return a ``TaxObject``."""
    obj = {
        "lago_id": new_id(),
        "name": name,
        "code": code,
        "description": None,
        "rate": float(rate),
        "applied_to_organization": False,
        "created_at": iso(now),
    }
    obj.update(extra)
    return obj


def _customer(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    created = f.get("created_at") or iso(now)
    sequential_id = f.get("sequential_id", 1)
    lago_id = f.get("lago_id") or new_id()
    return {
        "lago_id": lago_id,
        "sequential_id": sequential_id,
        "slug": f"{ORGANIZATION_PREFIX}-{sequential_id:03d}"
        if isinstance(sequential_id, int)
        else f"{ORGANIZATION_PREFIX}-{sequential_id}",
        "external_id": f"cust_{lago_id[:8]}",
        "billing_entity_code": BILLING_ENTITY_CODE,
        "address_line1": None,
        "address_line2": None,
        "applicable_timezone": "UTC",
        "city": None,
        "country": None,
        "currency": None,
        "email": None,
        "legal_name": None,
        "legal_number": None,
        "logo_url": None,
        "name": None,
        "firstname": None,
        "lastname": None,
        "account_type": "customer",
        "customer_type": None,
        "phone": None,
        "state": None,
        "tax_identification_number": None,
        "timezone": None,
        "url": None,
        "zipcode": None,
        "net_payment_term": None,
        "created_at": created,
        "updated_at": created,
        "finalize_zero_amount_invoice": "inherit",
        "skip_invoice_custom_sections": False,
        "billing_configuration": {},
        "shipping_address": {},
        "metadata": [],
        "integration_customers": [],
        "taxes": [],
    }


BILLING_CONFIGURATION_DEFAULTS: dict[str, Any] = {
    "invoice_grace_period": 0,
    "subscription_invoice_issuing_date_anchor": None,
    "subscription_invoice_issuing_date_adjustment": None,
    "document_locale": "en",
}
ADDRESS_KEYS = ("address_line1", "address_line2", "city", "country", "state", "zipcode")


def _finish_customer(obj: dict[str, Any], now: datetime, new_id: IdFactory) -> None:
    config = dict(BILLING_CONFIGURATION_DEFAULTS)
    config.update(obj.get("billing_configuration") or {})
    # The spec's payment_provider is not nullable: without a provider the key is left out.
    for key in ("payment_provider", "payment_provider_code", "provider_customer_id"):
        if config.get(key) is None:
            config.pop(key, None)
    obj["billing_configuration"] = config
    address = dict.fromkeys(ADDRESS_KEYS)
    address.update(obj.get("shipping_address") or {})
    obj["shipping_address"] = address
    created = obj.get("updated_at") or obj["created_at"]
    obj["metadata"] = [
        {
            "lago_id": entry.get("lago_id") or entry.get("id") or new_id(),
            "key": str(entry.get("key", "")),
            "value": str(entry.get("value", "")),
            "display_in_invoice": bool(entry.get("display_in_invoice", False)),
            "created_at": entry.get("created_at") or created,
        }
        for entry in obj.get("metadata") or []
    ]


def _subscription(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    created = f.get("created_at") or iso(now)
    status = f.get("status", "active")
    lago_id = f.get("lago_id") or new_id()
    subscription_at = f.get("subscription_at") or created
    started = None
    if status in ("active", "terminated"):
        started = iso_ms(parse_iso(subscription_at))
    period_start = period_end = None
    if status == "active":
        start, end = period_bounds(now)
        period_start, period_end = iso(start), iso(end)
    return {
        "lago_id": lago_id,
        "external_id": f"sub_{lago_id[:8]}",
        "lago_customer_id": new_id(),
        "external_customer_id": f"cust_{lago_id[:8]}",
        "billing_entity_code": BILLING_ENTITY_CODE,
        "billing_time": "calendar",
        "name": None,
        "plan_code": "starter",
        "plan_amount_cents": 0,
        "plan_amount_currency": DEFAULT_CURRENCY,
        "status": status,
        "created_at": created,
        "canceled_at": iso(now) if status == "canceled" else None,
        "started_at": started,
        "ending_at": None,
        "subscription_at": subscription_at,
        "terminated_at": iso(now) if status == "terminated" else None,
        "previous_plan_code": None,
        "next_plan_code": None,
        "downgrade_plan_date": None,
        "trial_ended_at": None,
        "current_billing_period_started_at": period_start,
        "current_billing_period_ending_at": period_end,
        # The spec's enum has no null although the field is nullable; plans here are paid
        # in advance, for which the server sends a value ("credit" unless told otherwise).
        "on_termination_credit_note": "credit",
        "on_termination_invoice": "generate",
        "applied_invoice_custom_sections": [],
        "consolidate_invoice": True,
        "activated_at": iso(parse_iso(started)) if started else None,
        "activation_rules": [],
        "purchase_order_number": None,
    }


def _invoice(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    created = f.get("created_at") or iso(now)
    issuing = f.get("issuing_date") or created[:10]
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "billing_entity_code": BILLING_ENTITY_CODE,
        "sequential_id": 1,
        "number": f"{ORGANIZATION_PREFIX}-001-001",
        "issuing_date": issuing,
        "payment_due_date": issuing,
        "payment_overdue": False,
        "net_payment_term": 0,
        "invoice_type": "subscription",
        "status": "finalized",
        "payment_status": "pending",
        "currency": DEFAULT_CURRENCY,
        "fees_amount_cents": 0,
        "coupons_amount_cents": 0,
        "credit_notes_amount_cents": 0,
        "sub_total_excluding_taxes_amount_cents": None,
        "taxes_amount_cents": 0,
        "sub_total_including_taxes_amount_cents": None,
        "prepaid_credit_amount_cents": 0,
        "prepaid_granted_credit_amount_cents": 0,
        "prepaid_purchased_credit_amount_cents": 0,
        "progressive_billing_credit_amount_cents": 0,
        "total_amount_cents": None,
        "version_number": 4,
        "self_billed": False,
        # Not in the spec, but the server's serializer sends it (null unless voided).
        "voided_at": None,
        "created_at": created,
        "updated_at": created,
        "metadata": [],
        "applied_taxes": [],
        "applied_invoice_custom_sections": [],
        "applied_usage_thresholds": [],
    }


def _finish_invoice(obj: dict[str, Any], now: datetime, new_id: IdFactory) -> None:
    if obj["sub_total_excluding_taxes_amount_cents"] is None:
        obj["sub_total_excluding_taxes_amount_cents"] = max(
            0, obj["fees_amount_cents"] - obj["coupons_amount_cents"]
        )
    if obj["sub_total_including_taxes_amount_cents"] is None:
        obj["sub_total_including_taxes_amount_cents"] = (
            obj["sub_total_excluding_taxes_amount_cents"] + obj["taxes_amount_cents"]
        )
    if obj["total_amount_cents"] is None:
        obj["total_amount_cents"] = max(
            0,
            obj["sub_total_including_taxes_amount_cents"]
            - obj["credit_notes_amount_cents"]
            - obj["prepaid_credit_amount_cents"]
            - obj["progressive_billing_credit_amount_cents"],
        )
    if obj.get("file_url") is None and obj["status"] == "finalized":
        obj["file_url"] = f"https://lago.example.test/invoices/{obj['lago_id']}.pdf"
    if obj.get("file_url") is None:
        obj.pop("file_url", None)


def _billable_metric(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    aggregation = f.get("aggregation_type", "count_agg")
    code = f.get("code", "api_calls")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "name": code.replace("_", " ").title(),
        "code": code,
        "description": None,
        "recurring": aggregation == "weighted_sum_agg",
        "rounding_function": None,
        "rounding_precision": None,
        "created_at": iso(now),
        "expression": "",
        "field_name": None if aggregation == "count_agg" else "value",
        "aggregation_type": aggregation,
        "weighted_interval": "seconds" if aggregation == "weighted_sum_agg" else None,
        "filters": [],
    }


def charge_object(
    new_id: IdFactory,
    now: datetime,
    metric: dict[str, Any],
    charge_model: str = "standard",
    properties: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Return a ``ChargeObject`` of a plan on the given billable metric."""
    obj = {
        "lago_id": new_id(),
        "lago_billable_metric_id": metric["lago_id"],
        "billable_metric_code": metric["code"],
        "invoice_display_name": metric["name"],
        "created_at": iso(now),
        "charge_model": charge_model,
        "pay_in_advance": False,
        "invoiceable": True,
        "regroup_paid_fees": None,
        "prorated": False,
        "min_amount_cents": 0,
        "properties": properties if properties is not None else {"amount": "0.01"},
        "filters": [],
        "taxes": [],
    }
    obj.update(extra)
    return obj


def _plan(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    code = f.get("code", "starter")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "name": code.replace("_", " ").title(),
        "invoice_display_name": code.replace("_", " ").title(),
        "created_at": iso(now),
        "code": code,
        "interval": "monthly",
        "description": "",
        "amount_cents": 0,
        "amount_currency": DEFAULT_CURRENCY,
        "trial_period": 0.0,
        "pay_in_advance": True,
        "bill_charges_monthly": None,
        "bill_fixed_charges_monthly": None,
        "minimum_commitment": None,
        "charges": [],
        "fixed_charges": [],
        "taxes": [],
        "usage_thresholds": [],
        "metadata": None,
    }


def _event(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "transaction_id": f.get("transaction_id") or new_id(),
        "lago_customer_id": None,
        "code": "api_calls",
        "timestamp": iso_ms(now),
        "precise_total_amount_cents": None,
        "properties": {},
        "lago_subscription_id": None,
        "external_subscription_id": "",
        "created_at": iso(now),
    }


def _coupon(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    coupon_type = f.get("coupon_type", "fixed_amount")
    fixed = coupon_type == "fixed_amount"
    code = f.get("code", "welcome")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "name": code.replace("_", " ").title(),
        "code": code,
        "description": None,
        "coupon_type": coupon_type,
        "amount_cents": 1000 if fixed else None,
        "amount_currency": DEFAULT_CURRENCY if fixed else None,
        "reusable": True,
        "limited_plans": False,
        "plan_codes": [],
        "limited_billable_metrics": False,
        "billable_metric_codes": [],
        "percentage_rate": None if fixed else "10.0",
        "frequency": "once",
        "frequency_duration": None,
        "expiration": "no_expiration",
        "expiration_at": None,
        "created_at": iso(now),
        "terminated_at": None,
    }


def _add_on(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    code = f.get("code", "setup_fee")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "name": code.replace("_", " ").title(),
        "invoice_display_name": None,
        "code": code,
        "amount_cents": 0,
        "amount_currency": DEFAULT_CURRENCY,
        "description": None,
        "created_at": iso(now),
        "taxes": [],
    }


def _fee(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_charge_id": None,
        "lago_charge_filter_id": None,
        "lago_fixed_charge_id": None,
        "lago_invoice_id": None,
        "lago_true_up_fee_id": None,
        "lago_true_up_parent_fee_id": None,
        "lago_subscription_id": None,
        "lago_customer_id": None,
        "external_customer_id": None,
        "external_subscription_id": None,
        "amount_cents": 0,
        "precise_amount": None,
        "precise_total_amount": None,
        "amount_currency": DEFAULT_CURRENCY,
        "taxes_amount_cents": 0,
        "taxes_precise_amount": None,
        "taxes_rate": 0.0,
        "units": "1.0",
        "precise_unit_amount": None,
        "total_aggregated_units": None,
        "total_amount_cents": None,
        "total_amount_currency": None,
        "events_count": None,
        "pay_in_advance": False,
        "invoiceable": True,
        "from_date": None,
        "to_date": None,
        "payment_status": "pending",
        "created_at": iso(now),
        "succeeded_at": None,
        "failed_at": None,
        "refunded_at": None,
        "event_transaction_id": None,
        "description": None,
        "precise_coupons_amount_cents": "0.0",
        "sub_total_excluding_taxes_amount_cents": None,
        "sub_total_excluding_taxes_precise_amount_cents": None,
        "self_billed": False,
        "item": {},
        "applied_taxes": [],
    }


def _finish_fee(obj: dict[str, Any], now: datetime, new_id: IdFactory) -> None:
    amount = obj["amount_cents"]
    units = _dec(obj["units"])
    if obj["precise_amount"] is None:
        obj["precise_amount"] = decimal_str(Decimal(amount) / 100)
    if obj["taxes_precise_amount"] is None:
        obj["taxes_precise_amount"] = decimal_str(Decimal(obj["taxes_amount_cents"]) / 100)
    if obj["precise_total_amount"] is None:
        obj["precise_total_amount"] = decimal_str(Decimal(amount + obj["taxes_amount_cents"]) / 100)
    if obj["precise_unit_amount"] is None:
        unit = Decimal(amount) / 100 / units if units else Decimal(0)
        obj["precise_unit_amount"] = decimal_str(unit.quantize(Decimal("0.000001")))
    if obj["total_aggregated_units"] is None:
        obj["total_aggregated_units"] = obj["units"]
    if obj["total_amount_cents"] is None:
        obj["total_amount_cents"] = amount + obj["taxes_amount_cents"]
    if obj["total_amount_currency"] is None:
        obj["total_amount_currency"] = obj["amount_currency"]
    if obj["sub_total_excluding_taxes_amount_cents"] is None:
        obj["sub_total_excluding_taxes_amount_cents"] = amount
    if obj["sub_total_excluding_taxes_precise_amount_cents"] is None:
        obj["sub_total_excluding_taxes_precise_amount_cents"] = decimal_str(
            obj["sub_total_excluding_taxes_amount_cents"]
        )
    item = {
        "type": "subscription",
        "code": obj.get("external_subscription_id") or "subscription",
        "name": "Subscription",
        "description": None,
        "invoice_display_name": "Subscription",
        "filter_invoice_display_name": None,
        "filters": None,
        "lago_item_id": obj.get("lago_subscription_id") or new_id(),
        "item_type": "Subscription",
    }
    item.update(obj["item"] or {})
    obj["item"] = item


def _credit_note(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    created = f.get("created_at") or iso(now)
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "billing_entity_code": BILLING_ENTITY_CODE,
        "sequential_id": 1,
        "number": f"{ORGANIZATION_PREFIX}-001-001-CN001",
        "lago_invoice_id": new_id(),
        "invoice_number": f"{ORGANIZATION_PREFIX}-001-001",
        "issuing_date": created[:10],
        "credit_status": "available",
        "refund_status": None,
        "reason": "other",
        "description": None,
        "currency": DEFAULT_CURRENCY,
        "total_amount_cents": 0,
        "taxes_amount_cents": 0,
        "taxes_rate": 0.0,
        "sub_total_excluding_taxes_amount_cents": 0,
        "balance_amount_cents": 0,
        "credit_amount_cents": 0,
        "refund_amount_cents": 0,
        "offset_amount_cents": 0,
        "coupons_adjustment_amount_cents": 0,
        "created_at": created,
        "updated_at": created,
        "file_url": None,
        "items": [],
        "applied_taxes": [],
        "self_billed": False,
        "metadata": None,
        "error_details": None,
    }


def _wallet(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    status = f.get("status", "active")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_customer_id": new_id(),
        "external_customer_id": "",
        "billing_entity_code": BILLING_ENTITY_CODE,
        "status": status,
        "currency": DEFAULT_CURRENCY,
        "name": None,
        "code": None,
        "priority": 50,
        "rate_amount": "1.0",
        "credits_balance": "0.0",
        "balance": f.get("credits_balance", "0.0"),
        "balance_cents": 0,
        "consumed_credits": "0.0",
        "created_at": iso(now),
        "expiration_at": None,
        "last_balance_sync_at": None,
        "last_consumed_credit_at": None,
        # The server serializes this one as a raw Time: with milliseconds.
        "terminated_at": iso_ms(now) if status == "terminated" else None,
        "invoice_requires_successful_payment": False,
        "applies_to": {"fee_types": [], "billable_metric_codes": []},
        "recurring_transaction_rules": [],
        "ongoing_balance_cents": 0,
        "ongoing_usage_balance_cents": 0,
        "credits_ongoing_balance": "0.0",
        "credits_ongoing_usage_balance": "0.0",
        "paid_top_up_min_amount_cents": None,
        "paid_top_up_max_amount_cents": None,
        "applied_invoice_custom_sections": [],
        "purchase_order_number": None,
        "metadata": None,
    }


def _wallet_transaction(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    status = f.get("status", "settled")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_wallet_id": new_id(),
        "lago_invoice_id": None,
        "lago_credit_note_id": None,
        "lago_voided_invoice_id": None,
        "status": status,
        "source": "manual",
        "transaction_status": "granted",
        "transaction_type": "inbound",
        "amount": "0.0",
        "credit_amount": "0.0",
        "invoice_requires_successful_payment": False,
        "metadata": [],
        "remaining_amount_cents": None,
        "remaining_credit_amount": None,
        "priority": 50,
        "settled_at": iso(now) if status == "settled" else None,
        "failed_at": iso(now) if status == "failed" else None,
        "created_at": iso(now),
        "name": None,
        "applied_invoice_custom_sections": [],
        "payment_method": {"payment_method_type": "provider"},
        "purchase_order_number": None,
        # Sent by v1.51 (the transaction's entity, else the customer's), not in the spec.
        "billing_entity_code": None,
    }


def _tax(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    code = f.get("code", "vat")
    return tax_object(new_id, now, code, code.replace("_", " ").upper(), 0.0)


def _applied_coupon(f: dict[str, Any], now: datetime, new_id: IdFactory) -> dict[str, Any]:
    status = f.get("status", "active")
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_coupon_id": new_id(),
        "coupon_code": "welcome",
        "coupon_name": "Welcome",
        "coupon_status": "active",
        "coupon_deleted_at": None,
        "lago_customer_id": new_id(),
        "external_customer_id": "",
        "status": status,
        "amount_cents": None,
        "amount_cents_remaining": None,
        "amount_currency": None,
        "percentage_rate": None,
        "frequency": "once",
        "frequency_duration": None,
        "frequency_duration_remaining": None,
        "expiration_at": None,
        "created_at": iso(now),
        "terminated_at": iso(now) if status == "terminated" else None,
        "credits": [],
    }


_Builder = Callable[[dict[str, Any], datetime, IdFactory], dict[str, Any]]
_Finisher = Callable[[dict[str, Any], datetime, IdFactory], None]

_BUILDERS: dict[str, _Builder] = {
    "customers": _customer,
    "subscriptions": _subscription,
    "invoices": _invoice,
    "billable_metrics": _billable_metric,
    "plans": _plan,
    "events": _event,
    "coupons": _coupon,
    "add_ons": _add_on,
    "fees": _fee,
    "credit_notes": _credit_note,
    "wallets": _wallet,
    "wallet_transactions": _wallet_transaction,
    "taxes": _tax,
    "applied_coupons": _applied_coupon,
}
_FINISHERS: dict[str, _Finisher] = {
    "customers": _finish_customer,
    "invoices": _finish_invoice,
    "fees": _finish_fee,
}


def _module_builders() -> dict[str, _Builder]:
    """Builders of the resources of ``cash.py`` and ``organisation.py`` (which import this)."""
    from tests.lago_sandbox import cash, organisation

    return {**cash.BUILDERS, **organisation.BUILDERS}


def complete(
    resource: str,
    fields: dict[str, Any],
    *,
    now: datetime,
    new_id: IdFactory = new_lago_id,
) -> dict[str, Any]:
    """Return a full, spec-valid object of ``resource`` with ``fields`` over the defaults.

    Defaults: a new ``lago_id`` (from ``new_id``), ``created_at`` (and ``updated_at`` where
    the resource has it) = ``now``, and a sensible value for every other field. Nested
    parts are completed too: customer ``billing_configuration``, ``shipping_address`` and
    ``metadata`` entries (``key``/``value``/``display_in_invoice`` inputs get a ``lago_id``
    and ``created_at``), the fee ``item``, and invoice and fee totals that were not given
    are derived from the amounts that were.

    Raises:
        KeyError: for an unknown resource.
    """
    builder = _BUILDERS.get(resource) or _module_builders().get(resource)
    if builder is None:
        raise KeyError(f"unknown resource {resource!r}; expected one of {RESOURCES}")
    obj = builder(fields, now, new_id)
    obj.update(fields)
    finisher = _FINISHERS.get(resource)
    if finisher is not None:
        finisher(obj, now, new_id)
    return obj


# ---------------------------------------------------------------------------- usage


def _round_units(units: Decimal, metric: dict[str, Any]) -> Decimal:
    function = metric.get("rounding_function")
    if not function:
        return units
    precision = metric.get("rounding_precision") or 0
    exponent = Decimal(1).scaleb(-precision)
    mode = {"ceil": ROUND_CEILING, "floor": ROUND_FLOOR, "round": ROUND_HALF_UP}[function]
    return units.quantize(exponent, rounding=mode)


def _aggregate(
    metric: dict[str, Any],
    events: list[dict[str, Any]],
    period_from: datetime,
    period_to: datetime,
    carried: Decimal = Decimal(0),
) -> Decimal:
    """Aggregate events (already sorted by timestamp) the way the metric says.

    ``carried`` is the running total a recurring ``weighted_sum_agg`` metric brings from
    the events before the period.
    """
    aggregation = metric["aggregation_type"]
    field = metric.get("field_name")
    if aggregation == "count_agg":
        return Decimal(len(events))
    values = [(event, (event.get("properties") or {}).get(field)) for event in events]
    if aggregation == "sum_agg":
        return sum((_dec(v) for _, v in values if v is not None), Decimal(0))
    if aggregation == "max_agg":
        numbers = [_dec(v) for _, v in values if v is not None]
        return max(numbers) if numbers else Decimal(0)
    if aggregation == "latest_agg":
        numbers = [_dec(v) for _, v in values if v is not None]
        return numbers[-1] if numbers else Decimal(0)
    if aggregation == "unique_count_agg":
        present: set[str] = set()
        for event, value in values:
            if value is None:
                continue
            if (event.get("properties") or {}).get("operation_type") == "remove":
                present.discard(str(value))
            else:
                present.add(str(value))
        return Decimal(len(present))
    if aggregation == "weighted_sum_agg":
        # Each event moves the running total by its value; the units are the running
        # total weighted by the time it held, over the whole period (in seconds).
        total_seconds = Decimal((period_to - period_from).total_seconds() + 1)
        if total_seconds <= 0:
            return Decimal(0)
        running = carried
        weighted = Decimal(0)
        last = period_from
        for event, value in values:
            when = max(parse_iso(event["timestamp"]), period_from)
            weighted += running * Decimal((when - last).total_seconds())
            # A running total below zero means the deltas before the period are missing.
            running = max(Decimal(0), running + (_dec(value) if value is not None else 0))
            last = when
        weighted += running * Decimal((period_to - last).total_seconds() + 1)
        return (weighted / total_seconds).quantize(Decimal("0.000001"))
    return Decimal(len(events))


def _tiered(units: Decimal, ranges: list[dict[str, Any]]) -> Decimal:
    amount = Decimal(0)
    for tier in ranges:
        low = Decimal(tier["from_value"])
        high = Decimal(tier["to_value"]) if tier.get("to_value") is not None else None
        if units <= 0 or (units < low and low > 0):
            break
        top = units if high is None else min(units, high)
        in_tier = top - max(low - (1 if low > 0 else 0), Decimal(0))
        if in_tier <= 0:
            continue
        amount += _dec(tier.get("flat_amount", 0)) + in_tier * _dec(tier["per_unit_amount"])
    return amount


def charge_amount(charge_model: str, properties: dict[str, Any], units: Decimal) -> Decimal:
    """Return the amount (in currency units) of ``units`` under a charge model."""
    if charge_model == "standard":
        return units * _dec(properties.get("amount", 0))
    if charge_model == "graduated":
        return _tiered(units, properties.get("graduated_ranges") or [])
    if charge_model == "package":
        size = int(properties.get("package_size") or 1)
        paid = units - int(properties.get("free_units") or 0)
        packages = math.ceil(paid / size) if paid > 0 else 0
        return packages * _dec(properties.get("amount", 0))
    if charge_model == "volume":
        for tier in properties.get("volume_ranges") or []:
            high = tier.get("to_value")
            if high is None or units <= high:
                return _dec(tier["flat_amount"]) + units * _dec(tier["per_unit_amount"])
        return Decimal(0)
    if charge_model == "percentage":
        return units * _dec(properties.get("rate", 0)) / 100
    return Decimal(0)


def _cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _matches(event: dict[str, Any], values: dict[str, list[str]]) -> bool:
    properties = event.get("properties") or {}
    return all(str(properties.get(key)) in allowed for key, allowed in values.items())


def customer_usage(
    customer: dict[str, Any],
    subscription: dict[str, Any],
    plan: dict[str, Any],
    metrics_by_code: dict[str, dict[str, Any]],
    events: Iterable[dict[str, Any]],
    *,
    now: datetime,
    period: tuple[datetime, datetime] | None = None,
) -> dict[str, Any]:
    """Return the ``CustomerUsageObject`` of a subscription for the current billing period.

    The period is the calendar month containing ``now`` (or ``period``, its first and last
    second, for a closed one), from the later of its start and the subscription's
    ``started_at``. Only events of that subscription
    (``external_subscription_id``) with a timestamp in the period up to ``now`` count.
    Each charge of the plan aggregates the events of its billable metric
    (``count_agg``, ``sum_agg``, ``max_agg``, ``unique_count_agg``, ``latest_agg``,
    ``weighted_sum_agg`` over ``field_name``) and prices the units with its charge model.
    Taxes are the customer's taxes applied to the total.

    A recurring ``weighted_sum_agg`` metric carries the running total of the subscription's
    earlier events into the period, so pass those too for an exact figure; without them the
    total starts at zero and is kept from going negative.
    """
    period_start, period_end = period if period is not None else period_bounds(now)
    counted_from = period_start
    if subscription.get("started_at"):
        counted_from = max(period_start, parse_iso(subscription["started_at"]))
    counted_to = min(_utc(now), period_end + timedelta(microseconds=999_999))
    low, high = iso_ms(counted_from), iso_ms(counted_to)
    external_id = subscription["external_id"]

    carried_codes = {
        code
        for code, metric in metrics_by_code.items()
        if metric["aggregation_type"] == "weighted_sum_agg" and metric.get("recurring")
    }
    carried: dict[str, Decimal] = {}
    by_code: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("external_subscription_id") != external_id:
            continue
        stamp = event["timestamp"]
        if len(stamp) != 24:  # not our own iso_ms shape: normalise before comparing
            stamp = iso_ms(parse_iso(stamp))
        if low <= stamp <= high:
            by_code.setdefault(event["code"], []).append(event)
        elif stamp < low and event["code"] in carried_codes:
            field = metrics_by_code[event["code"]].get("field_name")
            value = (event.get("properties") or {}).get(field)
            if value is not None:
                carried[event["code"]] = carried.get(event["code"], Decimal(0)) + _dec(value)
    for bucket in by_code.values():
        bucket.sort(key=lambda event: (event["timestamp"], event["transaction_id"]))

    currency = plan.get("amount_currency") or customer.get("currency") or DEFAULT_CURRENCY
    charges_usage = []
    total_cents = 0
    for charge in plan.get("charges") or []:
        metric = metrics_by_code.get(charge["billable_metric_code"])
        if metric is None:
            continue
        matched = by_code.get(metric["code"], [])
        carry = carried.get(metric["code"], Decimal(0))
        units = _round_units(_aggregate(metric, matched, counted_from, period_end, carry), metric)
        filters = []
        amount = Decimal(0)
        remaining = matched
        for charge_filter in charge.get("filters") or []:
            values = charge_filter.get("values") or {}
            inside = [event for event in remaining if _matches(event, values)]
            remaining = [event for event in remaining if not _matches(event, values)]
            filter_units = _round_units(
                _aggregate(metric, inside, counted_from, period_end, carry), metric
            )
            filter_amount = charge_amount(
                charge["charge_model"], charge_filter.get("properties") or {}, filter_units
            )
            amount += filter_amount
            filters.append(
                {
                    "units": decimal_str(filter_units),
                    "total_aggregated_units": decimal_str(filter_units),
                    "amount_cents": _cents(filter_amount),
                    "events_count": len(inside),
                    "invoice_display_name": charge_filter.get("invoice_display_name")
                    or metric["name"],
                    "values": values,
                }
            )
        if charge.get("filters"):
            rest_units = _round_units(
                _aggregate(metric, remaining, counted_from, period_end, carry), metric
            )
            amount += charge_amount(charge["charge_model"], charge["properties"], rest_units)
        else:
            amount = charge_amount(charge["charge_model"], charge["properties"], units)
        cents = _cents(amount)
        total_cents += cents
        charges_usage.append(
            {
                "units": decimal_str(units),
                "total_aggregated_units": decimal_str(units),
                "events_count": len(matched),
                "amount_cents": cents,
                "amount_currency": currency,
                "pricing_unit_details": None,
                "charge": {
                    "lago_id": charge["lago_id"],
                    "charge_model": charge["charge_model"],
                    "invoice_display_name": charge.get("invoice_display_name"),
                },
                "billable_metric": {
                    "lago_id": metric["lago_id"],
                    "name": metric["name"],
                    "code": metric["code"],
                    "aggregation_type": metric["aggregation_type"],
                },
                "filters": filters,
                "grouped_usage": [],
            }
        )

    rate = sum(
        (Decimal(str(tax.get("rate", 0))) for tax in customer.get("taxes") or []), Decimal(0)
    )
    taxes_cents = int((Decimal(total_cents) * rate / 100).quantize(Decimal(1), ROUND_HALF_UP))
    return {
        "from_datetime": iso(counted_from),
        "to_datetime": iso(period_end),
        "issuing_date": iso_date(period_end + timedelta(seconds=1)),
        "lago_invoice_id": None,
        "currency": currency,
        "amount_cents": total_cents,
        "taxes_amount_cents": taxes_cents,
        "total_amount_cents": total_cents + taxes_cents,
        "charges_usage": charges_usage,
    }
