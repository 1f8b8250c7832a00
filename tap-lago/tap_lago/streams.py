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
- payments: /payments; lago_id; FULL_TABLE (only ``created_at`` is sent and nothing filters
  on it, while ``status`` and ``payment_status`` change after creation: a created_at
  bookmark would keep a payment pending for ever)
- payment_requests: /payment_requests; lago_id; FULL_TABLE (``payment_status`` changes; no
  date filter)
- payment_receipts: /payment_receipts; lago_id; INCREMENTAL created_at, filtered client-side
  on a list sorted newest first, so paging stops at the first receipt older than the
  bookmark minus ``lookback_window_days`` (receipts are not edited, but their files are
  attached just after creation; the payment in a receipt is as it was then, the
  payments stream has its current state)
- payment_methods: /customers/{external_customer_id}/payment_methods; lago_id;
  FULL_TABLE, child of customers (``is_default`` moves; a removed method leaves the list)
- billing_entities: /billing_entities (one request, not paginated); lago_id; FULL_TABLE
  (an updated_at bookmark would save no request, and archived entities leave the list)
- features: /features; code; FULL_TABLE (editable and deletable; only ``created_at``)
- entitlements: /plans/{code}/entitlements (not paginated); (plan_code, code); FULL_TABLE,
  child of plans (no timestamps)
- webhook_endpoints: /webhook_endpoints; lago_id; FULL_TABLE (at most 10, editable,
  deleted outright)
- customer_past_usage: /customers/{external_customer_id}/past_usage?external_subscription_id=;
  one row per charge of each closed period: (external_subscription_id, from_datetime,
  lago_invoice_id, lago_charge_id); INCREMENTAL from_datetime with a bookmark per
  subscription, child of active and terminated subscriptions; newest first, so paging
  stops below the bookmark, whose own period is read again
- subscription_lifetime_usage: /subscriptions/{external_id}/lifetime_usage; lago_id;
  FULL_TABLE (a snapshot), child of active and terminated subscriptions
- subscription_plans: /subscriptions/{external_id}?status=; lago_id; FULL_TABLE, child of
  active and pending subscriptions (the subscription with its ``plan``: its own when
  overridden)
- subscription_alerts: /subscriptions/{external_id}/alerts?subscription_status=; lago_id;
  FULL_TABLE (no change key), child of subscriptions; wallet_alerts:
  /customers/{external_customer_id}/wallets/{code}/alerts; lago_id; FULL_TABLE, child of
  wallets
- gross_revenue, invoiced_usage, mrr, overdue_balance, invoice_collection, usage:
  /analytics/<name>, one unpaginated request each (tap_lago.analytics); keyed by month (or
  period) and currency, plus billing entity, metric or payment status; FULL_TABLE (past
  months change too)
- activity_logs, api_logs: /activity_logs?from_date=, /api_logs?from_date=; activity_id,
  request_id; INCREMENTAL logged_at, server-side by day, exact client-side (tap_lago.logs)

A stream the server refuses with 403 ``feature_unavailable`` (invoiced_usage, mrr,
invoice_collection and the logs without a premium licence) is skipped with one line.

Every FULL_TABLE stream emits ACTIVATE_VERSION (setting ``emit_activate_version_messages``),
so loaders that support it remove rows that disappeared from Lago.

