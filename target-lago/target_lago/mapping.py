"""Conversions every action shares: timestamps, numbers, JSON-ready values, rejections."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import typing as t
from collections.abc import Mapping
from typing import Any

# ASCII digits only: Python reads full-width digits as numbers, Lago (Ruby) reads them as 0.
_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
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
SCALARS = frozenset({str, int, float, bool, type(None)})



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
    if kind in SCALARS:
        return value
    if kind is decimal.Decimal:
        return _number(value)
    if kind is dict:  # the common case, without a call per plain value
        return {
            k if type(k) is str else str(k): v if type(v) in SCALARS else plain(v)
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
    import pendulum  # noqa: PLC0415 - only for the rarer forms: a faster start

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


def epoch_seconds(value: Any) -> float | None:
    """Epoch seconds of an ISO-8601 text Lago returns (naive is UTC); None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def iso_moment(text: str) -> str | None:
    """An ISO-8601 date-time as UTC `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (naive is UTC).

    Returns None for text that is not one of the common ISO-8601 date-time forms.
    """
    moment = _fast_iso(text) if len(text) >= 19 else None
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _epoch_of_datetime(value: Any, moment: dt.datetime) -> int | str:
    """Epoch seconds of a moment (naive means UTC), as `to_epoch` returns them."""
    # Plain datetime arithmetic (a pendulum DateTime would build an Interval).
    since = dt.datetime.__sub__(moment, _EPOCH if moment.tzinfo else _NAIVE_EPOCH)
    seconds = since.days * 86_400 + since.seconds
    if not 0 <= seconds < _MAX_EPOCH_SECONDS:
        raise ValueError(f"{value!r} is out of range for epoch seconds")
    micro = since.microseconds
    return seconds if not micro else f"{seconds}.{micro:06d}".rstrip("0")


def missing(value: Any) -> bool:
    """Whether a required value is absent: None, or text that is empty or blank."""
    return value is None or (isinstance(value, str) and not value.strip())


def json_object(text: str) -> Any:
    """A JSON object given as text (warehouses often store JSON as text), else the text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def refuse_unsendable(body: Mapping[str, Any]) -> None:
    """Reject a body holding a value JSON cannot carry faithfully (see `unsendable`).

    Raises:
        RecordRejected: Naming the field.
    """
    problem = unsendable(body, "")
    if problem is not None:
        raise RecordRejected({problem[0]: ["value_is_invalid"]}, problem[1])


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
            if type(key) is str and (_has_surrogate(key) or "\x00" in key):
                return where, f"'{where}' has a key that is not valid Unicode text"
            kind = type(item)
            if kind in (int, bool, type(None)) or (
                kind is str and item.isascii() and "\x00" not in item
            ):
                continue
            found = unsendable(item, where, depth + 1)
            if found is not None:
                return found
        return None
    if kind is str:
        if _has_surrogate(value):
            return path, f"'{path}' is not valid Unicode text (lone surrogate)"
        if "\x00" in value:
            return path, f"'{path}' holds a NUL character, which Lago's database cannot store"
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
_AMOUNT_PLACES = decimal.Decimal(10) ** -15
_WIDE = decimal.Context(prec=80)


def decimal_text(value: Any) -> str:
    """An amount as the decimal string Lago reads exactly.

    Raises:
        ValueError: For anything Lago would silently store as 0 or could not hold: text
            that is not a number, NaN, infinity, a boolean, 10^25 and more, or digits
            beyond the 15th decimal place (Lago would round them away).
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
    if number != number.quantize(_AMOUNT_PLACES, rounding=decimal.ROUND_DOWN, context=_WIDE):
        raise ValueError(f"{value!r} has more than 15 decimal places (Lago keeps 15)")
    # One spelling per amount ("12.50", 12.5 and "1.25e1" are the same event).
    normal = number.normalize(_WIDE)
    return format(normal if normal != 0 else decimal.Decimal(0), "f")
