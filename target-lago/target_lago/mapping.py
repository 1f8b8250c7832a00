"""Turn Singer records into Lago write bodies: timestamps, ids and read-only fields."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import re
import typing as t
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pendulum

# Fields of tap-lago records that the API computes itself and a write must not carry.
EVENT_READ_ONLY = frozenset(
    {"lago_id", "lago_customer_id", "lago_subscription_id", "created_at", "updated_at"}
)
EVENT_FIELDS = frozenset(
    {
        "transaction_id",
        "code",
        "timestamp",
        "external_subscription_id",
        "precise_total_amount_cents",
        "properties",
    }
)
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
_NOT_PROPERTIES = EVENT_FIELDS | EVENT_READ_ONLY
# Subscriptions in these states are history: re-posting them would start a new one.
SKIPPED_SUBSCRIPTION_STATUSES = frozenset({"terminated", "canceled", "incomplete"})

_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# 10^11 seconds is the year 5138: a larger epoch value is milliseconds, which Lago
# would silently read as seconds.
_MAX_EPOCH_SECONDS = 10**11
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)  # naive moments are UTC
# ISO-8601 forms every supported Python reads with `datetime.fromisoformat` exactly as
# pendulum does (3 or 6 fraction digits, Z or +hh:mm); others go to pendulum.
_COMMON_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?(Z|[+-]\d{2}:\d{2})?\Z", re.ASCII
)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_quote = json.encoder.encode_basestring_ascii


class RecordRejected(Exception):
    """A record that cannot become a valid Lago write.

    Attributes:
        details: Lago-style error details, field -> list of error codes.
        message: A sentence naming the field and the offending value.
    """

    def __init__(
        self, details: dict[str, list[str]], message: str, transaction_id: str | None = None
    ) -> None:
        """Create the rejection.

        Args:
            details: Field -> error codes, in Lago's `error_details` shape.
            message: Human-readable reason naming the field.
            transaction_id: The event's transaction id, when it could be made.
        """
        super().__init__(message)
        self.details = details
        self.message = message
        self.transaction_id = transaction_id


class RecordSkipped(Exception):
    """A record deliberately not sent (e.g. a terminated subscription)."""


def json_default(value: Any) -> Any:
    """Serialize the non-JSON values a Singer record may hold after stream maps."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return _number(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def plain(value: Any) -> Any:
    """A JSON-ready copy of a record value.

    The SDK reads JSON numbers with a fraction as `Decimal`; they become numbers again
    (a string only when a float would change the value), so properties keep their type.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is decimal.Decimal:
        return _number(value)
    if kind is dict:  # the common case, without a call per plain value
        return {
            k if type(k) is str else str(k): v if type(v) in _SCALARS else plain(v)
            for k, v in value.items()
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json_default(value)


def _number(value: decimal.Decimal) -> int | float | str:
    if not value.is_finite():
        return str(value)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(value)
    as_float = float(value)
    return as_float if decimal.Decimal(repr(as_float)) == value else str(value)


def to_epoch(value: Any) -> int | str:
    """Convert a timestamp to Lago's numeric seconds, keeping sub-second precision.

    Args:
        value: ISO-8601 string, datetime, date, epoch seconds (int, float or a
            numeric string).

    Returns:
        An int for whole seconds, else a decimal string such as "1651240791.123"
        (Lago parses the string exactly; a float could round).

    Raises:
        ValueError: If the value is none of the accepted forms.
    """
    seconds: decimal.Decimal
    kind = type(value)
    if kind is int:
        if not 0 <= value < _MAX_EPOCH_SECONDS:
            raise ValueError(f"{value!r} is out of range for epoch seconds")
        return t.cast("int", value)
    if kind is str:
        moment = _fast_iso(value)
        if moment is not None:
            return _epoch_of_datetime(value, moment)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean")
    if isinstance(value, int):
        seconds = decimal.Decimal(value)
    elif isinstance(value, float):
        seconds = decimal.Decimal(repr(value))
    elif isinstance(value, decimal.Decimal):
        seconds = value
    elif isinstance(value, dt.datetime):
        return _epoch_of_datetime(value, value)
    elif isinstance(value, dt.date):
        return _epoch_of_datetime(value, dt.datetime(value.year, value.month, value.day))
    elif isinstance(value, str) and _NUMERIC.match(value.strip()):
        seconds = decimal.Decimal(value.strip())
    elif isinstance(value, str) and value.strip():
        return _epoch_of_datetime(value, _parse_iso(value))
    else:
        raise ValueError(f"{value!r} is not a timestamp")
    if not seconds.is_finite() or seconds < 0 or seconds >= _MAX_EPOCH_SECONDS:
        raise ValueError(f"{value!r} is out of range for epoch seconds")
    if seconds == seconds.to_integral_value():
        return int(seconds)
    return format(seconds.normalize(), "f")


def to_iso(value: Any) -> str:
    """Convert a timestamp to the ISO-8601 UTC string Lago wants for dates of plans.

    Args:
        value: ISO-8601 string, datetime, date or epoch seconds.

    Returns:
        e.g. "2024-03-01T00:00:00Z".

    Raises:
        ValueError: If the value is none of the accepted forms.
    """
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    elif isinstance(value, str) and value.strip() and not _NUMERIC.match(value.strip()):
        moment = _parse_iso(value)
    else:
        moment = dt.datetime.fromtimestamp(
            float(decimal.Decimal(str(to_epoch(value)))), tz=dt.timezone.utc
        )
    moment = moment.astimezone(dt.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _parse_iso(text: str) -> dt.datetime:
    try:
        parsed = pendulum.parse(text.strip())
    except (pendulum.parsing.exceptions.ParserError, ValueError) as exc:
        raise ValueError(f"{text!r} is not ISO-8601") from exc
    if isinstance(parsed, dt.datetime):
        return parsed
    if isinstance(parsed, dt.date):
        return dt.datetime(parsed.year, parsed.month, parsed.day, tzinfo=dt.timezone.utc)
    raise ValueError(f"{text!r} is not a date or date-time")


def _fast_iso(text: str) -> dt.datetime | None:
    """The common ISO-8601 forms, read by the standard library (else None: ask pendulum)."""
    if not _COMMON_ISO.match(text):
        return None
    try:
        return dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] == "Z" else text)
    except ValueError:
        return None  # e.g. February 30th: pendulum words the rejection


def _epoch_of_datetime(value: Any, moment: dt.datetime) -> int | str:
    """Epoch seconds of a moment (naive means UTC), as `to_epoch` returns them."""
    # Plain datetime arithmetic (a pendulum DateTime would build an Interval).
    since = dt.datetime.__sub__(moment, _EPOCH if moment.tzinfo else _NAIVE_EPOCH)
    seconds = since.days * 86_400 + since.seconds
    if not 0 <= seconds < _MAX_EPOCH_SECONDS:
        raise ValueError(f"{value!r} is out of range for epoch seconds")
    micro = since.microseconds
    return seconds if not micro else f"{seconds}.{micro:06d}".rstrip("0")


def transaction_id(code: str, record: Mapping[str, Any], columns: Sequence[str]) -> str:
    """Derive a stable transaction id for an event record that has none.

    The id is a hash of the event's `code` and the named columns (the stream's key
    properties, or the `transaction_id_columns` setting), names and values. Nothing else
    enters it: adding a column or renaming the stream changes no id, and the same row gives
    the same id in every run and process. The code keeps two tables with overlapping row
    ids for different metrics apart.

    Args:
        code: The event's billable metric code.
        record: The record.
        columns: The columns naming the row (at least one).

    Returns:
        "tl-" followed by 40 hex characters.

    Raises:
        RecordRejected: When a named column is missing or null.
    """
    missing = [column for column in columns if _missing(record.get(column))]
    if missing or not columns:
        raise RecordRejected(
            {column: ["value_is_mandatory"] for column in missing or ["transaction_id"]},
            f"no transaction_id, and the columns that derive it ({', '.join(columns)}) "
            f"are missing or empty: {', '.join(missing)}",
        )
    text = _keys_text(code, record, columns)
    if text is None:
        basis = {"code": code, "keys": {column: record[column] for column in columns}}
        text = json.dumps(plain(basis), sort_keys=True, separators=(",", ":"))
    return "tl-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def _keys_text(code: str, record: Mapping[str, Any], columns: Sequence[str]) -> str | None:
    """The JSON text `transaction_id` hashes, written directly (None: use json.dumps).

    Equal to `json.dumps(basis, sort_keys=True, separators=(",", ":"))` when every key
    value is a string or an integer.
    """
    if len(set(columns)) != len(columns):
        return None  # a column named twice: json.dumps keeps it once
    parts = []
    for column in sorted(columns):
        value = record[column]
        kind = type(value)
        if kind is str:
            parts.append(f"{_quote(column)}:{_quote(value)}")
        elif kind is int:
            parts.append(f"{_quote(column)}:{value}")
        else:
            return None
    return f'{{"code":{_quote(code)},"keys":{{{",".join(parts)}}}}}'


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _jsonable(value: Any) -> Any:
    return plain(value)


def _json_object(text: str) -> Any:
    """A JSON object given as text (warehouses often store JSON as text), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def event_payload(record: Mapping[str, Any], id_columns: Sequence[str]) -> dict:
    """Build one element of `POST /events/batch` from a record.

    Args:
        record: The record (warehouse row or tap-lago event).
        id_columns: The columns a missing `transaction_id` is derived from.

    Returns:
        The event body.

    Raises:
        RecordRejected: When `code`, `external_subscription_id` or `timestamp` is
            missing, a value cannot be read, or Lago would store something else than
            what was given (an invalid amount, NaN, nesting too deep).
    """
    details: dict[str, list[str]] = {}
    reasons: list[str] = []
    payload: dict[str, Any] = {}
    for field in ("code", "external_subscription_id", "transaction_id"):
        value = record.get(field)
        if _missing(value):
            if field != "transaction_id":
                details[field] = ["value_is_mandatory"]
                reasons.append(f"'{field}' is missing or empty")
        elif type(value) is str or (type(value) is int):
            payload[field] = str(value)
        else:
            details[field] = ["invalid_type"]
            reasons.append(f"'{field}' must be a string, got {type(value).__name__}")
    if "transaction_id" not in payload and "code" in payload:
        try:
            payload["transaction_id"] = transaction_id(payload["code"], record, id_columns)
        except RecordRejected as exc:
            details.update(exc.details)
            reasons.append(exc.message)
    if _missing(record.get("timestamp")):
        # Lago would use its receive time: a replay would then be a different event
        # for a ClickHouse event store, which deduplicates on (transaction_id, timestamp).
        details["timestamp"] = ["value_is_mandatory"]
        reasons.append("'timestamp' is missing (a replayed event must keep its time)")
    else:
        try:
            payload["timestamp"] = to_epoch(record["timestamp"])
        except ValueError as exc:
            details["timestamp"] = ["invalid_format"]
            reasons.append(f"'timestamp' {exc} (give ISO-8601, a date or epoch seconds)")
    amount = record.get("precise_total_amount_cents")
    if amount is not None:
        try:
            payload["precise_total_amount_cents"] = decimal_text(amount)
        except ValueError as exc:
            details["precise_total_amount_cents"] = ["value_is_invalid"]
            reasons.append(f"'precise_total_amount_cents' {exc} (Lago would store 0)")
    properties = record.get("properties")
    if isinstance(properties, str):
        properties = _json_object(properties)
    if isinstance(properties, Mapping):
        problem = unsendable(properties, "properties")
        if problem is None:
            payload["properties"] = _jsonable(dict(properties))
    elif properties is not None:
        problem = None
        details["properties"] = ["invalid_type"]
        reasons.append(
            f"'properties' must be an object or a JSON object string, "
            f"got {type(properties).__name__}"
        )
    else:
        # The other columns, made JSON-ready in the same pass (as `plain` would).
        columns = {
            key: value
            for key, value in record.items()
            if key not in _NOT_PROPERTIES and value is not None and not key.startswith("_sdc_")
        }
        problem = unsendable(columns, "")
        if problem is None and columns:
            payload["properties"] = {
                key: value if type(value) in _SCALARS else plain(value)
                for key, value in columns.items()
            }
    if problem is not None:
        details[problem[0]] = ["value_is_invalid"]
        reasons.append(problem[1])
    if details:
        raise RecordRejected(details, "; ".join(reasons), payload.get("transaction_id"))
    return payload


