"""`add_ons`: `POST /add_ons`, `PUT /add_ons/{code}` when a field differs (see `catalog`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import Canonical, CatalogSink, codes, put, text, whole


class AddOnsSink(CatalogSink):
    """An add-on per `code`; tap-lago's `taxes` objects become `tax_codes`."""

    action = "add_ons"
    endpoint = "/add_ons"
    root_key = "add_on"
    what = "add_on"
    rank = 10
    read_only = CatalogSink.read_only | {"taxes"}

    def known(self) -> frozenset[str]:
        """The add-on's fields."""
        return frozenset(
            {"code", "name", "invoice_display_name", "description", "amount_cents",
             "amount_currency", "tax_codes"}
        )  # fmt: skip

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The add-on's write fields."""
        out: Canonical = {}
        put(out, "name", record)
        put(out, "invoice_display_name", record, text)
        put(out, "description", record, text)
        put(out, "amount_cents", record, whole)
        put(out, "amount_currency", record)
        taxes = codes(record, "tax_codes", "taxes")
        if taxes is not None:
            out["tax_codes"] = taxes
        return out
