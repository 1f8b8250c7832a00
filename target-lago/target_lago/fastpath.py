"""The events fast path: RECORD lines of plain events streams, without the SDK's per-record work.

The SDK spends more per record (a copy, the stream map, metadata columns, hooks, metrics)
than the whole of a lean client's work per event. For an events stream that nothing
transforms, `read_lines` decodes each RECORD line once and `_Plan.take` checks it against
the stream's compiled validator and maps it as `event_payload` would, both worked out once
per record shape (its columns and value types), then hands the `Item` to the very sink the
SDK path would: same batches, same duplicate memory and partition rule, same delivery,
dead letters and STATE.

It only takes a record when the result is certain to equal the SDK path's; anything else
(stream maps, metadata columns, a schema the validator does not compile, a value that is
not a plain scalar, a field to reject, a customer to resolve, long or exponent numbers
whose reading could differ) goes the SDK's way, in order, from the same line. Nothing is
changed before that decision.

A change to what the SDK path does per event record (`LagoSink.process_record`,
`event_payload`, `EventsSink.admit`) must be made here too: the tests that send the same
input both ways compare requests, stored events, dead letters, STATE and counts.

Private SDK names it relies on (singer-sdk ~=0.54): `Target._sinks_active`,
`Target._process_record_message` (only compared, to refuse a target that overrides it),
`Target._handle_max_record_age`, `Sink._validator`, `BatchSink._get_context` (its list
is kept until the next drain: every drain goes through `_Plan.flush` or follows it),
`SingerReader._current_message`, `SingerReader._process_unknown_message` and
`Sink._remove_sdc_metadata_from_record` (asked which columns it drops).
"""

from __future__ import annotations

import decimal
import math
import operator
import re
import typing as t
from collections import defaultdict
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_quote

import msgspec
from singer_sdk import Target
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink

from target_lago.actions.events import _NOT_PROPERTIES, EventsSink, in_partition, key_text
from target_lago.mapping import _MAX_EPOCH_SECONDS as MAX_EPOCH_SECONDS
from target_lago.mapping import _has_surrogate, decimal_text, json_default, to_epoch
from target_lago.sinks import Item
from target_lago.validation import RecordValidator

if t.TYPE_CHECKING:
    from target_lago.target import LineReader, TargetLago

#: Switch for tests comparing both paths (False: every record goes the SDK's way).
ENABLED = True


