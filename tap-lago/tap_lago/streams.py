"""Lago streams: one short declaration per resource over :class:`LagoStream`.

Replication at a glance (endpoint; primary key; method and key):

- customers: /customers; lago_id; FULL_TABLE (the list is scanned whole anyway; a full
  table lets ACTIVATE_VERSION remove deleted customers downstream)
- subscriptions: /subscriptions?status[]=<all five>; lago_id; FULL_TABLE
- invoices: /invoices; lago_id; INCREMENTAL updated_at, filtered client-side; read in
  issuing_date windows at once, each one page at a time (:mod:`tap_lago.date_windows`)
- billable_metrics, plans, coupons, add_ons, taxes, applied_coupons, wallets: lago_id;
  FULL_TABLE (no change key in the API)
- events: /events?timestamp_from&timestamp_to; (transaction_id, external_subscription_id,
  ``""`` for an event without subscription); INCREMENTAL timestamp, server-side, in time
  windows oldest first, with a lookback window
- fees: /fees?created_at_from&created_at_to; lago_id; INCREMENTAL created_at, server-side
- credit_notes: /credit_notes; lago_id; INCREMENTAL updated_at, filtered client-side
- wallets: /wallets, or per customer when the server requires external_customer_id
- wallet_transactions: /wallets/{lago_id}/wallet_transactions; lago_id; FULL_TABLE, child
  of wallets
- customer_usage: /customers/{external_customer_id}/current_usage?external_subscription_id=;
  (external_customer_id, external_subscription_id, from_datetime); FULL_TABLE, child of
  active subscriptions

Every FULL_TABLE stream emits ACTIVATE_VERSION (setting ``emit_activate_version_messages``),
so loaders that support it remove rows that disappeared from Lago.

``STREAM_TYPES`` (end of file) is the table the tap registers; the ``extra_streams``
setting adds streams of its own (:mod:`tap_lago.extra_streams`).
"""

from __future__ import annotations

import datetime as dt
import typing as t
from http import HTTPStatus

from tap_lago.client import (
    DateWindowsStream,
    LagoChildStream,
    LagoStream,
    LagoWindowedStream,
    ListRefusedError,
    ParentGoneError,
    api_datetime,
)

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from singer_sdk.helpers.types import Context

#: Every subscription status of v1.51 (``Subscription::STATUSES``). All are valid filter
#: values, so the server returns every subscription; were one unknown to an older server,
#: it would drop the filter altogether and still return every status (BEHAVIOUR §3).
SUBSCRIPTION_STATUSES = ["active", "pending", "terminated", "canceled", "incomplete"]

#: ``external_subscription_id`` of an event sent without a subscription (a key field).
NO_SUBSCRIPTION = ""


class _UpdatedAtStream(LagoStream):
    """No server-side ``updated_at`` filter exists: scan, keep ``updated_at >= bookmark``."""

    replication_key = "updated_at"
    client_side_filter = True


class _IssuingDateStream(_UpdatedAtStream):
    """On a first sync from ``start_date``, let the server skip older issuing dates.

    Later syncs scan everything: an old invoice can still change (payment, void).
    The day before ``start_date`` is used because issuing dates are in the customer's
    timezone.
    """

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:
        """``issuing_date_from`` on a first sync from ``start_date``."""
        start = self.config.get("start_date")
        if not start or self.has_bookmark(context):
            return {}
        since = self.start_datetime(context) or dt.datetime.now(dt.timezone.utc)
        return {"issuing_date_from": (since - dt.timedelta(days=1)).date().isoformat()}


class CustomersStream(LagoStream):
    """Customers (not deleted): a full table, so deleted customers leave the warehouse."""

    name = "customers"
    path = "/customers"
    primary_keys = ("lago_id",)
    applies_start_date = False


class SubscriptionsStream(LagoStream):
    """Subscriptions in every status (the API default is active only)."""

    name = "subscriptions"
    path = "/subscriptions"
    primary_keys = ("lago_id",)
    extra_params: t.ClassVar[dict[str, t.Any]] = {"status[]": SUBSCRIPTION_STATUSES}

    def generate_child_contexts(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[dict[str, t.Any]]:
        if record.get("status") == "active":
            yield {
                "external_customer_id": record["external_customer_id"],
                "external_subscription_id": record["external_id"],
            }


class InvoicesStream(DateWindowsStream, _IssuingDateStream):
    """Invoices in the statuses the list shows (draft, finalized, voided, failed, pending)."""

    name = "invoices"
    path = "/invoices"
    primary_keys = ("lago_id",)
    # Newest first, and Lago caches the count for 30 minutes, so a page read out of order
    # could miss a row pushed across its boundary unnoticed: each issuing_date window is
    # read one page at a time, several windows at once.
    page_ahead = False


class BillableMetricsStream(LagoStream):
    """Billable metrics."""

    name = "billable_metrics"
    path = "/billable_metrics"
    primary_keys = ("lago_id",)


class PlansStream(LagoStream):
    """Plans (parent plans only, as the list serves them)."""

    name = "plans"
    path = "/plans"
    primary_keys = ("lago_id",)


class EventsStream(LagoWindowedStream):
    """Usage events by ``timestamp``, in windows from bookmark-minus-lookback to the end."""

    name = "events"
    path = "/events"
    primary_keys = ("transaction_id", "external_subscription_id")
    #: Lago stores events without a subscription (null); a key column cannot be null.
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"external_subscription_id": NO_SUBSCRIPTION}
    replication_key = "timestamp"
    window_params = ("timestamp_from", "timestamp_to")


