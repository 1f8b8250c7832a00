"""One sink per Lago action, over a shared base that validates, maps and settles."""

from __future__ import annotations

import json
import typing as t
from collections import defaultdict
from dataclasses import dataclass

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink

from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    customer_payload,
    event_payload,
    json_default,
    subscription_payload,
)
from target_lago.validation import RecordValidator

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse
    from target_lago.target import TargetLago

DRY_RUN_SHOWN = 5
"""Payloads printed per stream in a dry run."""
ALREADY_EXISTS = {"transaction_id": ["value_already_exist"]}


@dataclass
class Item:
    """A record and the body built from it."""

    record: dict
    payload: dict
    key: str


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
        except RecordRejected as exc:
            self.reject(record, None, "invalid_record", exc.details, exc.message)
            return
        except RecordSkipped as exc:
            self.stats.add("skipped")
            self.logger.info("Skipped a record of stream '%s': %s", self.stream_name, exc)
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
        context.setdefault("records", []).append(Item(record, payload, key))

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
    ) -> None:
        """Dead-letter one record.

        Args:
            record: The record.
            status: Lago's HTTP status, or None when never sent.
            code: Lago's error code.
            details: Lago's error details.
            message: Reason naming the field.
        """
        self.lago.report.reject(
            self.stats,
            record,
            http_status=status,
            error_code=code,
            details=details,
            message=message,
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
            response = self.lago.client.post(self.endpoint, {self.root_key: item.payload})
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


class EventsSink(LagoSink):
    """`POST /events/batch`: at most 100 events, settled index by index on a 422."""

    action = "events"
    endpoint = "/events/batch"
    root_key = "events"
    rank = 2
    self_parsed = ("timestamp", "properties")

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to an event body."""
        payload = event_payload(self.stream_name, record, self.key_properties)
        return payload, f"event {payload['transaction_id']!r}"

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
            response = self.lago.client.post(
                self.endpoint, {"events": [item.payload for item in pending]}
            )
            if response.ok:
                self.stats.add("delivered", len(pending))
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
            for index, item in enumerate(pending):
                errors = details.get(str(index))
                if errors is None:
                    retry.append(item)
                elif errors == ALREADY_EXISTS:
                    # After a lost response, the earlier attempt is what stored it.
                    self.stats.add("delivered" if response.replayed else "already_present")
                else:
                    self.reject_response(item, response, errors)
            if not retry:
                return
            pending = retry
        msg = f"events batch of stream '{self.stream_name}' did not settle"
        raise RuntimeError(msg)