class _Popped(dict):
    """A record that notes the names popped from it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def pop(self, key: t.Any, *default: t.Any) -> t.Any:
        self.names.add(key)
        return super().pop(key, *default)


def _sdc_columns() -> frozenset[str]:
    """The metadata columns the SDK drops from records it does not annotate (asked of it)."""
    probe = _Popped()
    Sink._remove_sdc_metadata_from_record(t.cast("Sink", None), probe)
    return frozenset(probe.names)


#: The SDK's metadata columns, dropped from records it does not annotate.
SDC_COLUMNS = _sdc_columns()
#: Records between two checks of the SDK's maximum record age (a drain every 5 minutes).
AGE_CHECK_EVERY = 64


def _float(text: str) -> float | decimal.Decimal:
    """A JSON fraction: a float when it reads the same as the SDK's `Decimal` would send.

    Up to 15 significant digits and no exponent, the float's shortest form has the same
    value as the text, so `mapping.plain` would send that float too. Others stay
    `Decimal`, which the fast path leaves to the SDK path.
    """
    if len(text) <= 16 and "e" not in text and "E" not in text:
        return float(text)
    return decimal.Decimal(text)


class Message(msgspec.Struct):
    """What the fast path reads of a Singer message (other fields are skipped)."""

    type: t.Any = None
    stream: str | None = None
    record: dict | None = None


#: A line that is not a JSON object, or has a stream or record of another type, fails
#: to decode: the SDK's reader then reads it (and words any problem).
DECODER = msgspec.json.Decoder(Message, float_hook=_float)

try:  # CPython's own SHA-256 starts faster than OpenSSL's on short texts; same digest
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - renamed in Python 3.12
    from hashlib import sha256 as _sha256


def _scalar(value: t.Any) -> bool:
    """Whether a value is sent as it is: a finite number, a boolean, or valid NUL-free text."""
    kind = type(value)
    if kind is str:
        if value.isascii():
            return "\x00" not in value
        return "\x00" not in value and not _has_surrogate(value)
    if kind is int or kind is bool:
        return True
    if kind is float:
        return math.isfinite(value)
    return False


def _plain_key(key: t.Any) -> bool:
    """A property name `mapping.unsendable` accepts."""
    return type(key) is str and "\x00" not in key and (key.isascii() or not _has_surrogate(key))


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}T\Z", re.ASCII)
_FRACTION = re.compile(r"(?:\.(\d{3}|\d{6}))?(?:Z|\+00:00)?\Z", re.ASCII)
#: Entries each timestamp memory keeps before it starts afresh.
MEMORY = 100_000
#: Seconds since midnight of every `HH:MM`, and of every `:SS` in a minute.
_CLOCK = {
    f"{hour:02d}:{minute:02d}": 3600 * hour + 60 * minute
    for hour in range(24)
    for minute in range(60)
}
_SECONDS = {f":{second:02d}": second for second in range(60)}


class Timestamps:
    """`mapping.to_epoch` of UTC ISO-8601 texts, read by parts a run meets again and again.

    `YYYY-MM-DDT` is read once per day (by `to_epoch` itself), `HH:MM` is one of 1,440
    and `:SS` one of 60, and a fraction with its zone (`.fffZ`) is read once per value;
    an event adds them up. A minute once read (`YYYY-MM-DDTHH:MM`) is remembered whole,
    so a known minute and fraction cost three lookups (as `_Plan.payload` reads them).
    Texts of other forms go to `to_epoch`.
    """

    def __init__(self) -> None:
        self.days: dict[str, int] = {}
        self.fractions: dict[str, str] = {}
        self.minutes: dict[str, int] = {}  # YYYY-MM-DDTHH:MM -> its epoch seconds

    def epoch(self, text: str) -> int | str:
        """`to_epoch(text)`.

        Raises:
            ValueError: As `to_epoch` does.
        """
        minute = self.minutes.get(text[:16])
        second = _SECONDS.get(text[16:19])
        fraction = self.fractions.get(text[19:])
        if minute is not None and second is not None and fraction is not None:
            return f"{minute + second}{fraction}" if fraction else minute + second
        clock = _CLOCK.get(text[11:16])
        if clock is None or second is None:
            return to_epoch(text)
        day = self.days.get(text[:11])
        fraction = self.fractions.get(text[19:])
        if day is None or fraction is None:
            if not self.learn(text):
                return to_epoch(text)
            day = self.days[text[:11]]
            fraction = self.fractions[text[19:]]
        if len(self.minutes) >= MEMORY:
            self.minutes.clear()
        self.minutes[text[:16]] = day + clock
        total = day + clock + second
        return f"{total}{fraction}" if fraction else total

    def learn(self, text: str) -> bool:
        """Remember the day and the fraction of a text; False when it has another form."""
        head, tail = text[:11], text[19:]
        found = _FRACTION.match(tail)
        if found is None or not _DAY.match(head):
            return False
        try:
            day = to_epoch(f"{head}00:00:00Z")
        except ValueError:
            return False
        if not isinstance(day, int) or day + 86_400 > MAX_EPOCH_SECONDS:
            return False
        for memory in (self.days, self.fractions):
            if len(memory) >= MEMORY:
                memory.clear()
        micro = int((found.group(1) or "0").ljust(6, "0"))
        self.days[head] = day
        self.fractions[tail] = "." + f"{micro:06d}".rstrip("0") if micro else ""
        return True


_NONE = type(None)
#: `client.encode` of a payload whose keys are in sorted order, for the reading thread only.
_encode = msgspec.json.Encoder(enc_hook=json_default).encode
#: Values of a jsonschema-judged column left to the SDK path (a `Decimal` there).
_UNJUDGED = frozenset({float, dict, list})
#: Kinds of values a property may have to be sent as they are (text is checked apart).
_SENT_AS_IS = frozenset({str, int, float, bool})
#: Kinds of a code or a subscription sent as text.
_TEXTS = frozenset({str, int})


def _getter(keys: list[str]) -> Callable[[dict], tuple]:
    """The values of `keys` in a record, as a tuple (even of one)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda record: (record[key],)
    return operator.itemgetter(*keys)