class CouponsStream(LagoStream):
    """Coupons, active and terminated."""

    name = "coupons"
    path = "/coupons"
    primary_keys = ("lago_id",)


class AddOnsStream(LagoStream):
    """Add-ons."""

    name = "add_ons"
    path = "/add_ons"
    primary_keys = ("lago_id",)


class FeesStream(LagoStream):
    """Fees, by ``created_at`` (the one list Lago sorts oldest first, so resumable)."""

    name = "fees"
    path = "/fees"
    primary_keys = ("lago_id",)
    replication_key = "created_at"
    is_sorted = True
    applies_end_date = True

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        params = {"created_at_to": api_datetime(self.signpost_datetime())}
        start = self.start_datetime(context)
        if start is not None:
            params["created_at_from"] = api_datetime(start)
        return params


class CreditNotesStream(_IssuingDateStream):
    """Credit notes (the list serves finalized ones only)."""

    name = "credit_notes"
    path = "/credit_notes"
    primary_keys = ("lago_id",)


class WalletsStream(LagoStream):
    """Wallets, including terminated ones.

    The spec marks ``external_customer_id`` required (servers before v1.47, and gateways
    that validate requests, enforce it): when the whole list is refused with a 400 or 422,
    wallets are listed customer by customer instead.
    """

    name = "wallets"
    path = "/wallets"
    primary_keys = ("lago_id",)

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """The whole list, or per customer when the server refuses it."""
        if context is not None:
            yield from super().get_records(context)
            return
        emitted = 0
        try:
            for record in super().get_records(None):
                emitted += 1
                yield record
        except ListRefusedError as exc:
            if emitted:
                raise
            self.logger.warning(
                "wallets: the server refused the list without external_customer_id (%s); "
                "listing wallets customer by customer",
                exc,
            )
        else:
            return
        customers = t.cast("LagoStream", self._tap.streams["customers"])
        for customer in customers.request_records(None):
            try:
                yield from super().get_records({"external_customer_id": customer["external_id"]})
            except ParentGoneError as exc:
                self.logger.info("Skipping wallets of a customer gone meanwhile: %s", exc)

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        customer = (context or {}).get("external_customer_id")
        return {"external_customer_id": customer} if customer else {}

    def get_child_context(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {"wallet_id": record["lago_id"]}


class WalletTransactionsStream(LagoChildStream):
    """Transactions of each wallet."""

    name = "wallet_transactions"
    path = "/wallets/{wallet_id}/wallet_transactions"
    primary_keys = ("lago_id",)
    parent_stream_type = WalletsStream


class TaxesStream(LagoStream):
    """Taxes."""

    name = "taxes"
    path = "/taxes"
    primary_keys = ("lago_id",)


class AppliedCouponsStream(LagoStream):
    """Coupons applied to customers."""

    name = "applied_coupons"
    path = "/applied_coupons"
    primary_keys = ("lago_id",)


class CustomerUsageStream(LagoChildStream):
    """Current-period usage of each active subscription (a snapshot per sync)."""

    name = "customer_usage"
    path = "/customers/{external_customer_id}/current_usage"
    primary_keys = ("external_customer_id", "external_subscription_id", "from_datetime")
    parent_stream_type = SubscriptionsStream
    paginated = False
    # 404: customer or subscription gone; 405 no_active_subscription: ended meanwhile.
    skippable_child_statuses = frozenset({HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED})

    @property
    def records_jsonpath(self) -> str:  # noqa: D102
        return "$.customer_usage"

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        return {"external_subscription_id": (context or {})["external_subscription_id"]}

    def prepare_record(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {
            **record,
            "external_customer_id": (context or {})["external_customer_id"],
            "external_subscription_id": (context or {})["external_subscription_id"],
        }


STREAM_TYPES: tuple[type[LagoStream], ...] = (
    CustomersStream,
    SubscriptionsStream,
    InvoicesStream,
    BillableMetricsStream,
    PlansStream,
    EventsStream,
    CouponsStream,
    AddOnsStream,
    FeesStream,
    CreditNotesStream,
    WalletsStream,
    WalletTransactionsStream,
    TaxesStream,
    AppliedCouponsStream,
    CustomerUsageStream,
)
