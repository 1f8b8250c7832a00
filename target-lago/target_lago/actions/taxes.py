"""`taxes`: `POST /taxes`, `PUT /taxes/{code}` when a field differs (see `catalog`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import Canonical, CatalogSink, flag, number, put, text


class TaxesSink(CatalogSink):
    """A tax per `code`: `name`, `rate`, `description`, `applied_to_organization`."""

    action = "taxes"
    endpoint = "/taxes"
    root_key = "tax"
    what = "tax"
    rank = 0
    self_parsed = ("rate",)

    def known(self) -> frozenset[str]:
        """The tax's fields."""
        return frozenset({"code", "name", "rate", "description", "applied_to_organization"})

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """`rate` as decimal text (Lago answers a number, takes text)."""
        out: Canonical = {}
        put(out, "name", record)
        put(out, "rate", record, number)
        put(out, "description", record, text)
        put(out, "applied_to_organization", record, flag)
        return out
