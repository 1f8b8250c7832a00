"""Singer output: every message serialized with orjson, RECORD lines without per-line flushes.

The SDK's writer builds each line with simplejson and flushes stdout after every message;
at a million records that is most of a sync's CPU time. This writer produces the same
JSON (compact separators, same keys and values; a Decimal stays an exact number) and
flushes only before and after non-RECORD messages (SCHEMA, STATE, ...), so a target never
sees a STATE before the records it covers. Where Python leaves stdout unbuffered
(``PYTHONUNBUFFERED``), RECORD lines still go out in 64 KiB writes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as dt
import decimal
import io
import sys
import time
import typing as t

import orjson
from singer_sdk.singerlib import RecordMessage
from singer_sdk.singerlib.encoding import SimpleSingerWriter
from singer_sdk.singerlib.json import serialize_json

if t.TYPE_CHECKING:
    from singer_sdk.singerlib import Message

_UTC = dt.timezone.utc
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps
#: U+2028 and U+2029 in UTF-8 (orjson writes them raw; only ever inside strings).
_LS, _PS = "\u2028".encode(), "\u2029".encode()


def _default(value: object) -> object:
    """Types orjson does not know: Decimal as an exact JSON number, the rest as text."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return orjson.Fragment(str(value).encode())
    return str(value)


def dumps_line(obj: object) -> bytes:
    """One JSON line (compact, newline-terminated) for a Singer message dict."""
    try:
        line = orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # What orjson refuses (an integer beyond 64 bits, ...): the SDK's own encoder.
        return (serialize_json(obj) + "\n").encode()
    if not line.isascii() and (_LS in line or _PS in line):
        # Valid JSON, but str.splitlines() would cut the line there: escape them.
        line = line.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
    return line


