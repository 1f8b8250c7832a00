"""`applied_coupons`: apply a coupon to a customer (`POST /applied_coupons`), once.

A record means "this customer has this coupon": its key is (`external_customer_id`,
`coupon_code`). Lago applies a reusable coupon again on every POST, so the customer's
applications of the code are read first (`GET /applied_coupons`): one in any status (a
used-up coupon is terminated) means already present. A tap-lago record (another
organisation's application) is applied with what is left of it: `amount_cents_remaining`
and `frequency_duration_remaining` as `amount_cents` and `frequency_duration`.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.mapping import RecordRejected, RecordSkipped, missing, plain, refuse_unsendable
from target_lago.sinks import Item, OneByOneSink

APPLIED_COUPON_FIELDS = frozenset(
    {
        "external_customer_id",
        "coupon_code",
        "frequency",
        "frequency_duration",
        "amount_cents",
        "amount_currency",
        "percentage_rate",
    }
)
APPLIED_COUPON_READ_ONLY = frozenset(
    {
        "lago_id",
        "lago_coupon_id",
        "coupon_name",
        "coupon_status",
        "coupon_deleted_at",
        "lago_customer_id",
        "status",
        "amount_cents_remaining",
        "frequency_duration_remaining",
        "expiration_at",
        "created_at",
        "terminated_at",
        "credits",
    }
)


def applied_coupon_payload(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Build the `applied_coupon` body of `POST /applied_coupons`.

    Returns:
        The body and the record's columns that Lago cannot take (ignored).

    Raises:
        RecordSkipped: For a terminated application (history: nothing to apply).
        RecordRejected: When `external_customer_id` or `coupon_code` is missing.
    """
    if record.get("status") == "terminated":
        raise RecordSkipped("status is terminated")
    details: dict[str, list[str]] = {}
    for field in ("external_customer_id", "coupon_code"):
        if missing(record.get(field)):
            details[field] = ["value_is_mandatory"]
    if details:
        raise RecordRejected(details, "; ".join(f"'{f}' is missing or empty" for f in details))
    body: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in record.items():
        if key in APPLIED_COUPON_FIELDS:
            if value is not None:
                body[key] = value
        elif key not in APPLIED_COUPON_READ_ONLY and not key.startswith("_sdc_"):
            ignored.append(key)
    for field in ("external_customer_id", "coupon_code"):
        body[field] = str(body[field])
    # A tap-lago application carries what is left of it: a copy applies that much again.
    for left, field in (("amount_cents_remaining", "amount_cents"),
                        ("frequency_duration_remaining", "frequency_duration")):  # fmt: skip
        if record.get(left) is not None and body.get(field) is not None:
            body[field] = record[left]
    refuse_unsendable(body)
    return plain(body), ignored


class AppliedCouponsSink(OneByOneSink):
    """`POST /applied_coupons`: once per customer and coupon code."""

    action = "applied_coupons"
    endpoint = "/applied_coupons"
    root_key = "applied_coupon"
    rank = 70

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to an applied coupon body."""
        payload, ignored = applied_coupon_payload(record)
        self.warn_ignored(ignored)
        key = f"coupon {payload['coupon_code']!r} of customer {payload['external_customer_id']!r}"
        return payload, key

    def group_of(self, item: Item) -> str:
        """A customer's coupons go in the order received.

        Which one applies first matters when they overlap (405 `plan_overlapping` for the
        later one).
        """
        return str(item.payload["external_customer_id"])

    def applied(self, item: Item) -> bool:
        """Whether Lago holds an application of this code to this customer (any status)."""
        query = urllib.parse.urlencode(
            {
                "external_customer_id": item.payload["external_customer_id"],
                "coupon_code[]": item.payload["coupon_code"],
                "per_page": "100",
            }
        )
        response = self.lago.client.request("GET", f"{self.endpoint}?{query}", None)
        rows = (response.body or {}).get("applied_coupons") if response.ok else None
        return any(
            isinstance(row, dict)
            and row.get("coupon_code") == item.payload["coupon_code"]
            and row.get("external_customer_id") == item.payload["external_customer_id"]
            for row in rows or []
        )

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            if self.applied(item):
                self.stats.add("already_present")
                continue
            body = b'{"applied_coupon":' + item.data + b"}"
            response = self.send_once(
                "POST", self.endpoint, body, functools.partial(self.applied, item)
            )
            if response is None or response.ok:
                self.stats.add("delivered")
            elif response.error_details == {"coupon": ["coupon_is_not_reusable"]} and self.applied(
                item
            ):
                self.stats.add("already_present")
            else:
                self.reject_response(item, response, response.error_details or response.body)