``STREAM_TYPES`` (end of file) is the table the tap registers; the ``extra_streams``
setting adds streams of its own (:mod:`tap_lago.extra_streams`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import typing as t
from http import HTTPStatus

from singer_sdk.exceptions import AbortedSyncFailedException, AbortedSyncPausedException

from tap_lago.analytics import ANALYTICS_STREAMS
from tap_lago.client import (
    DateWindowsStream,
    LagoChildStream,
    LagoStream,
    LagoWindowedStream,
    ListRefusedError,
    ParentGoneError,
    api_datetime,
    parse_datetime,
)
from tap_lago.logs import LOG_STREAMS
from tap_lago.paging import EVENTS_PAGE_SIZE
from tap_lago.replication import api_datetime_to, canonical

if t.TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    import requests
    from singer_sdk.helpers.types import Context

#: Every subscription status of v1.51 (``Subscription::STATUSES``). All are valid filter
#: values, so the server returns every subscription; were one unknown to an older server,
#: it would drop the filter altogether and still return every status (BEHAVIOUR §3).
SUBSCRIPTION_STATUSES = ["active", "pending", "terminated", "canceled", "incomplete"]

#: ``external_subscription_id`` of an event sent without a subscription (a key field).
NO_SUBSCRIPTION = ""

#: Statuses in which ``GET /subscriptions/{external_id}/alerts`` can look a subscription up.
SUBSCRIPTION_ALERT_STATUSES = ("active", "pending", "terminated", "canceled")

#: Past usage: the period's amounts cover its whole invoice (LAGO_API_READS.md §7).
RENAMED_PERIOD_FIELDS = {
    "amount_cents": "invoice_amount_cents",
    "taxes_amount_cents": "invoice_taxes_amount_cents",
    "total_amount_cents": "invoice_total_amount_cents",
}


class _UpdatedAtStream(LagoStream):
    """No server-side ``updated_at`` filter exists: scan, keep ``updated_at >= bookmark``."""

    replication_key = "updated_at"
    client_side_filter = True


class _NewestFirstStream(LagoStream):
    """A list sorted ``created_at DESC`` with no filter on it: scan down to the bookmark.

    Paging stops at the first record created before where this sync starts (older pages
    are not requested). That is the bookmark minus ``lookback_window_days``, so records
    completed shortly after their creation are read again.
    """

    replication_key = "created_at"
    client_side_filter = True
    stops_early = True

    def start_datetime(self, context: Context | None) -> dt.datetime | None:
        """The bookmark minus the lookback, else ``start_date``, else None."""
        start = super().start_datetime(context)
        if start is None or not self.has_bookmark(context):
            return start
        return start - dt.timedelta(days=float(self.config.get("lookback_window_days", 1)))

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Every page down to the first record older than the start."""
        start = self.start_datetime(context)
        pages = super().request_records(context)
        with contextlib.closing(t.cast("Generator[dict[str, t.Any], None, None]", pages)):
            for record in pages:
                created = record.get("created_at")
                if start is not None and created and parse_datetime(created) < start:
                    return
                yield record


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

    def get_child_context(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {"external_customer_id": record["external_id"]}


class SubscriptionsStream(LagoStream):
    """Subscriptions in every status (the API default is active only)."""

    name = "subscriptions"
    path = "/subscriptions"
    primary_keys = ("lago_id",)
    extra_params: t.ClassVar[dict[str, t.Any]] = {"status[]": SUBSCRIPTION_STATUSES}

    def generate_child_contexts(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[dict[str, t.Any]]:
        # Every subscription: each child reads the statuses it needs (_PerSubscription).
        yield {
            "external_customer_id": record["external_customer_id"],
            "external_subscription_id": record["external_id"],
            "status": record.get("status"),
        }

    def _sync_children(self, child_context: Context | None) -> None:
        """The SDK's loop, but each child syncs only the subscriptions it reads.

        The others cost no request, state partition, ACTIVATE_VERSION or METRIC line.
        """
        for child in self.child_streams:
            if not (child.selected or child.has_selected_descendents):
                continue
            if isinstance(child, _PerSubscription) and not child.wants(child_context):
                continue
            try:
                child.sync(context=child_context)
            except (AbortedSyncFailedException, AbortedSyncPausedException):
                continue


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

    def get_child_context(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {"plan_code": record["code"]}


class EventsStream(LagoWindowedStream):
    """Usage events by ``timestamp``, in windows from bookmark-minus-lookback to the end."""

    name = "events"
    path = "/events"
    primary_keys = ("transaction_id", "external_subscription_id")
    #: Lago stores events without a subscription (null); a key column cannot be null.
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {"external_subscription_id": NO_SUBSCRIPTION}
    replication_key = "timestamp"
    window_params = ("timestamp_from", "timestamp_to")
    page_size_setting = "events_page_size"
    default_page_size = EVENTS_PAGE_SIZE


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
        params = {"created_at_to": api_datetime_to(self.signpost_datetime())}
        start = self.start_within_end(context)
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
        return {
            "wallet_id": record["lago_id"],
            "external_customer_id": record.get("external_customer_id"),
            "wallet_code": record.get("code"),
        }


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


class _PerSubscription(LagoChildStream):
    """A child of subscriptions read once per subscription ``external_id`` in ``statuses``.

    Subscriptions sharing an ``external_id`` (an upgrade leaves a terminated and an active
    one) share what these endpoints serve: the first one listed is read, the others not.
    """

    parent_stream_type = SubscriptionsStream
    #: Subscription statuses this endpoint has something for.
    statuses: t.ClassVar[frozenset[str]] = frozenset({"active", "terminated"})
    #: Whether subscriptions sharing an ``external_id`` are read once per status.
    by_status: t.ClassVar[bool] = False
    _read: set[tuple[t.Any, ...]] | None = None

    def _key(self, context: Context) -> tuple[t.Any, ...]:
        key = (context.get("external_customer_id"), context.get("external_subscription_id"))
        return (*key, context.get("status")) if self.by_status else key

    def wants(self, context: Context | None) -> bool:
        """Whether to read this subscription: its ``external_id`` is not read yet.

        And its status is in ``statuses``, or unknown.
        """
        context = context or {}
        status = context.get("status")
        return (status is None or status in self.statuses) and self._key(context) not in (
            self._read or set()
        )

    def prefetch(self, context: Context) -> None:
        if self.wants(context):
            super().prefetch(context)

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        if not self.wants(context):
            return ()
        if self._read is None:
            self._read = set()
        context = context or {}
        self._read.add(self._key(context))
        return super().request_records(context)


class CustomerUsageStream(_PerSubscription):
    """Current-period usage of each active subscription (a snapshot per sync)."""

    name = "customer_usage"
    path = "/customers/{external_customer_id}/current_usage"
    primary_keys = ("external_customer_id", "external_subscription_id", "from_datetime")
    statuses = frozenset({"active"})
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


class PaymentsStream(LagoStream):
    """Payments on invoices (in a listed status) and on payment requests."""

    name = "payments"
    path = "/payments"
    primary_keys = ("lago_id",)


class PaymentRequestsStream(LagoStream):
    """Payment requests (dunning), each with its customer and invoices."""

    name = "payment_requests"
    path = "/payment_requests"
    primary_keys = ("lago_id",)


class PaymentReceiptsStream(_NewestFirstStream):
    """Payment receipts, newest first, read down to the bookmark."""

    name = "payment_receipts"
    path = "/payment_receipts"
    primary_keys = ("lago_id",)


class PaymentMethodsStream(LagoChildStream):
    """Payment methods of each customer."""

    name = "payment_methods"
    path = "/customers/{external_customer_id}/payment_methods"
    primary_keys = ("lago_id",)
    parent_stream_type = CustomersStream

    def prepare_record(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {**record, "external_customer_id": (context or {})["external_customer_id"]}


class BillingEntitiesStream(LagoStream):
    """Billing entities (not archived): one unpaginated list."""

    name = "billing_entities"
    path = "/billing_entities"
    primary_keys = ("lago_id",)
    paginated = False


class FeaturesStream(LagoStream):
    """Entitlement features, keyed by code (the API shows no id)."""

    name = "features"
    path = "/features"
    primary_keys = ("code",)


class EntitlementsStream(LagoChildStream):
    """Features granted by each plan, with their privilege values (one list per plan)."""

    name = "entitlements"
    path = "/plans/{plan_code}/entitlements"
    primary_keys = ("plan_code", "code")
    parent_stream_type = PlansStream
    paginated = False

    def prepare_record(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {**record, "plan_code": (context or {})["plan_code"]}


class WebhookEndpointsStream(LagoStream):
    """Webhook endpoints."""

    name = "webhook_endpoints"
    path = "/webhook_endpoints"
    primary_keys = ("lago_id",)


class CustomerPastUsageStream(_PerSubscription):
    """Usage of each closed period, one row per charge (``charges_usage`` flattened).

    The list is newest period first and has no time filter: each subscription keeps its
    own bookmark (periods of different subscriptions close at different times, so one
    bookmark for all would skip a yearly period closing after a newer monthly one), and
    paging stops at the first period older than it. The bookmark's own period is read
    again: its invoice may still be a draft, or be followed by another invoice of the same
    period (progressive billing, a regenerated invoice).
    """

    name = "customer_past_usage"
    path = "/customers/{external_customer_id}/past_usage"
    primary_keys = (
        "external_subscription_id",
        "from_datetime",
        "lago_invoice_id",
        "lago_charge_id",
    )
    records_key = "usage_periods"
    replication_key = "from_datetime"
    client_side_filter = True
    state_partitioning_keys: t.ClassVar[list[str]] = [
        "external_customer_id",
        "external_subscription_id",
    ]
    page_ahead = False  # pages beyond the bookmark are not wanted

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        return {"external_subscription_id": (context or {})["external_subscription_id"]}

    def parse_response(self, response: requests.Response) -> Iterable[dict[str, t.Any]]:
        """One row per charge of each period; the period's amounts are its invoice's."""
        for period in super().parse_response(response):
            common = {
                RENAMED_PERIOD_FIELDS.get(name, name): value
                for name, value in period.items()
                if name != "charges_usage"
            }
            for charge in period.get("charges_usage") or ():
                row = {**common, **charge}
                row["lago_charge_id"] = (charge.get("charge") or {}).get("lago_id")
                row["billable_metric_code"] = (charge.get("billable_metric") or {}).get("code")
                yield row

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Rows down to the bookmark's period; then the subscription's bookmark moves.

        Newest first, so the first period older than the bookmark ends the walk (the rest
        was read before). The bookmark becomes the newest period read once its rows are
        all out, as a completed window does for events.
        """
        start = self.start_datetime(context)
        newest: str | None = None
        for row in super().request_records(context):
            value = row.get("from_datetime")
            if value:
                if start is not None and parse_datetime(value) < start:
                    break
                newest = max(newest or "", canonical(value))
            yield row
        if newest:
            state = self.get_context_state(context)
            state["replication_key"] = self.replication_key
            state["replication_key_value"] = newest
            self.state_manager.is_flushed = False

    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Records do not move the bookmark: a subscription read to the end does."""

    def prepare_record(  # noqa: D102
        self, record: dict[str, t.Any], context: Context | None
    ) -> dict[str, t.Any]:
        return {
            **record,
            "external_customer_id": (context or {})["external_customer_id"],
            "external_subscription_id": (context or {})["external_subscription_id"],
        }


class SubscriptionLifetimeUsageStream(_PerSubscription):
    """Lifetime usage of each started subscription (a snapshot per sync)."""

    name = "subscription_lifetime_usage"
    path = "/subscriptions/{external_subscription_id}/lifetime_usage"
    primary_keys = ("lago_id",)
    records_key = "lifetime_usage"
    paginated = False


class SubscriptionAlertsStream(_PerSubscription):
    """Usage alerts of each subscription (matched by ``external_id``, any status)."""

    name = "subscription_alerts"
    path = "/subscriptions/{external_subscription_id}/alerts"
    primary_keys = ("lago_id",)
    records_key = "alerts"
    statuses = frozenset(SUBSCRIPTION_ALERT_STATUSES)

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        # The subscription is looked up in this status (default active), 404 otherwise.
        return {"subscription_status": (context or {})["status"]}


class SubscriptionPlansStream(_PerSubscription):
    """Each active and pending subscription with the plan it is billed on.

    An overridden subscription (``plan_overrides``) is billed on a plan of its own, with
    the parent plan's code; only ``GET /subscriptions/{external_id}`` shows it, so this
    costs one request per active or pending subscription (select it when copying an
    organisation with overrides).
    """

    name = "subscription_plans"
    path = "/subscriptions/{external_subscription_id}"
    primary_keys = ("lago_id",)
    records_key = "subscription"
    paginated = False
    statuses = frozenset({"active", "pending"})
    by_status = True
    # 404: the subscription ended (or moved to another status) since it was listed.
    skippable_child_statuses = frozenset({HTTPStatus.NOT_FOUND})

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        return {"status": (context or {})["status"]}


class WalletAlertsStream(LagoChildStream):
    """Balance alerts of each wallet (addressed by customer and wallet code)."""

    name = "wallet_alerts"
    path = "/customers/{external_customer_id}/wallets/{wallet_code}/alerts"
    primary_keys = ("lago_id",)
    records_key = "alerts"
    parent_stream_type = WalletsStream

    def prefetch(self, context: Context) -> None:  # noqa: D102
        if context.get("wallet_code") and context.get("external_customer_id"):
            super().prefetch(context)

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:  # noqa: D102
        context = context or {}
        if not (context.get("wallet_code") and context.get("external_customer_id")):
            return ()  # a wallet without code cannot be addressed
        return super().request_records(context)


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
    PaymentsStream,
    PaymentRequestsStream,
    PaymentReceiptsStream,
    PaymentMethodsStream,
    BillingEntitiesStream,
    FeaturesStream,
    EntitlementsStream,
    WebhookEndpointsStream,
    CustomerPastUsageStream,
    SubscriptionLifetimeUsageStream,
    SubscriptionAlertsStream,
    SubscriptionPlansStream,
    WalletAlertsStream,
    *ANALYTICS_STREAMS,
    *LOG_STREAMS,
)