def message_dict(message: Message) -> dict[str, t.Any]:
    """What ``message.to_dict()`` returns, without copying the values.

    ``to_dict`` is ``dataclasses.asdict``: a deep copy of every value, a SCHEMA's whole
    schema included, for a dict serialized at once. A child stream writes its SCHEMA once
    per parent record (a sync per parent), so the copies were most of the CPU time of a
    sync of usage or wallet transactions. The same fields in the same order, None left
    out at the top level as ``to_dict`` does; a nested message takes ``to_dict``.
    """
    out: dict[str, t.Any] = {}
    for name in _field_names(type(message)):
        value = getattr(message, name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            return message.to_dict()
        out[name] = value
    return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class LagoMessageWriter(SimpleSingerWriter):
    """Writes Singer messages to stdout as orjson lines."""

    def __init__(self) -> None:
        super().__init__()
        self._writers: dict[tuple[str, int | None], t.Callable[[dict[str, t.Any]], None]] = {}

    def serialize_message(self, message: Message) -> str:
        """The message as one JSON line without the newline."""
        return dumps_line(message_dict(message))[:-1].decode()

    def write_message(self, message: Message) -> None:
        """Write one message; flush unless it is a RECORD."""
        _emit(dumps_line(message_dict(message)), flush=not isinstance(message, RecordMessage))

    def write_record(self, stream: str, record: dict[str, t.Any], version: int | None) -> None:
        """Write a RECORD line straight from its parts (no message object, no flush)."""
        writer = self._writers.get((stream, version))
        if writer is None:
            writer = self._writers[stream, version] = self.record_writer(stream, version)
        writer(record)

    def record_writer(
        self, stream: str, version: int | None
    ) -> t.Callable[[dict[str, t.Any]], None]:
        """`write_record` for the records of one stream and version.

        Each line is the record's JSON between a head (type, stream) made once and a tail
        (version, time_extracted) made once per millisecond: the keys and order of the
        message's own line, ``time_extracted`` true to the millisecond.
        """
        head = dumps_line({"type": "RECORD", "stream": stream})[:-2] + b',"record":'
        tail = [b"", -1.0]  # the tail, and the time it holds
        clock, dumps = time.time, _dumps

        def write(record: dict[str, t.Any]) -> None:
            now = clock()
            if not 0 <= now - t.cast("float", tail[1]) < 0.001:  # a new ms, or a clock set back
                extracted: dict[str, t.Any] = {} if version is None else {"version": version}
                extracted["time_extracted"] = dt.datetime.fromtimestamp(now, _UTC)
                tail[0], tail[1] = b"," + dumps_line(extracted)[1:], now
            try:  # dumps_line, inlined (non-text keys, rare and slower, go there)
                body = dumps(record, default=_default)
            except orjson.JSONEncodeError:
                body = dumps_line(record)[:-1]
            else:
                if not body.isascii() and (_LS in body or _PS in body):
                    body = body.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
            line = b"".join((head, body, t.cast("bytes", tail[0])))
            out = sys.stdout
            target = _target[1] if _target[0] is out else _binary_stdout(out)
            if target is None:
                out.write(line.decode())
            else:
                target.write(line)

        return write


#: Our own buffer over stdout when Python leaves it unbuffered (``PYTHONUNBUFFERED``,
#: ``-u``, common in container images): there, each RECORD line would be a system call.
_buffered: io.BufferedWriter | None = None
#: The stdout object last seen, and where its bytes go (worked out once per stdout).
_target: tuple[t.Any, t.Any] = (None, None)


def _binary_stdout(out: t.Any) -> t.Any:
    """Where RECORD bytes go: stdout's binary buffer, buffered by us if Python does not."""
    global _buffered, _target  # noqa: PLW0603 - one buffer per process, like stdout itself
    buffer = getattr(out, "buffer", None)
    if isinstance(buffer, io.RawIOBase):
        if _buffered is None or _buffered.raw is not buffer:
            if _buffered is not None:
                _buffered.flush()
            _buffered = io.BufferedWriter(buffer, 1 << 16)
            atexit.register(_flush_at_exit, _buffered)
        buffer = _buffered
    _target = (out, buffer)
    return buffer


def _flush_at_exit(buffer: io.BufferedWriter) -> None:
    """Write out what is left in our buffer at exit (unless stdout is already closed)."""
    with contextlib.suppress(ValueError, OSError):
        buffer.flush()


def _emit(line: bytes, *, flush: bool) -> None:
    """Append bytes to stdout (its binary buffer when it has one, as in a real run)."""
    out = sys.stdout
    buffer = _binary_stdout(out)
    if buffer is None:
        out.write(line.decode())
    else:
        buffer.write(line)
    if flush:
        if buffer is not None:
            buffer.flush()
        out.flush()


# Conformance ---------------------------------------------------------------------------


def conformance_check(schema: dict[str, t.Any]) -> t.Callable[[dict[str, t.Any]], bool]:
    """A predicate telling whether the SDK's type conformance would leave a record as is.

    Records parsed from JSON hold only JSON types, so ``conform_record_data_types``
    (recursive level) changes one only when it has a property the schema does not declare
    (dropped with a warning) or a non-boolean value under a boolean-only type (made a
    bool); datetimes, bytes and non-finite floats cannot come out of a JSON parser that
    refuses infinities. The predicate checks exactly those cases, so a record it accepts
    can skip conformance; any other record takes the SDK's path.
    """
    properties: dict[str, t.Any] = schema.get("properties") or {}
    declared = frozenset(properties)
    open_object = bool(schema.get("additionalProperties"))
    values = value_conformance(schema)

    def conforms(record: dict[str, t.Any]) -> bool:
        if not open_object and not declared.issuperset(record):
            return False
        return values is None or values(record)

    return conforms


def value_conformance(schema: dict[str, t.Any]) -> t.Callable[[dict[str, t.Any]], bool] | None:
    """`conformance_check` of a record's values alone (its keys known to be declared).

    None when any JSON value passes.
    """
    properties: dict[str, t.Any] = schema.get("properties") or {}
    checks = [
        (name, check)
        for name, sub_schema in properties.items()
        if (check := _value_check(sub_schema)) is not None
    ]
    if not checks:
        return None

    def values_conform(record: dict[str, t.Any]) -> bool:
        for name, check in checks:
            value = record.get(name)
            if value is not None and not check(value):
                return False
        return True

    return values_conform


def _value_check(schema: dict[str, t.Any]) -> t.Callable[[t.Any], bool] | None:
    """Check of one value against its property schema; None when any JSON value passes."""
    if _is_boolean_only(schema):
        return lambda value: isinstance(value, bool)
    if is_uniform_list(schema):
        items = schema["items"]
        item_check = _value_check(items)
        object_check = conformance_check(items) if is_object_type(items) else None

        def list_ok(value: t.Any) -> bool:
            if not isinstance(value, list):
                return True
            for item in value:
                if object_check is not None and isinstance(item, dict):
                    if not object_check(item):
                        return False
                elif item is not None and item_check is not None and not item_check(item):
                    return False
            return True

        return list_ok if (item_check or object_check) else None
    if is_object_type(schema) and "properties" in schema:
        if schema.get("additionalProperties") and not any(
            _value_check(sub) for sub in schema["properties"].values()
        ):
            return None  # an open object whose declared properties take any JSON value
        nested = conformance_check(schema)
        return lambda value: not isinstance(value, dict) or nested(value)
    return None


def is_object_type(schema: dict[str, t.Any]) -> bool:
    """Whether a property schema admits an object (as the SDK's conformance reads it)."""
    kinds = schema.get("anyOf", [schema.get("type")])
    return any(kind == "object" or "object" in (kind or ()) for kind in kinds)


def is_uniform_list(schema: dict[str, t.Any]) -> bool:
    """Whether a property schema is an array with one item schema (not a tuple)."""
    return (
        _admits_array(schema)
        and isinstance(schema.get("items"), dict)
        and "prefixItems" not in schema
    )


def _admits_array(schema: dict[str, t.Any]) -> bool:
    if "anyOf" in schema:
        return any(_admits_array(option) for option in schema["anyOf"])
    if "allOf" in schema:
        return all(_admits_array(option) for option in schema["allOf"])
    return "array" in (schema.get("type") or ())


def _is_boolean_only(schema: dict[str, t.Any]) -> bool:
    """The SDK's test for a boolean-only type (``boolean`` or ``[boolean, null]``)."""
    kind = schema.get("type")
    if kind is None:
        return False
    return kind in ("boolean", ["boolean"]) or (
        isinstance(kind, list) and set(kind) == {"boolean", "null"}
    )
