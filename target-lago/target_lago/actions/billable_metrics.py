"""`billable_metrics`: `POST /billable_metrics`, `PUT /billable_metrics/{code}` (see `catalog`).

A metric a plan charges for keeps everything but `name`, `description` and `filters`:
Lago answers 200 and keeps the rest, so such a change is a dead letter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import (
    Canonical,
    CatalogSink,
    Unmapped,
    as_object,
    flag,
    put,
    text,
    whole,
)


def metric_filters(value: Any, field: str) -> list[dict]:
    """`[{key, values}]` (compared in any order)."""
    value = as_object(value, field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(f, Mapping) and f.get("key") and isinstance(f.get("values"), list)
        for f in value
    ):
        raise Unmapped(field, f"'{field}' must be a list of {{key, values}}, got {value!r}")
    return [{"key": str(f["key"]), "values": [str(v) for v in f["values"]]} for f in value]


class BillableMetricsSink(CatalogSink):
    """A billable metric per `code`."""

    action = "billable_metrics"
    endpoint = "/billable_metrics"
    root_key = "billable_metric"
    what = "billable_metric"
    rank = 0
    self_parsed = ("filters",)
    kept = (
        "a billable metric that a plan charges for keeps everything but its name, "
        "description and filters (change the plans first, or create a metric with a new code)"
    )

    def known(self) -> frozenset[str]:
        """The metric's fields."""
        return frozenset(
            {"code", "name", "description", "recurring", "expression", "rounding_function",
             "rounding_precision", "field_name", "aggregation_type", "weighted_interval",
             "filters"}
        )  # fmt: skip

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The metric's write fields (an empty `expression` is none)."""
        out: Canonical = {}
        for key in ("name", "aggregation_type", "rounding_function", "weighted_interval"):
            put(out, key, record)
        put(out, "description", record, text)
        put(out, "expression", record, text)
        put(out, "field_name", record, text)
        put(out, "recurring", record, flag)
        put(out, "rounding_precision", record, whole)
        put(out, "filters", record, metric_filters)
        return out
