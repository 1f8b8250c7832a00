"""`events`: usage events, `POST /events/batch`, at most 100, settled index by index."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import typing as t
import urllib.parse
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from target_lago.mapping import (
    SCALARS,
    RecordRejected,
    decimal_text,
    iso_moment,
    json_default,
    json_object,
    missing,
    plain,
    to_epoch,
    unsendable,
)
from target_lago.sinks import Item, LagoSink, StreamSetupError

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse


# Fields of tap-lago records that the API computes itself and a write must not carry.
EVENT_READ_ONLY = frozenset(
    {"lago_id", "lago_customer_id", "lago_subscription_id", "created_at", "updated_at"}
)
# Lago's usage guide keys an event by customer; lago-api v1.51.0 drops the field, so it
# names the subscription to resolve and is never sent (nor made a property).
BY_CUSTOMER = frozenset({"external_customer_id"})
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
_NOT_PROPERTIES = EVENT_FIELDS | EVENT_READ_ONLY | BY_CUSTOMER
_quote = json.encoder.encode_basestring_ascii


def transaction_id(code: str, record: Mapping[str, Any], columns: Sequence[str]) -> str:
    """Derive a stable transaction id for an event record that has none.

    The id is a hash of the event's `code` and the named columns (the stream's key
    properties, or the `transaction_id_columns` setting), names and values. Nothing else
    enters it: adding a column or renaming the stream changes no id, and the same row gives
    the same id in every run and process. Values are hashed in one spelling each
    (`key_text`): 1, 1.0 and "1" are one id, and so are the same moment written with `Z`
    or `+00:00`. The code keeps two tables with overlapping row ids for different metrics
    apart.

    Args:
        code: The event's billable metric code.
        record: The record.
        columns: The columns naming the row (at least one).

    Returns:
        "tl-" followed by 40 hex characters.

    Raises:
        RecordRejected: When a named column is missing or null.
    """
    if not columns:
        raise RecordRejected(
            {"transaction_id": ["value_is_mandatory"]},
            "no transaction_id, and no columns to derive it from (the stream's key "
            "properties or the transaction_id_columns setting)",
        )
    absent = [column for column in columns if missing(record.get(column))]
    if absent:
        raise RecordRejected(
            {column: ["value_is_mandatory"] for column in absent},
            f"no transaction_id, and the columns that derive it ({', '.join(columns)}) "
            f"are missing or empty: {', '.join(absent)}",
        )
    keys = ",".join(
        f"{_quote(column)}:{_quote(key_text(record[column]))}" for column in sorted(set(columns))
    )
    text = f'{{"code":{_quote(code)},"keys":{{{keys}}}}}'
    return "tl-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def key_text(value: Any) -> str:
    """One spelling of a key value, so that a change of type or format keeps the id."""
    kind = type(value)
    if kind is str:
        moment = iso_moment(value)
        return value if moment is None else moment
    if kind is int:
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        number = decimal.Decimal(repr(value) if isinstance(value, float) else value)
        if number.is_finite() and number == number.to_integral_value():
            return str(int(number))
        return format(number.normalize(), "f") if number.is_finite() else str(number)
    if isinstance(value, (dt.datetime, dt.date)):
        return iso_moment(value.isoformat()) or value.isoformat()
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"))


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
        if missing(value):
            by_customer = field == "external_subscription_id" and not missing(
                record.get("external_customer_id")
            )  # resolved to the customer's active subscription by the sink
            if field != "transaction_id" and not by_customer:
                details[field] = ["value_is_mandatory"]
                reasons.append(f"'{field}' is missing or empty")
        elif (type(value) is str and "\x00" not in value) or type(value) is int:
            payload[field] = str(value)
        elif type(value) is str:
            details[field] = ["value_is_invalid"]
            reasons.append(f"'{field}' holds a NUL character, which Lago cannot store")
        else:
            details[field] = ["invalid_type"]
            reasons.append(f"'{field}' must be a string, got {type(value).__name__}")
    if "transaction_id" not in payload and "code" in payload:
        try:
            payload["transaction_id"] = transaction_id(payload["code"], record, id_columns)
        except RecordRejected as exc:
            details.update(exc.details)
            reasons.append(exc.message)
    if missing(record.get("timestamp")):
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
        properties = json_object(properties)
    if isinstance(properties, Mapping):
        problem = unsendable(properties, "properties")
        if problem is None and properties:  # {} and no properties are one event
            payload["properties"] = plain(dict(properties))
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
                key: value if type(value) in SCALARS else plain(value)
                for key, value in columns.items()
            }
    if problem is not None:
        details[problem[0]] = ["value_is_invalid"]
        reasons.append(problem[1])
    if details:
        raise RecordRejected(details, "; ".join(reasons), payload.get("transaction_id"))
    return payload


ALREADY_EXISTS = {"transaction_id": ["value_already_exist"]}


def in_partition(transaction_id: str | None, index: int, count: int) -> bool:
    """Whether share `index` of `count` (1-based) holds an event, by its transaction id.

    CRC-32 of the id's UTF-8, modulo `count`: the same in every process and version. A
    record rejected before it has an id belongs to the first share, so that exactly one
    process dead-letters it.
    """
    if transaction_id is None:
        return index == 1
    return zlib.crc32(transaction_id.encode("utf-8", "surrogatepass")) % count == index - 1



class _Acknowledged(msgspec.Struct):
    lago_id: str | None = ""  # "": absent (not null)


class _BatchAnswer(msgspec.Struct):
    events: list[_Acknowledged] = []


_ANSWER = msgspec.json.Decoder(_BatchAnswer)


def unverified_acknowledgement(content: bytes) -> bool:
    """Whether an acknowledged batch came from a ClickHouse event store.

    Such a store answers a new event and a duplicate of a stored one alike, with
    `lago_id: null`; the Postgres store gives every stored event its id. Only the
    events' own `lago_id` is read (msgspec skips the rest faster than a scan for it).
    """
    try:
        answer = _ANSWER.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return any(event.lago_id is None for event in answer.events)


#: Seconds of clock uncertainty when telling whether a stored event is this request's
#: write: `created_at` and the Date header both have whole seconds.
CLOCK_SLACK = 1.0


class SeenEvents:
    """Fingerprints of the events of a run, by (subscription, transaction id).

    One for the whole run: every events stream, across schema changes.

    Bounded and compact: two generations of up to `limit / 2` events, each a pair of
    64-bit tables (key hash, content hash) probed in place, about 32 bytes an event (1,000,000
    events: 32 MB); and the JSON of the newest `kept` events, to show an earlier value in
    a message.
    """

    def __init__(self, limit: int = 1_000_000, kept: int = 50_000) -> None:
        self._half = max(1, limit // 2)
        self._mask = (1 << max(4, (2 * self._half - 1).bit_length())) - 1  # half full at most
        self._kept_half = max(1, kept // 2)
        self._new = self._table()
        self._old: tuple[memoryview, memoryview] | None = None
        self._count = 0
        self._data_new: dict[int, bytes] = {}
        self._data_old: dict[int, bytes] = {}

    def _table(self) -> tuple[memoryview, memoryview]:
        # Zeroed memory the system hands out as it is written: a short run costs little.
        size = 8 * (self._mask + 1)
        return memoryview(bytearray(size)).cast("q"), memoryview(bytearray(size)).cast("q")

    def conflict(self, item: Item) -> tuple[bool, bytes | None]:
        """Remember an event; (True, earlier JSON or None) when its key came with other content."""
        payload = item.payload
        key = hash((payload.get("external_subscription_id"), payload["transaction_id"]))
        return self.check(key, hash(item.data), item.data)

    def check(self, key: int, fingerprint: int, data: bytes) -> tuple[bool, bytes | None]:
        """`conflict` of an event's key hash, content hash and JSON."""
        key = key or 1  # 0 marks a free slot
        mask = self._mask
        keys, prints = self._new
        slot = key & mask
        while True:
            found = keys[slot]
            if found == key:
                return self._verdict(key, prints[slot] == fingerprint)
            if not found:
                break
            slot = (slot + 1) & mask
        if self._old is not None:
            old_keys, old_prints = self._old
            other = key & mask
            while found := old_keys[other]:
                if found == key:
                    return self._verdict(key, old_prints[other] == fingerprint)
                other = (other + 1) & mask
        if self._count >= self._half:
            self._old, self._new, self._count = self._new, self._table(), 0
            keys, prints = self._new
            slot = key & mask
        keys[slot] = key
        prints[slot] = fingerprint
        self._count += 1
        if len(self._data_new) >= self._kept_half:
            self._data_old, self._data_new = self._data_new, {}
        self._data_new[key] = data
        return False, None

    def _verdict(self, key: int, same: bool) -> tuple[bool, bytes | None]:
        if same:
            return False, None
        return True, self._data_new.get(key) or self._data_old.get(key)


