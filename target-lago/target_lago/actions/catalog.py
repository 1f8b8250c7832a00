"""The base of the catalog actions: one object per `code`, created, updated or left alone.

Each record is brought to a canonical form (`CatalogSink.canonical`), the same function
that reads what Lago holds: tap-lago's read shapes (`taxes` objects, `billable_metric_code`,
`plan_codes`, ...) and the write shapes Lago takes both work. Then, per record:

* `GET /{resource}/{code}`; absent (404): `POST /{resource}`;
* present and equal on every field the record gives: nothing sent (`already_present`);
* different: `PUT /{resource}/{code}` with the record's fields (`delivered`).

Lago answers a write with the object as it now holds it; a field it did not take (a
billable metric used by a plan keeps its aggregation, a plan with subscriptions its
interval, a premium part without a licence) is a dead letter naming it and why. A row
whose `catalog_deleted_column` is set is `DELETE /{resource}/{code}`, after every other
write of the run. A missing row never deletes anything.
"""

from __future__ import annotations

import decimal
import json
import threading
import typing as t
import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.actions.customers import marks_deleted
from target_lago.client import encode
from target_lago.mapping import (
    RecordRejected,
    decimal_text,
    json_default,
    missing,
    plain,
    refuse_unsendable,
    to_iso,
)
from target_lago.sinks import Item, OneByOneSink

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse

Canonical = dict[str, Any]


class Unmapped(RecordRejected):
    """A record value that cannot be brought to Lago's write shape."""

    def __init__(self, field: str, message: str) -> None:
        """Reject naming the field."""
        super().__init__({field: ["value_is_invalid"]}, message)


# Canonical values: the same text or number for what Lago reads as the same.


def text(value: Any, field: str = "") -> str | None:
    """Text where Lago treats "" and null alike (descriptions, display names)."""
    return None if value is None or value == "" else str(value)


# Fields holding decimal amounts (text in Lago), wherever they are nested.
DECIMAL_KEYS = frozenset(
    {"amount", "rate", "fixed_amount", "flat_amount", "per_unit_amount", "percentage_rate",
     "free_units_per_total_aggregation", "per_transaction_max_amount",
     "per_transaction_min_amount", "conversion_rate"}
)  # fmt: skip


def number(value: Any, field: str) -> Any:
    """A decimal amount, checked; text is sent as written (compared as a number)."""
    if value is None:
        return None
    try:
        normal = decimal_text(value)
    except ValueError as exc:
        raise Unmapped(field, f"'{field}' {exc}") from None
    return value.strip() if isinstance(value, str) else normal


def numeric(value: Any, field: str) -> Any:
    """A JSON number (a whole one as an integer: 14.0 is 14)."""
    if value is None or isinstance(value, bool):
        return value
    try:
        exact = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise Unmapped(field, f"'{field}' must be a number, got {value!r}") from None
    if not exact.is_finite():
        raise Unmapped(field, f"'{field}' must be a finite number, got {value!r}")
    return int(exact) if exact == exact.to_integral_value() else float(exact)


def whole(value: Any, field: str) -> Any:
    """A whole number (amounts in cents), as an integer."""
    out = numeric(value, field)
    if out is not None and not isinstance(out, int):
        raise Unmapped(field, f"'{field}' must be a whole number, got {value!r}")
    return out


def flag(value: Any, field: str) -> Any:
    """A boolean, also from the text a warehouse may hold ("true", "f", 1)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "t", "yes", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "f", "no", "0"}:
        return False
    raise Unmapped(field, f"'{field}' must be true or false, got {value!r}")


def moment(value: Any, field: str) -> Any:
    """A date-time as ISO-8601 UTC."""
    if value is None:
        return None
    try:
        return to_iso(value)
    except ValueError as exc:
        raise Unmapped(field, f"'{field}' {exc}") from None


def codes(record: Mapping[str, Any], field: str, objects: str) -> list[str] | None:
    """Codes given directly (`tax_codes`) or as tap-lago's objects (`taxes`)."""
    value = record.get(field)
    if value is None and isinstance(record.get(objects), list):
        value = [o.get("code") for o in record[objects] if isinstance(o, Mapping)]
    if value is None:
        return None
    if not isinstance(value, list):
        raise Unmapped(field, f"'{field}' must be a list of codes, got {value!r}")
    return [str(code) for code in value if code is not None]


