"""One sink per Lago action, over a shared base that validates, maps and settles."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import typing as t
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass

import msgspec
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink

from target_lago.client import encode
from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    customer_payload,
    event_payload,
    json_default,
    subscription_payload,
    unsendable,
)
from target_lago.validation import RecordValidator

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse
    from target_lago.target import TargetLago

DRY_RUN_SHOWN = 5
"""Payloads printed per stream in a dry run."""
ALREADY_EXISTS = {"transaction_id": ["value_already_exist"]}


class _Acknowledged(msgspec.Struct):
    lago_id: str | None = None


class _BatchAnswer(msgspec.Struct):
    events: list[_Acknowledged] = []


_ANSWER = msgspec.json.Decoder(_BatchAnswer)


def unverified_acknowledgement(content: bytes) -> bool:
    """Whether an acknowledged batch came from a ClickHouse event store.

    Such a store answers a new event and a duplicate of a stored one alike, with
    `lago_id: null`; the Postgres store gives every stored event its id.
    """
    try:
        answer = _ANSWER.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return any(event.lago_id is None for event in answer.events)
#: Seconds of clock uncertainty when telling whether a stored event is this request's
#: write: `created_at` and the Date header both have whole seconds.
CLOCK_SLACK = 1.0


class StreamSetupError(Exception):
    """A stream whose records cannot be written safely as declared (fatal at its SCHEMA)."""


@dataclass
class Item:
    """A record, the body built from it and that body as JSON."""

    record: dict
    payload: dict
    key: str
    data: bytes = b""


class LagoSink(BatchSink):
    """Base sink: validation problems and mapping errors become dead letters.

    Subclasses declare `action`, `endpoint`, `root_key` and `rank` (writes of a lower
    rank are flushed first) and implement `build` and `deliver`.
    """

    action: t.ClassVar[str]
    endpoint: t.ClassVar[str]
    root_key: t.ClassVar[str]
    rank: t.ClassVar[int]
    #: Fields the mapping reads itself, in any form it accepts: their declared types in
    #: the incoming schema are not enforced (stream maps type a dict expression as string).
    self_parsed: t.ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        target: TargetLago,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        """Create the sink and its counters.

        Args:
            target: The running target (client, pool, report).
            stream_name: Stream name.
            schema: Stream schema.
            key_properties: Stream key properties.
        """
        super().__init__(target, stream_name, schema, key_properties)
        self.lago = target
        self.stats = target.report.stream(stream_name, self.action)
        self._problem: tuple[dict, str] | None = None
        self._shown = 0
        self._warned_ignored = False
        self._max_size = int(self.config.get("batch_size", 100))  # read once: asked per record

    def get_validator(self) -> RecordValidator | None:
        """Validate records against the stream's schema, less the fields we parse ourselves.

        The validator is compiled (see `target_lago.validation`): jsonschema itself
        only judges records the compiled checks cannot accept.
        """
        if not self.validate_schema:
            return None
        properties = dict(self.schema.get("properties") or {})
        for name in self.self_parsed:
            if name in properties:
                properties[name] = {}
        schema = {**self.schema, "properties": properties}
        return RecordValidator(schema, validate_formats=self.validate_field_string_format)

    @property
    def draining(self) -> bool:
        """True between the SDK's start of a drain of this sink and its end."""
        return self._context_draining is not None

    @property
    def max_size(self) -> int:
        """Records per batch (the `batch_size` setting)."""
        return self._max_size

    # Record checks: a bad row becomes a dead letter instead of stopping the run.

    def _validate_and_parse(self, record: dict) -> dict:
        self._problem = None
        if self._validator is not None:
            try:
                self._validator.validate(record)
            except InvalidRecord as exc:
                field = getattr(exc, "field", None) or "record"
                self._problem = (
                    {field: ["schema_validation"]},
                    f"does not match the stream's schema: {exc.error_message}",
                )
            except RecursionError:
                self._problem = (
                    {"record": ["value_is_invalid"]},
                    "is nested too deeply to be checked against the stream's schema",
                )
        # Timestamps are read by the mapping (any accepted form), never by the SDK,
        # so an unparseable one rejects its record instead of stopping the run.
        return record

    def _singer_validate_message(self, record: dict) -> None:
        missing = [key for key in self.key_properties if key not in record]
        if missing and self._problem is None:
            self._problem = (
                {key: ["value_is_mandatory"] for key in missing},
                f"key properties {missing} are missing",
            )

    def process_record(self, record: dict, context: dict) -> None:
        """Map one record; keep its payload for the batch or reject it.

        Args:
            record: The record (after stream maps).
            context: Batch context.
        """
        self.stats.add("received")
        try:
            if self._problem is not None:
                raise RecordRejected(*self._problem)
            payload, key = self.build(record)
            item = Item(record, payload, key, _encode(payload))
        except RecordRejected as exc:
            tid = exc.transaction_id
            self.reject(
                record,
                None,
                "invalid_record",
                exc.details,
                exc.message,
                payload={"transaction_id": tid} if tid else None,
            )
            return
        except RecordSkipped as exc:
            self.stats.add("skipped")
            self.logger.info("Skipped a record of stream '%s': %s", self.stream_name, exc)
            return
        if not self.admit(item):
            return
        if self.lago.dry_run:
            self.stats.add("delivered")
            if self._shown < DRY_RUN_SHOWN:
                self._shown += 1
                self.logger.info(
                    "dry run: would POST %s %s",
                    self.endpoint,
                    json.dumps({self.root_key: payload}, default=json_default),
                )
            return
        context.setdefault("records", []).append(item)

    def admit(self, item: Item) -> bool:
        """Whether a mapped record goes on to Lago (False: it was settled here)."""
        return True

    def warn_ignored(self, columns: list[str]) -> None:
        """Warn once per stream about columns Lago's write endpoint does not take."""
        if columns and not self._warned_ignored:
            self._warned_ignored = True
            self.logger.warning(
                "Stream '%s': columns %s are not fields of POST %s and are not sent",
                self.stream_name,
                sorted(columns),
                self.endpoint,
            )

    def reject(
        self,
        record: dict,
        status: int | None,
        code: str | None,
        details: t.Any,
        message: str,
        *,
        payload: dict | None = None,
    ) -> None:
        """Dead-letter one record.

        Args:
            record: The record.
            status: Lago's HTTP status, or None when never sent.
            code: Lago's error code.
            details: Lago's error details.
            message: Reason naming the field.
            payload: The body built from the record, when there is one.
        """
        self.lago.report.reject(
            self.stats,
            record,
            http_status=status,
            error_code=code,
            details=details,
            message=message,
            key_properties=list(self.key_properties or []),
            transaction_id=(payload or {}).get("transaction_id"),
        )

    def reject_response(self, item: Item, response: LagoResponse, details: t.Any) -> None:
        """Dead-letter a record Lago refused."""
        self.reject(
            item.record,
            response.status,
            response.error_code,
            details,
            f"Lago refused {item.key}: HTTP {response.status} {response.error_code} "
            f"{json.dumps(details, default=json_default)}",
            payload=item.payload,
        )

    def process_batch(self, context: dict) -> None:
        """Flush lower-ranked streams, then deliver this batch.

        Args:
            context: Batch context holding the mapped items.
        """
        items: list[Item] = context.get("records", [])
        self.lago.flush_before(self.rank)
        if items:
            self.deliver(items)

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to its body and a key naming it in messages."""
        raise NotImplementedError

    def deliver(self, items: list[Item]) -> None:
        """Send mapped items to Lago."""
        raise NotImplementedError


class _OneByOneSink(LagoSink):
    """Customers and subscriptions: one request per record, records of one key in order.

    Different keys go out in parallel (up to `max_in_flight`); the batch is fully
    acknowledged before `process_batch` returns, so later streams see it applied.
    """

    def deliver(self, items: list[Item]) -> None:
        groups: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            groups[item.key].append(item)
        self.lago.inflight.run_all(self._deliver_group, self.order(list(groups.values())))

    def order(self, groups: list[list[Item]]) -> list[list[Item]]:
        """Order records within each key group (default: as received)."""
        return groups

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            body = b'{"' + self.root_key.encode() + b'":' + item.data + b"}"
            response = self.lago.client.post(self.endpoint, body)
            if response.ok:
                self.settle_ok(item, response)
            else:
                details = response.error_details
                self.reject_response(item, response, details if details else response.body)

    def settle_ok(self, item: Item, response: LagoResponse) -> None:
        """Count an acknowledged record."""
        self.stats.add("delivered")


class CustomersSink(_OneByOneSink):
    """`POST /customers`: create or update the customer with this `external_id`."""

    action = "customers"
    endpoint = "/customers"
    root_key = "customer"
    rank = 0

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a customer body."""
        payload, ignored = customer_payload(record)
        self.warn_ignored(ignored)
        return payload, f"customer {payload['external_id']!r}"