class EventsSink(LagoSink):
    """`POST /events/batch`: at most 100 events, settled index by index on a 422."""

    action = "events"
    endpoint = "/events/batch"
    root_key = "events"
    batched = True
    rank = 90
    self_parsed = ("timestamp", "properties")
    partitioned = True

    def setup(self) -> None:
        """Refuse a stream whose rows would get no stable transaction id.

        Raises:
            StreamSetupError: When the stream has no `transaction_id` column, no key
                properties and no `transaction_id_columns` entry.
        """
        self.id_columns = self.identifying_columns()
        if not self.id_columns and "transaction_id" not in (self.schema.get("properties") or {}):
            name = self.stream_name
            msg = (
                f"Stream '{name}' has no transaction_id column and no key properties, "
                "so its rows cannot get stable transaction ids (a replay would bill them "
                "twice). Add a transaction_id column, declare the stream's key properties "
                "upstream, or name the columns that identify a row in the "
                f'transaction_id_columns setting, e.g. {{"{name}": ["id"]}}.'
            )
            raise StreamSetupError(msg)
        self.verify = bool(self.config.get("verify_duplicates", False))
        # One memory for every events stream of the run, kept across schema changes.
        self._seen = self.lago.seen_events

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to an event body.

        An event keyed by customer only (Lago's usage guide) gets the customer's one
        active subscription (`TargetLago.subscription_of`, one GET per customer a run).
        """
        payload = event_payload(record, self.id_columns)
        if "external_subscription_id" not in payload:
            try:
                customer = str(record["external_customer_id"])
                payload["external_subscription_id"] = self.lago.subscription_of(customer)
            except RecordRejected as exc:
                exc.transaction_id = payload.get("transaction_id")
                raise
        return payload, f"event {payload['transaction_id']!r}"

    def admit(self, item: Item) -> bool:
        """Skip another share's event; dead-letter a repeated event key with other content."""
        if not self.in_share(item.payload["transaction_id"]):
            self.stats.add("skipped_by_partition")
            return False
        conflict, earlier = self._seen.conflict(item)
        if conflict:
            self.reject_duplicate(item, earlier)
        return not conflict

    def in_share(self, transaction_id: str | None) -> bool:
        """Whether this process's `partition` holds an event (without an id: the first)."""
        share = self.lago.partition
        if share is None:
            return True
        return in_partition(transaction_id, *share)

    def reject_duplicate(self, item: Item, earlier: bytes | None) -> None:
        """Dead-letter an event whose key came earlier in the run with other content."""
        before = earlier.decode() if earlier is not None else "(no longer in memory)"
        self.reject(
            item.record,
            None,
            "conflicting_duplicate",
            {"transaction_id": ["conflicting_duplicate"]},
            f"{item.key} of subscription "
            f"{item.payload.get('external_subscription_id')!r} came earlier in this run "
            f"with other content: earlier {before}; this record {item.data.decode()}. "
            "Lago keeps one event per transaction_id: give this row its own "
            "transaction_id, or fix the duplicate upstream.",
            payload=item.payload,
        )

    @property
    def max_size(self) -> int:
        """Records drained at once: one request of `batch_size` per request in flight.

        Draining fewer, larger batches saves the SDK's per-drain work (logs, metrics);
        each request still carries at most `batch_size` events.
        """
        return self._max_size * self.lago.inflight.limit

    def deliver(self, items: list[Item]) -> None:
        """Hand the drained records to the workers, `batch_size` per request.

        Returns once they are queued (a bounded backlog); STATE waits for their
        acknowledgement (see `TargetLago`).
        """
        size = self._max_size
        for start in range(0, len(items), size):
            self.lago.inflight.submit(self._deliver_batch, items[start : start + size])

    def _deliver_batch(self, items: list[Item]) -> None:
        # Lago flags a repeated transaction_id inside one batch as already existing
        # even for another subscription, so such events go in a later request.
        if len({item.payload["transaction_id"] for item in items}) == len(items):
            self._settle(items)  # the common case: every id once
            return
        rounds: list[list[Item]] = []
        seen: list[set[str]] = []
        for item in items:
            tid = item.payload["transaction_id"]
            for round_items, ids in zip(rounds, seen, strict=True):
                if tid not in ids:
                    round_items.append(item)
                    ids.add(tid)
                    break
            else:
                rounds.append([item])
                seen.append({tid})
        for round_items in rounds:
            self._settle(round_items)

    def _settle(self, items: list[Item]) -> None:
        pending = items
        # Every 422 answer settles at least one index, so len(items) + 1 posts suffice.
        for _ in range(len(items) + 1):
            body = b'{"events":[' + b",".join([item.data for item in pending]) + b"]}"
            response = self.lago.client.post(self.endpoint, body)
            if response.ok:
                # A ClickHouse store answers a new event and a stored one alike.
                unverified = unverified_acknowledgement(response.content)
                self.stats.add("accepted_unverified" if unverified else "delivered", len(pending))
                return
            details = response.error_details
            by_index = (
                response.status == 422
                and isinstance(details, dict)
                and bool(details)
                and all(str(key).isdigit() and int(key) < len(pending) for key in details)
            )
            if not by_index:
                for item in pending:
                    self.reject_response(item, response, details or response.body)
                return
            retry: list[Item] = []
            stored: list[Item] = []
            for index, item in enumerate(pending):
                errors = details.get(str(index))
                if errors is None:
                    retry.append(item)
                elif errors == ALREADY_EXISTS:
                    stored.append(item)
                else:
                    self.reject_response(item, response, errors)
            if stored:
                self._settle_stored(stored, response, everything=len(stored) == len(pending))
            if not retry:
                return
            pending = retry
        msg = f"events batch of stream '{self.stream_name}' did not settle"
        raise RuntimeError(msg)

    def _settle_stored(self, items: list[Item], response: LagoResponse, everything: bool) -> None:
        """Count events Lago already holds: stored earlier, or by this very request.

        A batch is atomic, so an earlier attempt whose answer was lost stored either all
        of its events or none: only when every event is reported as existing can the
        earlier attempt be the writer, and one stored event tells which.
        """
        ours: bool | None = False
        if response.replayed and everything:
            found = self.stored_event(items[0])
            ours = found is not None and _created_since(found, response.server_sent_at)
        for item in items:
            if self.verify:
                found = self.stored_event(item)
                if found is not None and not same_event(found, item.payload):
                    self.reject_conflict(item, found)
                    continue
            self.stats.add("delivered" if ours else "already_present")

    def stored_event(self, item: Item) -> dict | None:
        """The event Lago holds for this item's subscription and transaction id (a GET)."""
        payload = item.payload
        tid = payload["transaction_id"]
        sub = payload.get("external_subscription_id")
        client = self.lago.client
        response = client.get(f"/events/{urllib.parse.quote(tid, safe='')}")
        event = (response.body or {}).get("event") if response.ok else None
        if isinstance(event, dict) and event.get("external_subscription_id") == sub:
            return event
        # Another subscription's event with this id: look at this subscription's events
        # at this very time.
        moment = _moment(payload.get("timestamp"))
        if moment is None or sub is None:
            return None
        params = {
            "external_subscription_id": sub,
            "code": str(payload.get("code")),
            "timestamp_from": _iso(moment),
            "timestamp_to": _iso(moment + decimal.Decimal("0.001")),
            "per_page": "100",
        }
        listed = client.get("/events", params)
        events = (listed.body or {}).get("events") if listed.ok else None
        for candidate in events or []:
            if isinstance(candidate, dict) and candidate.get("transaction_id") == tid:
                return candidate
        return None

    def reject_conflict(self, item: Item, stored: dict) -> None:
        """Dead-letter an event whose transaction id Lago holds with other content."""
        self.reject(
            item.record,
            422,
            "conflicting_duplicate",
            {"transaction_id": ["conflicting_duplicate"], "stored": stored},
            f"{item.key} of subscription {item.payload.get('external_subscription_id')!r} "
            f"is stored in Lago with other content: stored "
            f"{json.dumps(_comparable_stored(stored), default=json_default, sort_keys=True)}; "
            f"this record {item.data.decode()}. Lago keeps the stored one: give this row "
            "its own transaction_id, or fix it upstream.",
            payload=item.payload,
        )


def _moment(value: t.Any) -> decimal.Decimal | None:
    """Epoch seconds of a sent or stored timestamp."""
    if value is None:
        return None
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return decimal.Decimal(str(parsed.timestamp()))
    try:
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return None


def _iso(seconds: decimal.Decimal) -> str:
    moment = dt.datetime.fromtimestamp(float(seconds), tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _created_since(event: dict, since: float) -> bool:
    """Whether Lago stored the event at or after `since` (server clock, give or take)."""
    created = _moment(event.get("created_at"))
    return created is not None and float(created) >= since - CLOCK_SLACK


def _number_or_text(value: t.Any) -> t.Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, decimal.Decimal)):
        return decimal.Decimal(str(value)).normalize()
    if isinstance(value, dict):
        return {str(k): _number_or_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_number_or_text(v) for v in value]
    return value


def _comparable_stored(event: dict) -> dict:
    return {
        key: event.get(key)
        for key in ("code", "timestamp", "properties", "precise_total_amount_cents")
    }


def same_event(stored: dict, sent: dict) -> bool:
    """Whether a stored event has the content of a sent body (code, time, properties, amount).

    Times are compared to the millisecond (what Lago returns), numbers by value.
    """
    if stored.get("code") != sent.get("code"):
        return False
    stored_at, sent_at = _moment(stored.get("timestamp")), _moment(sent.get("timestamp"))
    if stored_at is None or sent_at is None:
        return False
    if abs(stored_at - sent_at) >= decimal.Decimal("0.001"):
        return False
    if _number_or_text(stored.get("properties") or {}) != _number_or_text(
        sent.get("properties") or {}
    ):
        return False
    stored_amount = stored.get("precise_total_amount_cents")
    sent_amount = sent.get("precise_total_amount_cents")
    if stored_amount is None or sent_amount is None:
        return stored_amount is None and sent_amount is None
    return decimal.Decimal(str(stored_amount)) == decimal.Decimal(str(sent_amount))
