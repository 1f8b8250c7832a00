"""`subscriptions`: `POST /subscriptions`; the same plan again is a no-op."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from typing import Any

from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    missing,
    plain,
    refuse_unsendable,
    to_iso,
)
from target_lago.sinks import Item, OneByOneSink

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse

SUBSCRIPTION_FIELDS = frozenset(
    {
        "external_customer_id",
        "plan_code",
        "external_id",
        "name",
        "billing_time",
        "subscription_at",
        "ending_at",
        "billing_entity_code",
        "consolidate_invoice",
        "purchase_order_number",
        "plan_overrides",
        "invoice_custom_section",
    }
)
SUBSCRIPTION_READ_ONLY = frozenset(
    {
        "lago_id",
        "lago_customer_id",
        "status",
        "created_at",
        "canceled_at",
        "started_at",
        "terminated_at",
        "previous_plan_code",
        "next_plan_code",
        "downgrade_plan_date",
        "trial_ended_at",
        "current_billing_period_started_at",
        "current_billing_period_ending_at",
        "on_termination_credit_note",
        "on_termination_invoice",
        "plan_amount_cents",
        "plan_amount_currency",
        "applied_invoice_custom_sections",
        "payment_method",
        "cancellation_reason",
        "activated_at",
        "activation_rules",
        "plan",
        "applicable_usage_thresholds",
    }
)
# Subscriptions in these states are history: re-posting them would start a new one.
SKIPPED_SUBSCRIPTION_STATUSES = frozenset({"terminated", "canceled", "incomplete"})


def subscription_payload(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Build the `subscription` body of `POST /subscriptions`.

    Args:
        record: The record (warehouse row or tap-lago subscription).

    Returns:
        The body and the record's columns that Lago cannot take (ignored).

    Raises:
        RecordSkipped: For a terminated, canceled or incomplete subscription.
        RecordRejected: When a required field is missing or a date cannot be read.
    """
    status = record.get("status")
    if isinstance(status, str) and status in SKIPPED_SUBSCRIPTION_STATUSES:
        raise RecordSkipped(f"status is {status}")
    details: dict[str, list[str]] = {}
    reasons: list[str] = []
    for field in ("external_customer_id", "plan_code", "external_id"):
        if missing(record.get(field)):
            details[field] = ["value_is_mandatory"]
            reasons.append(f"'{field}' is missing or empty")
    body: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in record.items():
        if key in SUBSCRIPTION_FIELDS:
            if value is not None:
                body[key] = value
        elif key not in SUBSCRIPTION_READ_ONLY and not key.startswith("_sdc_"):
            ignored.append(key)
    for field in ("subscription_at", "ending_at"):
        if field in body:
            try:
                body[field] = to_iso(body[field])
            except ValueError as exc:
                details[field] = ["invalid_date"]
                reasons.append(f"'{field}' {exc}")
    if details:
        raise RecordRejected(details, "; ".join(reasons))
    for field in ("external_customer_id", "plan_code", "external_id"):
        body[field] = str(body[field])
    refuse_unsendable(body)
    return plain(body), ignored


class SubscriptionsSink(OneByOneSink):
    """`POST /subscriptions`: assign a plan; the same plan again is a no-op."""

    action = "subscriptions"
    endpoint = "/subscriptions"
    root_key = "subscription"
    rank = 20
    self_parsed = ("subscription_at", "ending_at")

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a subscription body."""
        payload, ignored = subscription_payload(record)
        self.warn_ignored(ignored)
        return payload, f"subscription {payload['external_id']!r}"

    def order(self, groups: list[list[Item]]) -> list[list[Item]]:
        """Send an active subscription before a pending one of the same external_id."""
        return [
            sorted(group, key=lambda item: item.record.get("status") == "pending")
            for group in groups
        ]

    def settle_ok(self, item: Item, response: LagoResponse) -> None:
        """Count a re-post that returned an older subscription as already present."""
        body = response.body if isinstance(response.body, dict) else {}
        created = (body.get("subscription") or {}).get("created_at")
        if self.lago.existed_before(created, response.server_time):
            self.stats.add("already_present")
        else:
            self.stats.add("delivered")