class _Shape(t.NamedTuple):
    """What a plan does with the records of one shape: their columns and value types."""

    texts: Callable[[dict], tuple] | None  # the text values sent, checked for NUL at once
    columns: list[str]  # the columns sent as properties
    values: Callable[[dict], tuple]  # their values
    judged: list[tuple[str, t.Any]]  # columns jsonschema judges (see `RecordValidator`)
    code: bool  # the code is an integer (sent as text)
    subscription: bool  # the subscription is an integer (sent as text)
    given: type | None  # the type of a given transaction id (None: derived)
    amount: bool  # there is a precise_total_amount_cents
    nested: bool  # there is a properties object
    key: str | None  # the id is derived from this one integer column
    stamp: type  # the type of the timestamp


class _Plan:
    """One events sink's fast path: its checks and mapping, compiled per record shape.

    A record's shape is its columns and the types of their values: validation, which
    columns become properties and which values need a look all follow from it, so each
    shape is worked out once (`shape`), and a record of a known shape costs a few lookups.
    """

    def __init__(self, target: TargetLago, sink: EventsSink, fast: FastEvents) -> None:
        self.target = target
        self.sink = sink
        self.fast = fast  # every stream's plan, flushed before anything may drain
        validator = sink._validator
        self.validator = validator if isinstance(validator, RecordValidator) else None
        self.keys = tuple(sink.key_properties or ())
        self.shapes: dict[tuple[tuple, tuple], _Shape | None] = {}
        columns = sorted(set(sink.id_columns))
        self.id_columns = [(column, _json_quote(column)) for column in columns]
        self.codes: dict[t.Any, tuple[str, str]] = {}  # code -> (its text, its ids' start)
        self.times = Timestamps()
        self.limit = sink.max_size
        self.share = target.partition
        self.check = sink._seen.check
        self.queued: list[Item] | None = None  # the pending batch's records
        self.count = 0  # records taken since the last flush
        self.stop = 0  # count at which `checkpoint` runs next
        self.elsewhere = 0  # events of other shares since the last flush

    def resolve(self, record: dict, keys: tuple, types: tuple) -> _Shape | None:
        """The shape of a record not of a known shape.

        The SDK's metadata columns are dropped first, as the SDK drops them from records
        it does not annotate.
        """
        if not SDC_COLUMNS.isdisjoint(keys):
            for name in SDC_COLUMNS:
                record.pop(name, None)
            keys = tuple(record)
            types = tuple(map(type, record.values()))
        found = self.shapes.get((keys, types), _UNKNOWN)
        return self.shape(keys, types) if found is _UNKNOWN else found

    def shape(self, keys: tuple, types: tuple) -> _Shape | None:
        """Work out the records of one shape (None: the SDK path takes them)."""
        if len(self.shapes) >= SHAPES:
            self.shapes.clear()
        self.shapes[keys, types] = found = self._shape(keys, types)
        return found

    def _shape(self, keys: tuple, types: tuple) -> _Shape | None:
        kinds = dict(zip(keys, types, strict=True))
        if not all(_plain_key(key) for key in keys) or any(k not in kinds for k in self.keys):
            return None
        judged = []
        validator = self.validator
        if validator is not None:  # `RecordValidator.accepts`, by type
            if validator.closed is not None and not set(keys) <= validator.closed:
                return None
            if any(name not in kinds for name in validator.required):
                return None
            for key, kind in kinds.items():
                allowed = validator.types.get(key)
                if allowed is not None and kind not in allowed:
                    return None
                if key in validator.others:
                    if kind in _UNJUDGED:
                        return None
                    judged.append((key, validator.others[key]))
        # `event_payload`, by type.
        code, subscription = kinds.get("code"), kinds.get("external_subscription_id")
        given = kinds.get("transaction_id", _NONE)
        if code not in _TEXTS or subscription not in _TEXTS or given not in (*_TEXTS, _NONE):
            return None
        if given is _NONE and not self.id_columns:
            return None
        stamp = kinds.get("timestamp", _NONE)
        if stamp in (_NONE, dict, list):
            return None
        nested = kinds.get("properties", _NONE)
        if nested not in (_NONE, dict):
            return None
        columns = sorted(
            key
            for key, kind in kinds.items()
            if kind is not _NONE and key not in _NOT_PROPERTIES and not key.startswith("_sdc_")
        )
        if nested is _NONE and any(kinds[key] not in _SENT_AS_IS for key in columns):
            return None
        sent = ["code", "external_subscription_id"]
        if given is not _NONE:
            sent.append("transaction_id")
        if nested is _NONE:
            sent += columns
        texts = [key for key in dict.fromkeys(sent) if kinds[key] is str]
        key = self.id_columns[0][0] if len(self.id_columns) == 1 else None
        return _Shape(
            texts=_getter(texts) if texts else None,
            columns=columns if nested is _NONE else [],
            values=_getter(columns) if columns else tuple,
            judged=judged,
            code=code is int,
            subscription=subscription is int,
            given=None if given is _NONE else given,
            amount=kinds.get("precise_total_amount_cents", _NONE) is not _NONE,
            nested=nested is dict,
            key=key if given is _NONE and kinds.get(key) is int else None,
            stamp=stamp,
        )

    def take(self, record: dict, line: str) -> bool:
        """Queue one record as the SDK path would; False (nothing done) to leave it to it.

        `event_payload(record, id_columns)` for a record of a known shape, then the
        sink's duplicate memory and batch; the common case in a few lookups, the rest
        by `payload`.
        """
        keys = tuple(record)
        types = tuple(map(type, record.values()))
        shape = self.shapes.get((keys, types))
        if type(shape) is not _Shape:
            shape = self.resolve(record, keys, types)
            if shape is None:
                return False
        if shape.judged or not line.isascii() or "\\u" in line:
            payload = self.payload(record, shape)  # values to judge, or text to look at
        else:  # ASCII without escapes: no NUL, no surrogate in any text
            payload = self.payload(record, shape, plain=True)
        if payload is None:
            return False
        if payload is _ELSEWHERE:  # another share's event: whatever it holds, skipped
            self.elsewhere += 1
        else:
            try:
                data = _encode(payload)
            except (ValueError, TypeError, OverflowError, msgspec.EncodeError):
                return False  # the SDK path words the rejection
            # From here on the record is taken: counted, and queued or rejected.
            tid = payload["transaction_id"]
            # A derived id ("tl-" and hex digits) is its own repr between quotes.
            item = Item(
                record, payload, f"event '{tid}'" if shape.given is None else f"event {tid!r}", data
            )
            conflict, earlier = self.check(
                hash((payload["external_subscription_id"], tid)), hash(data), data
            )
            if conflict:
                self.sink.reject_duplicate(item, earlier)
            else:
                queued = self.queued
                if queued is None:  # the batch's list, until the next drain
                    queued = self.queued = self.sink._get_context(record).setdefault("records", [])
                queued.append(item)
        self.count += 1
        if self.count >= self.stop:
            self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Every `AGE_CHECK_EVERY` records, and when the batch is full: counts, age, drain.

        Every stream's plan is flushed first: the age check may drain every sink.
        """
        sink = self.sink
        self.fast.flush()
        self.target._handle_max_record_age()
        room = self.limit - sink.current_size
        if room <= 0:
            self.target.logger.info(
                "Target sink for '%s' is full. Current size is '%s'. Draining...",
                sink.stream_name,
                sink.current_size,
            )
            self.target.drain_one(sink)
            room = self.limit - sink.current_size
        self.stop = max(1, min(AGE_CHECK_EVERY, room))

    def flush(self) -> None:
        """Add the records taken since the last flush to the stream's counts.

        Called before anything else may read or drain the sink, so the batch's list is
        forgotten too, and the next record taken runs `checkpoint`.
        """
        self.queued = None
        self.stop = 0
        if self.count:
            sink = self.sink
            sink.tally_record_read(self.count)
            sink.stats.add("received", self.count)
            sink.record_counter_metric.increment(self.count)
            self.count = 0
        if self.elsewhere:
            self.sink.stats.add("skipped_by_partition", self.elsewhere)
            self.elsewhere = 0

    def payload(self, record: dict, shape: _Shape, *, plain: bool = False) -> dict | None:
        """`event_payload(record, id_columns)` for a record of a known shape; None: refused.

        `plain`: the record's line is ASCII without escapes (no text to look at).
        """
        texts, columns, values, judged, _, subscription_int, given, *_ = shape
        if not plain:
            for key, judge in judged:
                if not judge.is_valid(record[key]):
                    return None
            if texts is not None:
                joined = "".join(texts(record))
                if "\x00" in joined or (not joined.isascii() and _has_surrogate(joined)):
                    return None
        raw = record["code"]
        known = self.codes.get(raw)
        if known is None:
            known = self.code(raw)
            if known is None:
                return None
        code, head = known
        subscription = record["external_subscription_id"]
        if subscription_int:
            subscription = str(subscription)
        elif not subscription.strip():
            return None
        if shape.key is not None:  # the common key: one integer column
            text = f'{head}"{record[shape.key]}"}}}}'
            tid = "tl-" + _sha256(text.encode("utf-8")).hexdigest()[:40]
        elif given is None:
            tid = self.derive(code, record)
            if tid is None:
                return None
        else:
            tid = record["transaction_id"]
            if given is int:
                tid = str(tid)
            elif not tid.strip():
                return None
        if self.share is not None and not in_partition(tid, *self.share):
            return _ELSEWHERE
        moment = record["timestamp"]
        if shape.stamp is str and len(moment) >= 20:  # `Timestamps.epoch`'s first lines
            times = self.times
            minute = times.minutes.get(moment[:16])
            second = _SECONDS.get(moment[16:19])
            fraction = times.fractions.get(moment[19:])
            if minute is None or second is None or fraction is None:
                timestamp = self.stamp(moment)
            elif fraction:
                timestamp = f"{minute + second}{fraction}"
            else:
                timestamp = minute + second
        else:
            timestamp = self.stamp(moment)
        if timestamp is None:
            return None
        # Keys in sorted order (properties too, unless nested): `_encode` keeps it.
        payload: dict[str, t.Any] = {"code": code, "external_subscription_id": subscription}
        if shape.amount:
            try:
                payload["precise_total_amount_cents"] = decimal_text(
                    record["precise_total_amount_cents"]
                )
            except ValueError:
                return None
        if columns:
            payload["properties"] = dict(zip(columns, values(record)))  # noqa: B905
        elif shape.nested:
            properties = record["properties"]
            for key, value in properties.items():
                if not (value is None or _scalar(value)) or not _plain_key(key):
                    return None
            if properties:
                payload["properties"] = dict(sorted(properties.items()))
        payload["timestamp"] = timestamp
        payload["transaction_id"] = tid
        return payload

    def code(self, raw: str | int) -> tuple[str, str] | None:
        """A code's text and the start of the text its derived ids hash; None: refused."""
        code = raw if isinstance(raw, str) else str(raw)
        if not code.strip():
            return None
        if len(self.codes) >= SHAPES:
            self.codes.clear()
        self.codes[raw] = found = (
            code,
            f'{{"code":{_json_quote(code)},"keys":{{{self.id_columns[0][1]}:'
            if self.id_columns
            else "",
        )
        return found

    def stamp(self, moment: t.Any) -> int | str | None:
        """`to_epoch(moment)` for the payload; None when it would refuse."""
        kind = type(moment)
        try:
            if kind is str and len(moment) >= 20:
                return self.times.epoch(moment)
            if kind is int and 0 <= moment < MAX_EPOCH_SECONDS:
                return moment
            if kind is str and not moment.strip():
                return None
            return to_epoch(moment)
        except ValueError:
            return None

    def derive(self, code: str, record: dict) -> str | None:
        """`events.transaction_id(code, record, id_columns)`; None when it would refuse."""
        parts = []
        for column, quoted in self.id_columns:
            value = record.get(column)
            if value is None or (type(value) is str and not value.strip()):
                return None
            parts.append(f"{quoted}:{_json_quote(key_text(value))}")
        text = f'{{"code":{_json_quote(code)},"keys":{{{",".join(parts)}}}}}'
        return "tl-" + _sha256(text.encode("utf-8")).hexdigest()[:40]


