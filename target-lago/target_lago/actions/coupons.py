"""`coupons`: `POST /coupons`, `PUT /coupons/{code}` when a field differs (see `catalog`).

tap-lago's `plan_codes` and `billable_metric_codes` become `applies_to`. A coupon applied to
a customer keeps everything but `name`, `description` and its expiration. A terminated
coupon, or one whose time limit has passed, is skipped: Lago's API cannot terminate a
coupon and refuses an expiration date in the past.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import (
    Canonical,
    CatalogSink,
    as_object,
    flag,
    moment,
    number,
    put,
    text,
    whole,
)
from target_lago.mapping import RecordSkipped, epoch_seconds


def applies_to(record: Mapping[str, Any]) -> dict | None:
    """`applies_to` from the record's `applies_to` or tap-lago's code lists."""
    given = as_object(record.get("applies_to"), "applies_to")
    if isinstance(given, Mapping):
        plans, metrics = given.get("plan_codes"), given.get("billable_metric_codes")
    elif "plan_codes" in record or "billable_metric_codes" in record:
        plans, metrics = record.get("plan_codes"), record.get("billable_metric_codes")
    else:
        return None
    return {
        "plan_codes": [str(c) for c in plans or []],
        "billable_metric_codes": [str(c) for c in metrics or []],
    }


class CouponsSink(CatalogSink):
    """A coupon per `code`."""

    action = "coupons"
    endpoint = "/coupons"
    root_key = "coupon"
    what = "coupon"
    rank = 30
    self_parsed = ("expiration_at", "applies_to", "percentage_rate")
    read_only = CatalogSink.read_only | {
        "limited_plans", "limited_billable_metrics", "plan_codes", "billable_metric_codes",
        "terminated_at",
    }  # fmt: skip
    kept = (
        "a coupon applied to a customer keeps everything but its name, description and "
        "expiration (create a coupon with a new code instead)"
    )

    def known(self) -> frozenset[str]:
        """The coupon's fields."""
        return frozenset(
            {"code", "name", "description", "coupon_type", "amount_cents", "amount_currency",
             "reusable", "percentage_rate", "frequency", "frequency_duration", "expiration",
             "expiration_at", "applies_to"}
        )  # fmt: skip

    def build(self, record: dict) -> tuple[dict, str]:
        """Skip a coupon that can no longer be applied (unless the row deletes it)."""
        if not self._deleting:
            if record.get("terminated_at") is not None:
                raise RecordSkipped("the coupon is terminated (Lago's API cannot terminate one)")
            expires = epoch_seconds(moment(record.get("expiration_at"), "expiration_at"))
            now = dt.datetime.now(dt.timezone.utc).timestamp()
            if record.get("expiration") == "time_limit" and expires is not None and expires < now:
                raise RecordSkipped(
                    f"the coupon expired at {record['expiration_at']} (Lago refuses an "
                    "expiration date in the past)"
                )
        return super().build(record)

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The coupon's write fields."""
        out: Canonical = {}
        for key in ("name", "coupon_type", "amount_currency", "frequency", "expiration"):
            put(out, key, record)
        put(out, "description", record, text)
        put(out, "amount_cents", record, whole)
        put(out, "percentage_rate", record, number)
        put(out, "reusable", record, flag)
        put(out, "frequency_duration", record, whole)
        put(out, "expiration_at", record, moment)
        limits = applies_to(record)
        if limits is not None:
            out["applies_to"] = limits
        return out
