"""Lago's analytics: monthly series the server computes, one request each (FULL_TABLE).

Every currency and billing entity is read (no filter): a row carries its ``currency``, and
``billing_entity_id`` where the server groups by it. Without ``months`` the series runs
from the organisation's creation month to the current month; a month's figures change
while it runs, and older months when invoices are paid or credited, so each sync reads
the whole series and ACTIVATE_VERSION drops rows no longer served. ``invoiced_usage``,
``mrr`` and ``invoice_collection`` need a premium licence (403 ``feature_unavailable``
otherwise: the stream is skipped). LAGO_API_READS.md §11.
"""

from __future__ import annotations

import typing as t

from tap_lago.client import LagoStream

#: What stands in for a key the server sends as null: the row of a month without data
#: (``mrr``, ``invoice_collection``) has no currency or payment status.
NONE = ""


class _AnalyticsStream(LagoStream):
    """One unpaginated list of monthly rows."""

    paginated = False


class GrossRevenueStream(_AnalyticsStream):
    """Finalized invoices (less refunds) and uninvoiced pay-in-advance fees, per month."""

    name = "gross_revenue"
    path = "/analytics/gross_revenue"
    records_key = "gross_revenues"
    primary_keys = ("month", "currency", "billing_entity_id")
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"billing_entity_id": NONE}


class InvoicedUsageStream(_AnalyticsStream):
    """Invoiced usage (charge fees) per month and billable metric (premium)."""

    name = "invoiced_usage"
    path = "/analytics/invoiced_usage"
    records_key = "invoiced_usages"
    primary_keys = ("month", "currency", "code")


class MrrStream(_AnalyticsStream):
    """Monthly recurring revenue from subscription fees, taxes included (premium)."""

    name = "mrr"
    path = "/analytics/mrr"
    records_key = "mrrs"
    primary_keys = ("month", "currency")
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"currency": NONE}


class OverdueBalanceStream(_AnalyticsStream):
    """What overdue invoices still owe, per month of their payment due date."""

    name = "overdue_balance"
    path = "/analytics/overdue_balance"
    records_key = "overdue_balances"
    primary_keys = ("month", "currency", "billing_entity_id")
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"billing_entity_id": NONE}


class InvoiceCollectionStream(_AnalyticsStream):
    """Finalized invoices per month and payment status (premium)."""

    name = "invoice_collection"
    path = "/analytics/invoice_collection"
    records_key = "invoice_collections"
    primary_keys = ("month", "payment_status", "currency")
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"payment_status": NONE, "currency": NONE}


class UsageStream(_AnalyticsStream):
    """Usage per month and billable metric, from Lago's Data API.

    Monthly is asked for; without a premium licence the server answers the last 30 days,
    day by day, instead (no 403). Both shapes share the key.
    """

    name = "usage"
    path = "/analytics/usage"
    records_key = "usages"
    primary_keys = (
        "start_of_period_dt",
        "end_of_period_dt",
        "billable_metric_code",
        "amount_currency",
    )
    extra_params: t.ClassVar[dict[str, t.Any]] = {"time_granularity": "monthly"}


ANALYTICS_STREAMS: tuple[type[LagoStream], ...] = (
    GrossRevenueStream,
    InvoicedUsageStream,
    MrrStream,
    OverdueBalanceStream,
    InvoiceCollectionStream,
    UsageStream,
)
