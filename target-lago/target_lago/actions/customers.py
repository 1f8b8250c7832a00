"""`customers`: `POST /customers`, an upsert on `external_id`.

Each row first reads the customer (`GET /customers/{external_id}`): when Lago already
holds every field the row gives, nothing is sent and the row counts as already present.
An unchanged replay thus costs one read instead of one write (and sends Lago no
`customer.updated` webhook); a changed row costs the read and the upsert (counted as
already present when Lago's answer shows it changed nothing). The read also
names the metadata entries Lago holds by their ids (see `keep_metadata_ids`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from target_lago.client import encode
from target_lago.mapping import RecordRejected, missing, plain, refuse_unsendable
from target_lago.sinks import Item, OneByOneSink

if TYPE_CHECKING:
    from target_lago.client import LagoResponse

CUSTOMER_FIELDS = frozenset(
    {
        "external_id",
        "billing_entity_code",
        "address_line1",
        "address_line2",
        "city",
        "country",
        "currency",
        "email",
        "legal_name",
        "legal_number",
        "logo_url",
        "name",
        "firstname",
        "lastname",
        "account_type",
        "customer_type",
        "phone",
        "state",
        "tax_codes",
        "tax_identification_number",
        "timezone",
        "url",
        "zipcode",
        "net_payment_term",
        "finalize_zero_amount_invoice",
        "billing_configuration",
        "shipping_address",
        "integration_customers",
        "metadata",
        "skip_invoice_custom_sections",
        "invoice_custom_section_codes",
    }
)
CUSTOMER_READ_ONLY = frozenset(
    {
        "lago_id",
        "sequential_id",
        "slug",
        "applicable_timezone",
        "created_at",
        "updated_at",
        "error_details",
        "taxes",
        "applicable_invoice_custom_sections",
    }
)

def customer_payload(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Build the `customer` body of `POST /customers` (an upsert on `external_id`).

    tap-lago's output shapes are converted to input shapes: `taxes` become
    `tax_codes`, custom sections become their codes, metadata and integrations lose
    their ids. Keys absent from the record stay absent (Lago leaves them unchanged).

    Args:
        record: The record.

    Returns:
        The body and the record's columns that Lago cannot take (ignored).

    Raises:
        RecordRejected: When `external_id` is missing.
    """
    if missing(record.get("external_id")):
        raise RecordRejected(
            {"external_id": ["value_is_mandatory"]}, "'external_id' is missing or empty"
        )
    body: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in record.items():
        if key in CUSTOMER_FIELDS:
            body[key] = value
        elif key not in CUSTOMER_READ_ONLY and not key.startswith("_sdc_"):
            ignored.append(key)
    body["external_id"] = str(body["external_id"])
    if "tax_codes" not in body and isinstance(record.get("taxes"), list):
        body["tax_codes"] = _codes(record["taxes"])
    sections = record.get("applicable_invoice_custom_sections")
    if "invoice_custom_section_codes" not in body and isinstance(sections, list):
        body["invoice_custom_section_codes"] = _codes(sections)
    if isinstance(body.get("metadata"), list):
        body["metadata"] = [
            {k: v for k, v in item.items() if k in {"id", "key", "value", "display_in_invoice"}}
            for item in body["metadata"]
            if isinstance(item, Mapping)
        ]
    if isinstance(body.get("integration_customers"), list):
        body["integration_customers"] = [
            _integration(item)
            for item in body["integration_customers"]
            if isinstance(item, Mapping)
        ]
    refuse_unsendable(body)
    return plain(body), ignored


def _codes(items: Iterable[Any]) -> list[str]:
    return [str(item["code"]) for item in items if isinstance(item, Mapping) and item.get("code")]


def _integration(item: Mapping[str, Any]) -> dict:
    out = {k: v for k, v in item.items() if k not in {"lago_id", "type"}}
    if "integration_type" not in out and item.get("type") is not None:
        out["integration_type"] = item["type"]
    return out


