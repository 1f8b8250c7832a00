"""`one_off_invoices`: bill add-ons to a customer (`POST /invoices`). NOT idempotent.

Lago v1.51.0 has no idempotency for one-off invoices and takes metadata only after
creation, so exactly once cannot be guaranteed: a POST whose answer is lost may have
billed. The stream is refused unless `allow_non_idempotent_one_off_invoices` is on; then
the best guard is kept: each invoice is tagged with its record's key (`PUT
/invoices/{lago_id}` metadata `target_lago_key`), looked up by that key before creating
(`GET /invoices?metadata[target_lago_key]=`), and a POST whose answer was lost is never
sent again before the customer's new one-off invoices are searched for it.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import json
import time
import typing as t
import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.client import LagoUnavailableError, encode
from target_lago.mapping import (
    RecordRejected,
    decimal_text,
    epoch_seconds,
    json_object,
    missing,
    plain,
    refuse_unsendable,
    to_iso,
)
from target_lago.sinks import Item, OneByOneSink, StreamSetupError

if t.TYPE_CHECKING:
    pass

SETTING = "allow_non_idempotent_one_off_invoices"
METADATA_KEY = "target_lago_key"
INVOICE_FIELDS = ("external_customer_id", "currency", "billing_entity_code", "skip_psp",
                  "purchase_order_number", "invoice_custom_section", "payment_method")  # fmt: skip
FEE_FIELDS = ("add_on_code", "invoice_display_name", "unit_amount_cents", "units",
              "description", "from_datetime", "to_datetime", "tax_codes")  # fmt: skip
#: Seconds before the first attempt an invoice may be dated and still be the lost one's.
CLOCK_SLACK = 5.0


def record_key(record: Mapping[str, Any], columns: t.Sequence[str]) -> str:
    """The key of a record's invoice: a hash of its key columns, names and values."""
    absent = [column for column in columns if missing(record.get(column))]
    if absent:
        raise RecordRejected(
            {column: ["value_is_mandatory"] for column in absent},
            f"key properties {absent} are missing or empty: they name the record's invoice",
        )
    basis = json.dumps(plain({c: record[c] for c in columns}), sort_keys=True, default=str)
    return "tl-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:40]


def _fee(source: Mapping[str, Any], index: int) -> dict:
    fee = {k: source[k] for k in FEE_FIELDS if source.get(k) is not None}
    where = f"fees[{index}]" if index >= 0 else ""
    if missing(fee.get("add_on_code")):
        raise RecordRejected(
            {f"{where}.add_on_code".lstrip("."): ["value_is_mandatory"]},
            "'add_on_code' is missing or empty",
        )
    fee["add_on_code"] = str(fee["add_on_code"])
    try:
        if "units" in fee:
            fee["units"] = decimal_text(fee["units"])
        for field in ("from_datetime", "to_datetime"):
            if field in fee:
                fee[field] = to_iso(fee[field])
    except ValueError as exc:
        raise RecordRejected({where or "fee": ["value_is_invalid"]}, f"{where} {exc}") from None
    return fee


def invoice_payload(record: Mapping[str, Any]) -> dict:
    """Build the `invoice` body of `POST /invoices` (a one-off invoice of add-ons).

    The fees come from a `fees` column (a list, or its JSON text), else the row itself is
    the one fee (`add_on_code`, `units`, `unit_amount_cents`, `description`, ...).

    Raises:
        RecordRejected: When `external_customer_id` or an `add_on_code` is missing, or a
            value cannot be read.
    """
    if missing(record.get("external_customer_id")):
        raise RecordRejected(
            {"external_customer_id": ["value_is_mandatory"]},
            "'external_customer_id' is missing or empty",
        )
    body = {k: record[k] for k in INVOICE_FIELDS if record.get(k) is not None}
    body["external_customer_id"] = str(body["external_customer_id"])
    fees = record.get("fees")
    if isinstance(fees, str):
        fees = json_object(f'{{"fees":{fees}}}').get("fees") if fees.strip() else None
    if fees is None:
        body["fees"] = [_fee(record, -1)]
    elif isinstance(fees, list) and fees and all(isinstance(f, Mapping) for f in fees):
        body["fees"] = [_fee(fee, index) for index, fee in enumerate(fees)]
    else:
        raise RecordRejected({"fees": ["value_is_invalid"]}, "'fees' must be a list of fees")
    refuse_unsendable(body)
    return plain(body)


def _fee_signature(fees: t.Iterable[Any]) -> list[tuple[str, decimal.Decimal]]:
    out = []
    for fee in fees:
        if not isinstance(fee, Mapping):
            continue
        item = fee.get("item")
        code = fee.get("add_on_code") or (item.get("code") if isinstance(item, Mapping) else None)
        out.append((str(code), decimal.Decimal(str(fee.get("units") or "1"))))
    return sorted(out)