_UNKNOWN: t.Any = object()
_ELSEWHERE: dict = {}  # `payload`'s answer for an event of another share
#: Record shapes a plan remembers before it starts afresh.
SHAPES = 1_000


class FastEvents:
    """Chooses, per stream, whether its RECORD lines can take the fast path."""

    def __init__(self, target: TargetLago) -> None:
        self.target = target
        self.plans: dict[str, _Plan | None] = {}

    def reset(self) -> None:
        """Forget every decision (after a SCHEMA message: sinks and maps may change)."""
        self.flush()
        self.plans.clear()

    def flush(self) -> None:
        """Bring every stream's counts up to date."""
        for plan in self.plans.values():
            if plan is not None:
                plan.flush()

    def plan(self, stream: str) -> _Plan | None:
        """The fast path of a stream, or None when its records must go the SDK's way."""
        if stream not in self.plans:
            self.plans[stream] = self._make(stream)
        return self.plans[stream]

    def _make(self, stream: str) -> _Plan | None:
        target = self.target
        maps = target.mapper.stream_maps.get(stream) or []
        sink = target._sinks_active.get(stream)
        eligible = (
            ENABLED
            and not target.dry_run
            # A target that changes the SDK's per-record handling keeps it for every record.
            and type(target)._process_record_message is Target._process_record_message
            and len(maps) == 1
            and type(maps[0]) is SameRecordTransform
            and maps[0].stream_alias == stream
            and not maps[0].flattening_enabled
            and type(sink) is EventsSink
            and not sink.include_sdc_metadata_properties
            and not sink.verify  # keeps every check of the SDK path, but is rare: leave it
            and (sink._validator is None or _compiled(sink._validator))
        )
        if not eligible:
            return None
        return _Plan(target, t.cast("EventsSink", sink), self)