def as_object(value: Any, field: str) -> Any:
    """A JSON object a warehouse may hold as text."""
    if isinstance(value, str) and value.strip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            raise Unmapped(field, f"'{field}' is not valid JSON") from None
    return value


def put(out: Canonical, key: str, record: Mapping[str, Any], convert: Any = None) -> None:
    """Copy one field when the record has it, converted."""
    if key in record:
        value = record[key]
        out[key] = convert(value, key) if convert is not None else value


def pairs(value: Any, key: str = "") -> Any:
    """A value as compared: lists in any order, decimals by value, null as absent."""
    if isinstance(value, Mapping):
        out = {str(k): pairs(v, str(k)) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, [], {})}
    if isinstance(value, list):
        items = (pairs(v, key) for v in value)
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if key in DECIMAL_KEYS and isinstance(value, (str, int, float, decimal.Decimal)):
        try:
            return decimal_text(value)
        except ValueError:
            return value
    return value


def differences(wanted: Canonical, stored: Canonical) -> list[str]:
    """The fields the record gives with another value than Lago holds."""
    return [k for k in wanted if pairs(wanted[k], k) != pairs(stored.get(k), k)]


def shown(value: Any) -> str:
    """A value for a message (long ones cut)."""
    out = json.dumps(value, default=json_default, sort_keys=True)
    return out if len(out) <= 80 else out[:77] + "..."


