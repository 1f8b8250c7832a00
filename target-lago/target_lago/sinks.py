"""The base every action's sink shares: validation, dead letters, dry run, ordering."""

from __future__ import annotations

import json
import logging
import typing as t
from collections import defaultdict
from dataclasses import dataclass

from singer_sdk import metrics
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink

from target_lago.client import LagoUnavailableError, encode
from target_lago.mapping import RecordRejected, RecordSkipped, json_default, unsendable
from target_lago.validation import RecordValidator

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse
    from target_lago.target import TargetLago

DRY_RUN_SHOWN = 5
"""Payloads printed per stream in a dry run."""


class QuietTimer(metrics.Timer):
    """The SDK's batch timer, whose METRIC line (one per batch) is logged at DEBUG only.

    Batches drain every few hundred records: the progress lines say how a stream goes.
    """

    def __exit__(self, *args: t.Any) -> None:
        """Log the measurement when the metrics logger takes DEBUG lines."""
        if self.logger.isEnabledFor(logging.DEBUG):
            super().__exit__(*args)


class StreamSetupError(Exception):
    """A stream whose records cannot be written safely as declared (fatal at its SCHEMA)."""


@dataclass(slots=True)
class Item:
    """A record, the body built from it and that body as JSON."""

    record: dict
    payload: dict
    key: str
    data: bytes = b""
    #: A part of the record written by a request of its own (a plan's entitlements).
    aside: t.Any = None


class LagoSink(BatchSink):
    """Base sink: validation problems and mapping errors become dead letters.

    Subclasses declare `action`, `endpoint`, `root_key` and `rank` (writes of a lower
    rank are flushed first) and implement `build` and `deliver`.
    """

    action: t.ClassVar[str]
    endpoint: t.ClassVar[str]
    root_key: t.ClassVar[str]
    rank: t.ClassVar[int]
    #: Whether the body carries a list of records under `root_key` (events).
    batched: t.ClassVar[bool] = False
    #: Fields the mapping reads itself, in any form it accepts: their declared types in
    #: the incoming schema are not enforced (stream maps type a dict expression as string).
    self_parsed: t.ClassVar[tuple[str, ...]] = ()
    #: Whether the `partition` setting can split the stream between processes (events).
    partitioned: t.ClassVar[bool] = False
    #: Whether its deferred records wait for every other sink's (rows that change what
    #: another sink's deferred rows create).
    deferred_last: t.ClassVar[bool] = False

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
        if target.partition is not None and not self.partitioned:
            msg = (
                f"Stream '{stream_name}' ({self.action}) cannot be split by the partition "
                "setting, which splits events streams only: load it in a run without "
                "partition (before the events that need it)."
            )
            raise StreamSetupError(msg)
        self.setup()

    def get_batch_processing_timer(self) -> metrics.Timer:
        """The batch timer, logged at DEBUG level (see `QuietTimer`)."""
        return QuietTimer(
            metrics.Metric.BATCH_PROCESSING_TIME, tags={metrics.Tag.STREAM: self.stream_name}
        )

    def setup(self) -> None:
        """Check the stream once, at its SCHEMA (override).

        Raises:
            StreamSetupError: When its records could not be written safely as declared.
        """

    def identifying_columns(self) -> list[str]:
        """The columns that identify a row: its `transaction_id_columns` entry, else keys.

        Raises:
            StreamSetupError: When the setting names a column the stream does not have.
        """
        named = self.lago.transaction_id_columns(self.stream_name)
        declared = self.schema.get("properties") or {}
        unknown = [column for column in named or [] if declared and column not in declared]
        if unknown:
            msg = (
                f"transaction_id_columns names {', '.join(unknown)} for stream "
                f"'{self.stream_name}', which has no such column (it has: "
                f"{', '.join(sorted(declared))}): fix the column names."
            )
            raise StreamSetupError(msg)
        return list(named if named is not None else self.key_properties or [])

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
            if not self.in_share(tid):
                self.stats.add("skipped_by_partition")
                return
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
        if self.deferred(item):
            if self.lago.dry_run:
                self.stats.add("delivered")
                self.logger.info("dry run: would %s (after every other write)", self.describe(item))
            else:
                self.lago.defer(self, item)
            return
        if self.lago.dry_run:
            self.stats.add("delivered")
            if self._shown < DRY_RUN_SHOWN:
                self._shown += 1
                self.logger.info("dry run: would %s", self.describe(item))
            return
        context.setdefault("records", []).append(item)

    def in_share(self, transaction_id: str | None) -> bool:
        """Whether this process's `partition` holds a record (streams not split: all)."""
        return True

    def describe(self, item: Item) -> str:
        """The request a record would make, for the dry run's log."""
        payload = [item.payload] if self.batched else item.payload
        body = json.dumps({self.root_key: payload}, default=json_default)
        return f"POST {self.endpoint} {body}"

    def admit(self, item: Item) -> bool:
        """Whether a mapped record goes on to Lago (False: it was settled here)."""
        return True

    def deferred(self, item: Item) -> bool:
        """Whether a record is written after every other write before the next STATE.

        Deletions are: the records received before them go first.
        """
        return False

    def deliver_deferred(self, items: list[Item]) -> None:
        """Write deferred records of one key, in the order received."""
        raise NotImplementedError

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


class OneByOneSink(LagoSink):
    """Customers and subscriptions: one request per record, records of one key in order.

    Different keys go out in parallel (up to `max_in_flight`); the batch is fully
    acknowledged before `process_batch` returns, so later streams see it applied.
    """

    def deliver(self, items: list[Item]) -> None:
        """Send each key's records in order, different keys in parallel."""
        groups: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            groups[self.group_of(item)].append(item)
        self.lago.inflight.run_all(self._deliver_group, self.order(list(groups.values())))

    def group_of(self, item: Item) -> str:
        """The records sent one after another, in the order received (default: one key's)."""
        return item.key

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

    def send_once(
        self, method: str, path: str, data: bytes, landed: t.Callable[[], bool]
    ) -> LagoResponse | None:
        """Send a write Lago would apply twice if repeated, never repeating it blindly.

        Each attempt is sent once. When its answer is lost (timeout, dropped connection) or
        is a 429 or 5xx, `landed()` looks in Lago first: True means the write took effect
        (None is returned), False sends it again after a backoff.

        Returns:
            Lago's final answer, or None when the write was found applied.

        Raises:
            LagoUnavailableError: When every retry failed.
        """
        client = self.lago.client
        for attempt in range(client.max_retries + 1):
            try:
                return client.request(method, path, data, max_retries=0)
            except LagoUnavailableError:
                if landed():
                    return None
            client.pause(attempt)
        msg = f"{method} {client.api_url}{path} still failing after {client.max_retries} retries"
        raise LagoUnavailableError(msg)


def _encode(payload: dict) -> bytes:
    """The JSON of a body; a value JSON cannot carry rejects the record."""
    try:
        return encode(payload)
    except UnicodeEncodeError:
        problem = unsendable(payload, "") or ("record", "a value is not valid Unicode text")
        tid = payload.get("transaction_id")
        raise RecordRejected(
            {problem[0]: ["value_is_invalid"]},
            problem[1],
            tid if isinstance(tid, str) else None,  # its partition share owns it
        ) from None