def _compiled(validator: t.Any) -> bool:
    return isinstance(validator, RecordValidator) and validator.compiled


def read_lines(
    reader: LineReader,
    lines: t.Iterable[str],
    callbacks: dict[str, Callable[[dict], None]],
    fast: FastEvents,
) -> t.Counter[str]:
    """The SDK reader's loop, with RECORD lines of fast streams taken by `fast`.

    Every other line is read and dispatched exactly as `GenericSingerReader.process_lines`
    does (decoded again by the reader, with its exact decimals).
    """
    counts: dict[str, int] = defaultdict(int)
    decode = DECODER.decode
    plans = fast.plans
    taken = 0
    try:
        for line in lines:
            try:
                message = decode(line)
            except (ValueError, RecursionError):  # the reader words it (or a dead letter)
                message = None
            if message is not None and message.type == "RECORD":
                stream, record = message.stream, message.record
                if stream is not None and record is not None:
                    plan = plans[stream] if stream in plans else fast.plan(stream)
                    if plan is not None and plan.take(record, line):
                        taken += 1
                        continue
            reader._current_message = line
            reader.line_number += taken
            counts["RECORD"] += taken
            taken = 0
            fast.flush()
            line_dict = reader.deserialize_json(line)
            reader.assert_line_requires(line_dict, requires={"type"})
            record_type = line_dict["type"]
            if callback := callbacks.get(record_type):
                callback(line_dict)
            else:
                reader._process_unknown_message(line_dict)
            if record_type == "SCHEMA":
                fast.reset()
            counts[record_type] += 1
    finally:
        reader.line_number += taken
        counts["RECORD"] += taken
        fast.flush()
    return t.Counter(**counts)