class CatalogSink(OneByOneSink):
    """One catalog object per `code`: create, update when different, or leave alone.

    Subclasses declare `action`, `endpoint`, `root_key`, `rank`, `what` (Lago's resource
    name in `<what>_not_found`), `read_only` (fields of Lago's objects that are not
    written), `kept` (why Lago may keep a value, for the dead letter) and `canonical`.
    """

    what: t.ClassVar[str]
    read_only: t.ClassVar[frozenset[str]] = frozenset({"lago_id", "created_at", "updated_at"})
    kept: t.ClassVar[str] = ""
    _deleting = False

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The fields of a record (or of Lago's object) in Lago's write shape."""
        raise NotImplementedError

    def known(self) -> frozenset[str]:
        """Every column this action reads (others are warned about, once)."""
        raise NotImplementedError

    def _get_context(self, record: dict) -> dict:
        # Read before the SDK strips `_sdc_*` columns from the record.
        column = str(self.config.get("catalog_deleted_column") or "_sdc_deleted_at")
        self._deleting = marks_deleted(record.get(column))
        return super()._get_context(record)

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to its canonical body (a deletion needs `code` only)."""
        if missing(record.get("code")):
            raise RecordRejected({"code": ["value_is_mandatory"]}, "'code' is missing or empty")
        code = str(record["code"])
        if self._deleting:
            return {"code": code}, f"{self.what} {code!r}"
        payload = self.canonical(record)
        payload["code"] = code
        self.warn_ignored(
            [
                c
                for c in record
                if c not in self.known() and c not in self.read_only and not c.startswith("_sdc_")
            ]
        )
        refuse_unsendable(payload)
        return plain(payload), f"{self.what} {code!r}"

    def deferred(self, item: Item) -> bool:
        """A deletion goes after every other write."""
        return self._deleting

    def path(self, code: str) -> str:
        """`/{resource}/{code}`."""
        return f"{self.endpoint}/{urllib.parse.quote(code, safe='')}"

    def describe(self, item: Item) -> str:
        """The request a record would make, for the dry run's log."""
        if self._deleting:
            return f"DELETE {self.path(item.payload['code'])}"
        body = json.dumps({self.root_key: item.payload}, default=json_default)
        return f"POST {self.endpoint} or PUT {self.path(item.payload['code'])} {body}"

    # Delivery

    def stored(self, code: str) -> tuple[dict | None, LagoResponse | None]:
        """What Lago holds for this code (None: absent), or the refusal of the read."""
        response = self.lago.client.get(self.path(code))
        if response.status == 404 and response.error_code == f"{self.what}_not_found":
            return None, None
        body = response.body if isinstance(response.body, dict) else {}
        if not response.ok or not isinstance(body.get(self.root_key), dict):
            return None, response
        return body[self.root_key], None

    def body(self, item: Item, stored: dict | None) -> dict | None:
        """The write body of a record (plans resolve codes to ids here); None: rejected."""
        return dict(item.payload)

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            self.apply(item)

    def apply(self, item: Item) -> None:
        """Create, update or leave alone one object; then what follows it (entitlements)."""
        code = item.payload["code"]
        stored, refused = self.stored(code)
        if refused is not None:
            self.reject_response(item, refused, refused.error_details or refused.body)
            return
        if stored is not None:
            self._update(item, stored, created_by_us=False)
            return
        body = self.body(item, None)
        if body is None:
            return
        response = self.lago.client.post(self.endpoint, {self.root_key: body})
        if response.ok:
            self._check(item, response, "delivered")
            return
        details = response.error_details
        taken = isinstance(details, dict) and "value_already_exist" in (details.get("code") or [])
        if taken:  # a lost answer of our own, or another writer: it exists now
            stored, refused = self.stored(code)
            if stored is not None:
                self._update(item, stored, created_by_us=response.replayed)
                return
        self.reject_response(item, response, details or response.body)

    def read(self, obj: Any) -> Canonical:
        """Lago's object in canonical form ({} when it cannot be read as one)."""
        if not isinstance(obj, Mapping):
            return {}
        try:
            return {**self.canonical(obj), "code": obj.get("code")}
        except RecordRejected:
            return {}

    def compare(self, wanted: Canonical, stored: Canonical) -> list[str]:
        """The fields the record gives with another value than Lago holds."""
        return differences(wanted, stored)

    def _update(self, item: Item, stored: dict, *, created_by_us: bool) -> None:
        changed = self.compare(item.payload, self.read(stored))
        if not changed:
            self.then(item, "delivered" if created_by_us else "already_present")
            return
        body = self.body(item, stored)
        if body is None:
            return
        response = self.lago.client.request(
            "PUT", self.path(item.payload["code"]), encode({self.root_key: body})
        )
        if response.ok:
            self._check(item, response, "delivered")
            return
        details = response.error_details or response.body
        hint = self.refusal(item, stored, response)
        if hint is None:
            self.reject_response(item, response, details)
            return
        fields, fix = hint
        self.reject(
            item.record,
            response.status,
            response.error_code,
            {**(details if isinstance(details, dict) else {}), **fields},
            f"Lago refused {item.key}: HTTP {response.status} {response.error_code} "
            f"{shown(details)}; {fix}",
            payload=item.payload,
        )

    def refusal(
        self, item: Item, stored: dict, response: LagoResponse
    ) -> tuple[dict[str, list[str]], str] | None:
        """For an update Lago refused: the record's fields to blame, and the fix.

        None: no better explanation than Lago's own.
        """
        return None

    def _check(self, item: Item, response: LagoResponse, outcome: str) -> None:
        """Dead-letter a write whose answer shows fields Lago did not take."""
        answer = response.body.get(self.root_key) if isinstance(response.body, dict) else None
        now = self.read(answer)
        kept = self.compare(item.payload, now)
        if not kept:
            self.then(item, outcome)
            return
        said = ", ".join(
            f"{f}={shown(now.get(f))} (the record says {shown(item.payload[f])})" for f in kept
        )
        self.reject(
            item.record,
            response.status,
            "change_not_applied",
            {f: ["not_applied"] for f in kept},
            f"Lago did not apply the change of {item.key}: it kept {said}"
            + (f"; {self.kept}" if self.kept else ""),
            payload=item.payload,
        )

    def then(self, item: Item, outcome: str) -> None:
        """Settle a record whose object is written (plans then write their entitlements)."""
        self.stats.add(outcome)

    def deliver_deferred(self, items: list[Item]) -> None:
        """Delete: 404 `<what>_not_found` means it is gone already."""
        for item in items:
            response = self.lago.client.request("DELETE", self.path(item.payload["code"]), None)
            if response.ok:
                self.stats.add("delivered")
            elif response.status == 404 and response.error_code == f"{self.what}_not_found":
                self.stats.add("delivered" if response.replayed else "already_present")
            else:
                self.reject_response(item, response, response.error_details or response.body)


class Resolver:
    """`code` -> Lago `lago_id` of billable metrics and add-ons, read once per run."""

    def __init__(self) -> None:
        """An empty cache."""
        self._ids: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def lago_id(self, sink: OneByOneSink, resource: str, root: str, code: str) -> str | None:
        """The id of the object with this code (None: Lago has none)."""
        key = (resource, code)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        response = sink.lago.client.get(f"/{resource}/{urllib.parse.quote(code, safe='')}")
        found = response.body.get(root) if response.ok and isinstance(response.body, dict) else None
        if not isinstance(found, dict) or not found.get("lago_id"):
            return None
        with self._lock:
            self._ids[key] = str(found["lago_id"])
        return self._ids[key]