class CustomersSink(OneByOneSink):
    """`POST /customers`: create or update the customer with this `external_id`.

    A row marked deleted (`customer_deleted_column`) is `DELETE /customers/{external_id}`
    instead, written after every other write of the run (before the next STATE).
    """

    action = "customers"
    endpoint = "/customers"
    root_key = "customer"
    rank = 40

    _deleting = False

    def _get_context(self, record: dict) -> dict:
        # Read before the SDK strips `_sdc_*` columns from the record.
        column = str(self.config.get("customer_deleted_column") or "_sdc_deleted_at")
        self._deleting = marks_deleted(record.get(column))
        return super()._get_context(record)

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a customer body (a deletion needs `external_id` only)."""
        if self._deleting:
            if missing(record.get("external_id")):
                raise RecordRejected(
                    {"external_id": ["value_is_mandatory"]}, "'external_id' is missing or empty"
                )
            external_id = str(record["external_id"])
            return {"external_id": external_id}, f"customer {external_id!r}"
        payload, ignored = customer_payload(record)
        self.warn_ignored(ignored)
        return payload, f"customer {payload['external_id']!r}"

    def deferred(self, item: Item) -> bool:
        """A deletion goes after every other write."""
        return self._deleting

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            stored = self._stored(item)
            if stored is not None and unchanged(item.payload, stored):
                self.stats.add("already_present")
                continue
            self.keep_metadata_ids(item, stored or {})
            item.aside = stored
            super()._deliver_group([item])

    def settle_ok(self, item: Item, response: LagoResponse) -> None:
        """Already present when Lago's answer is the customer it held before.

        A field Lago drops (`timezone` without a premium licence) differs from what it holds
        on every run, so the row is sent; the answer then shows nothing changed.
        """
        body = response.body if isinstance(response.body, dict) else {}
        before, after = item.aside, body.get("customer")
        if isinstance(before, dict) and isinstance(after, dict) and _bare(before) == _bare(after):
            self.stats.add("already_present")
        else:
            self.stats.add("delivered")

    def _stored(self, item: Item) -> dict | None:
        """The customer Lago holds (None: none, or it could not be read: the row is sent)."""
        response = self.lago.client.get(self._path(item))
        body = response.body if response.ok and isinstance(response.body, dict) else {}
        found = body.get("customer")
        return found if isinstance(found, dict) else None

    def keep_metadata_ids(self, item: Item, stored: Mapping[str, Any]) -> None:
        """Name the metadata entries Lago holds by their `id` (matched by key).

        Lago replaces a customer's metadata with the entries sent: one without `id` is a new
        entry (tap-lago's carry another organisation's ids, which are dropped), so without
        this every upsert would recreate them, and a key already held would be refused.
        """
        entries = item.payload.get("metadata")
        if not isinstance(entries, list) or all("id" in e for e in entries):
            return
        ids = {
            m.get("key"): m.get("lago_id")
            for m in stored.get("metadata") or []
            if isinstance(m, dict) and m.get("lago_id")
        }
        named = [e for e in entries if "id" not in e and e.get("key") in ids]
        for entry in named:
            entry["id"] = ids[entry["key"]]
        if named:
            item.data = encode(item.payload)

    def describe(self, item: Item) -> str:
        """The request a record would make, for the dry run's log."""
        if self._deleting:
            return f"DELETE {self._path(item)}"
        return super().describe(item)

    def deliver_deferred(self, items: list[Item]) -> None:
        """Delete: 404 `customer_not_found` means it is gone already."""
        for item in items:
            response = self.lago.client.request("DELETE", self._path(item), None)
            if response.ok:
                self.stats.add("delivered")
            elif response.status == 404 and response.error_code == "customer_not_found":
                # After a lost answer, the earlier attempt is what deleted it.
                self.stats.add("delivered" if response.replayed else "already_present")
            else:
                self.reject_response(item, response, response.error_details or response.body)

    @staticmethod
    def _path(item: Item) -> str:
        return "/customers/" + urllib.parse.quote(item.payload["external_id"], safe="")


def marks_deleted(value: Any) -> bool:
    """Whether a deletion column's value says the row is deleted."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in {"", "false", "0", "no", "f", "n"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    return True


def _bare(customer: Mapping[str, Any]) -> dict:
    return {k: v for k, v in customer.items() if k != "updated_at"}


def _codes_of(stored: Mapping[str, Any], key: str) -> list[str]:
    return sorted(_codes(stored.get(key) or []))


def _same(key: str, wanted: Any, held: Any) -> bool:
    """Whether Lago's value is the one a row gives (objects: the keys it gives)."""
    if isinstance(wanted, Mapping):
        held = held if isinstance(held, Mapping) else {}
        return all(_same(k, v, held.get(k)) for k, v in wanted.items())
    if key == "country" and isinstance(wanted, str) and isinstance(held, str):
        return wanted.upper() == held.upper()
    if isinstance(wanted, list) and isinstance(held, list) and len(wanted) == len(held):
        return all(_same(key, w, h) for w, h in zip(wanted, held, strict=True))
    return bool(wanted == held)


def unchanged(payload: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether Lago holds every field of the body already (an upsert would change nothing).

    Tax and custom section codes are compared with the codes of what Lago applies, and
    metadata by key, value and display flag, in any order; any other doubt is a change.
    """
    for key, wanted in payload.items():
        if key == "tax_codes":
            same = sorted(map(str, wanted or [])) == _codes_of(stored, "taxes")
        elif key == "invoice_custom_section_codes":
            held = _codes_of(stored, "applicable_invoice_custom_sections")
            same = sorted(map(str, wanted or [])) == held
        elif key == "metadata":
            same = _entries(wanted) == _entries(stored.get("metadata"))
        else:
            same = _same(key, wanted, stored.get(key))
        if not same:
            return False
    return True


def _entries(value: Any) -> list[tuple] | None:
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    return sorted(
        (str(e.get("key")), e.get("value"), bool(e.get("display_in_invoice")))
        for e in value
        if isinstance(e, Mapping)
    )