# Deepest nesting of objects and arrays a record value may have (Lago stores properties as
# JSON; the limit keeps a pathological row from exhausting the interpreter's stack).
MAX_DEPTH = 32


def unsendable(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The first value JSON cannot carry faithfully.

    That is NaN or infinity, a lone surrogate, or nesting deeper than `MAX_DEPTH`.

    Args:
        value: A record value.
        path: Its dotted path, for the message ("" for the record's top level).
        depth: Its nesting depth.

    Returns:
        (field path, reason), or None when the value can be sent as it is.
    """
    kind = type(value)
    if kind is dict or isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return path, f"'{path}' is nested more than {MAX_DEPTH} levels deep"
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if type(key) is str and _has_surrogate(key):
                return where, f"'{where}' has a key that is not valid Unicode (lone surrogate)"
            kind = type(item)
            if kind in (int, bool, type(None)) or (kind is str and item.isascii()):
                continue
            found = unsendable(item, where, depth + 1)
            if found is not None:
                return found
        return None
    if kind is str:
        if _has_surrogate(value):
            return path, f"'{path}' is not valid Unicode text (lone surrogate)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return path, f"'{path}' is {value}, which JSON cannot carry (it would arrive as null)"
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return path, f"'{path}' is {value}, which JSON cannot carry (it would arrive as null)"
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            return path, f"'{path}' is nested more than {MAX_DEPTH} levels deep"
        for index, item in enumerate(value):
            found = unsendable(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Lago stores precise_total_amount_cents as DECIMAL(40, 15): 25 digits before the point.
_MAX_AMOUNT = decimal.Decimal(10) ** 25


def decimal_text(value: Any) -> str:
    """An amount as the decimal string Lago reads exactly.

    Raises:
        ValueError: For anything Lago would silently store as 0 or could not hold: text
            that is not a number, NaN, infinity, a boolean, or 10^25 and more.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal, str)):
        raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
    text = value.strip() if isinstance(value, str) else None
    if text is not None and not _NUMERIC.match(text):
        raise ValueError(f"{value!r} is not a decimal number")
    if text is not None:
        number = decimal.Decimal(text)
    elif isinstance(value, float):
        number = decimal.Decimal(repr(value))
    else:
        number = decimal.Decimal(value)
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if abs(number) >= _MAX_AMOUNT:
        raise ValueError(f"{value!r} is out of range (at most 25 digits before the point)")
    return text if text is not None else format(number, "f")


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
    if _missing(record.get("external_id")):
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
    _refuse_unsendable(body)
    return _jsonable(body), ignored


def _refuse_unsendable(body: Mapping[str, Any]) -> None:
    problem = unsendable(body, "")
    if problem is not None:
        raise RecordRejected({problem[0]: ["value_is_invalid"]}, problem[1])


def _codes(items: Iterable[Any]) -> list[str]:
    return [str(item["code"]) for item in items if isinstance(item, Mapping) and item.get("code")]


def _integration(item: Mapping[str, Any]) -> dict:
    out = {k: v for k, v in item.items() if k not in {"lago_id", "type"}}
    if "integration_type" not in out and item.get("type") is not None:
        out["integration_type"] = item["type"]
    return out


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
        if _missing(record.get(field)):
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
    _refuse_unsendable(body)
    return _jsonable(body), ignored