class OneOffInvoicesSink(OneByOneSink):
    """`POST /invoices`: one one-off invoice per record, behind an explicit opt-in."""

    action = "one_off_invoices"
    endpoint = "/invoices"
    root_key = "invoice"
    rank = 80
    self_parsed = ("fees", "units", "from_datetime", "to_datetime")

    def setup(self) -> None:
        """Refuse the stream without the opt-in or without a key.

        Raises:
            StreamSetupError: When the opt-in setting is off or the stream has no key.
        """
        if not self.config.get(SETTING, False):
            msg = (
                f"Stream '{self.stream_name}' bills one-off invoices, which Lago cannot make "
                f"idempotent (a lost response can bill twice): set {SETTING} to true to "
                "accept that risk (see the README, one-off invoices)."
            )
            raise StreamSetupError(msg)
        if not self.key_properties:
            msg = (
                f"Stream '{self.stream_name}' has no key properties: a one-off invoice is "
                "tagged with its record's key so that a replay finds it; declare the key "
                "upstream."
            )
            raise StreamSetupError(msg)

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to an invoice body; the key goes in `_key` (not sent)."""
        key = record_key(record, list(self.key_properties))
        payload = invoice_payload(record)
        return {**payload, "_key": key}, f"one-off invoice {key!r}"

    def describe(self, item: Item) -> str:
        """The requests of a record, for the dry run's log."""
        body = {k: v for k, v in item.payload.items() if k != "_key"}
        return (
            f"POST {self.endpoint} {json.dumps({'invoice': body})} then PUT its metadata "
            f"{METADATA_KEY}={item.payload['_key']}"
        )

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            self._bill(item)

    def tagged(self, item: Item) -> dict | None:
        """The invoice Lago holds with this record's key, if any."""
        query = urllib.parse.urlencode(
            {
                "external_customer_id": item.payload["external_customer_id"],
                f"metadata[{METADATA_KEY}]": item.payload["_key"],
                "per_page": "2",
            }
        )
        response = self.lago.client.request("GET", f"{self.endpoint}?{query}", None)
        rows = (response.body or {}).get("invoices") if response.ok else None
        return next((row for row in rows or [] if isinstance(row, dict)), None)

    def _bill(self, item: Item) -> None:
        if self.tagged(item) is not None:
            self.stats.add("already_present")
            return
        body = {k: v for k, v in item.payload.items() if k != "_key"}
        found: list[dict] = []
        started = time.time()
        response = self.send_once(
            "POST",
            self.endpoint,
            encode({"invoice": body}),
            functools.partial(self._lost_one, item, started, found),
        )
        if response is not None and not response.ok:
            self.reject_response(item, response, response.error_details or response.body)
            return
        invoice = found[0] if response is None else (response.body or {}).get("invoice") or {}
        self.stats.add("delivered")
        self._tag(item, invoice)

    def _lost_one(self, item: Item, started: float, found: list[dict]) -> bool:
        """After a lost answer: find the invoice that attempt made (untagged, same fees, new)."""
        tagged = self.tagged(item)
        if tagged is not None:
            found.append(tagged)
            return True
        query = urllib.parse.urlencode(
            {
                "external_customer_id": item.payload["external_customer_id"],
                "invoice_type": "one_off",
                "per_page": "100",
            }
        )
        response = self.lago.client.request("GET", f"{self.endpoint}?{query}", None)
        rows = (response.body or {}).get("invoices") if response.ok else None
        wanted = _fee_signature(item.payload["fees"])
        for row in rows or []:
            if not isinstance(row, dict):
                continue
            created = epoch_seconds(row.get("created_at"))
            keys = [m.get("key") for m in row.get("metadata") or [] if isinstance(m, dict)]
            if created is None or created < started - CLOCK_SLACK or METADATA_KEY in keys:
                continue
            fees = row.get("fees")
            if fees is None:
                detail = self.lago.client.get(f"{self.endpoint}/{row.get('lago_id')}")
                fees = ((detail.body or {}).get("invoice") or {}).get("fees") or []
            if _fee_signature(fees) == wanted:
                found.append(row)
                return True
        return False

    def _tag(self, item: Item, invoice: Mapping[str, Any]) -> None:
        """Write the record's key into the invoice's metadata (what a replay looks up)."""
        metadata = [
            {"id": m["lago_id"], "key": m["key"], "value": m["value"]}
            for m in invoice.get("metadata") or []
            if isinstance(m, dict) and m.get("key") != METADATA_KEY and m.get("lago_id")
        ]
        metadata.append({"key": METADATA_KEY, "value": item.payload["_key"]})
        path = f"{self.endpoint}/{urllib.parse.quote(str(invoice.get('lago_id')), safe='')}"
        try:
            response = self.lago.client.request(
                "PUT", path, encode({"invoice": {"metadata": metadata}})
            )
            problem = "" if response.ok else f"HTTP {response.status} {response.error_code}"
        except LagoUnavailableError as exc:
            problem = str(exc)
        if problem:
            self.logger.error(
                "Invoice %s of %s was created but its key could not be written (%s): "
                "replaying this record would bill it again; add metadata %s=%s to it in Lago.",
                invoice.get("lago_id"),
                item.key,
                problem,
                METADATA_KEY,
                item.payload["_key"],
            )