class SubscriptionsSink(_OneByOneSink):
    """`POST /subscriptions`: assign a plan; the same plan again is a no-op."""

    action = "subscriptions"
    endpoint = "/subscriptions"
    root_key = "subscription"
    rank = 1
    self_parsed = ("subscription_at", "ending_at")

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a subscription body."""
        payload, ignored = subscription_payload(record)
        self.warn_ignored(ignored)
        return payload, f"subscription {payload['external_id']!r}"

    def order(self, groups: list[list[Item]]) -> list[list[Item]]:
        """Send an active subscription before a pending one of the same external_id."""
        return [
            sorted(group, key=lambda item: item.record.get("status") == "pending")
            for group in groups
        ]

    def settle_ok(self, item: Item, response: LagoResponse) -> None:
        """Count a re-post that returned an older subscription as already present."""
        body = response.body if isinstance(response.body, dict) else {}
        created = (body.get("subscription") or {}).get("created_at")
        if self.lago.existed_before(created, response.server_time):
            self.stats.add("already_present")
        else:
            self.stats.add("delivered")


class SeenEvents:
    """Fingerprints of the events of a run, by (subscription, transaction id).

    One for the whole run: every events stream, across schema changes.

    Bounded: two generations of `limit / 2` fingerprints each (about 100 bytes an event),
    and the JSON of the newest `kept` events, to show an earlier value in a message.
    """

    def __init__(self, limit: int = 1_000_000, kept: int = 50_000) -> None:
        self._half = max(1, limit // 2)
        self._kept_half = max(1, kept // 2)
        self._new: dict[int, int] = {}
        self._old: dict[int, int] = {}
        self._data_new: dict[int, bytes] = {}
        self._data_old: dict[int, bytes] = {}

    def conflict(self, item: Item) -> tuple[bool, bytes | None]:
        """Remember an event; (True, earlier JSON or None) when its key came with other content."""
        payload = item.payload
        key = hash((payload.get("external_subscription_id"), payload["transaction_id"]))
        fingerprint = hash(item.data)
        earlier = self._new.get(key)
        if earlier is None:
            earlier = self._old.get(key)
        if earlier is not None:
            if earlier == fingerprint:
                return False, None
            return True, self._data_new.get(key) or self._data_old.get(key)
        if len(self._new) >= self._half:
            self._old, self._new = self._new, {}
        self._new[key] = fingerprint
        if len(self._data_new) >= self._kept_half:
            self._data_old, self._data_new = self._data_new, {}
        self._data_new[key] = item.data
        return False, None


class EventsSink(LagoSink):
    """`POST /events/batch`: at most 100 events, settled index by index on a 422."""

    action = "events"
    endpoint = "/events/batch"
    root_key = "events"
    rank = 2
    self_parsed = ("timestamp", "properties")

    def __init__(
        self,
        target: TargetLago,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        """Create the sink; refuse a stream whose rows would get no stable transaction id.

        Raises:
            StreamSetupError: When the stream has no `transaction_id` column, no key
                properties and no `transaction_id_columns` entry.
        """
        super().__init__(target, stream_name, schema, key_properties)
        named = target.transaction_id_columns(stream_name)
        self.id_columns: list[str] = list(named if named is not None else key_properties or [])
        if not self.id_columns and "transaction_id" not in (schema.get("properties") or {}):
            msg = (
                f"Stream '{stream_name}' has no transaction_id column and no key properties, "
                "so its rows cannot get stable transaction ids (a replay would bill them "
                "twice). Add a transaction_id column, declare the stream's key properties "
                "upstream, or name the columns that identify a row in the "
                f'transaction_id_columns setting, e.g. {{"{stream_name}": ["id"]}}.'
            )
            raise StreamSetupError(msg)
        self.verify = bool(self.config.get("verify_duplicates", False))
        # One memory for every events stream of the run, kept across schema changes.
        self._seen = target.seen_events

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to an event body."""
        payload = event_payload(record, self.id_columns)
        return payload, f"event {payload['transaction_id']!r}"

    def admit(self, item: Item) -> bool:
        """Dead-letter a second record of one event key with other content."""
        conflict, earlier = self._seen.conflict(item)
        if not conflict:
            return True
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
        return False

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
            body = b'{"events":[' + b",".join(item.data for item in pending) + b"]}"
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


def _encode(payload: dict) -> bytes:
    """The JSON of a body; a value JSON cannot carry rejects the record."""
    try:
        return encode(payload)
    except UnicodeEncodeError:
        problem = unsendable(payload, "") or ("record", "a value is not valid Unicode text")
        raise RecordRejected({problem[0]: ["value_is_invalid"]}, problem[1]) from None


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
