"""Base classes of every tap-lago stream, composed of one layer per concern.

``LagoStream`` stacks, from the bottom:

- :mod:`tap_lago.transport`: the session, one request attempt, errors, retries, the
  429 gate (``TransportStream``);
- :mod:`tap_lago.paging`: each page's request and the walk over pages, serial or
  fetched ahead, and child requests started early (``PagingStream``);
- :mod:`tap_lago.replication`: signposts, bookmarks, start and end dates, dedupe,
  time windows (``ReplicationStream``, ``TimeWindows``);
- :mod:`tap_lago.date_windows` (invoices): a list read in date windows at once, each
  walked one page at a time (``DateWindowsStream``, stacked over a stream's base);
- this module: schemas, record shaping (:mod:`tap_lago.records`), RECORD output
  (:mod:`tap_lago.writer`) and, for plain streams, the per-record loop.

Response bodies are parsed by :mod:`tap_lago.parsing`.
"""

from __future__ import annotations

import functools
import typing as t

from singer_sdk import Stream
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.schema.source import SchemaDirectory, StreamSchema

from tap_lago import schemas
from tap_lago.date_windows import DateWindowsStream
from tap_lago.paging import LagoPaginator
from tap_lago.progress import Progress
from tap_lago.records import RecordShaper
from tap_lago.replication import (
    MAX_WINDOWS,
    ReplicationStream,
    TimeWindows,
    api_datetime,
    parse_datetime,
)
from tap_lago.transport import ListRefusedError, ParentGoneError, PremiumOnlyError
from tap_lago.writer import LagoMessageWriter, conformance_check, value_conformance

if t.TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

    from singer_sdk.helpers.types import Context

__all__ = [
    "MAX_WINDOWS",
    "SCHEMAS",
    "DateWindowsStream",
    "LagoChildStream",
    "LagoPaginator",
    "LagoStream",
    "LagoWindowedStream",
    "ListRefusedError",
    "ParentGoneError",
    "PremiumOnlyError",
    "api_datetime",
    "parse_datetime",
]

SCHEMAS = SchemaDirectory(schemas)
#: Switch for tests comparing both loops (False: every stream takes the SDK's loop).
PLAIN_LOOP = True
#: Records between two updates of the SDK's record counter in the plain loop.
COUNT_EVERY = 100


class LagoStream(ReplicationStream):
    """Base class of every Lago stream: declare ``name``, ``path`` and keys, little else.

    Class attributes a stream may set:
        records_key: wrapper key of the list in the response body (default: ``name``).
        extra_params: fixed query parameters (e.g. ``status[]`` for subscriptions).
        client_side_filter: drop records whose replication key is before the bookmark
            (for endpoints without a server-side filter on it).
        replication_precision: ``"s"`` or ``"ms"``, the precision of the replication
            key's values, used to floor the signpost so no record can slip under it.
        key_stand_ins: what a null key field becomes (records with any other null key
            field are skipped; see :mod:`tap_lago.records`).
        paginated: False for single-object endpoints.
        page_ahead: whether pages may be fetched ahead concurrently (``max_concurrency``).
            Safe where a change to the list shows in ``meta.total_count`` (then a page read
            out of order is read again), or where new rows only append at the end.
        applies_start_date, applies_end_date: whether ``start_date`` / ``end_date`` limit
            the stream (see :mod:`tap_lago.replication`).

    Hooks a stream may override: ``filter_params`` (server-side filters),
    ``prepare_record`` (fields added before keying), and the SDK's public hooks.
    """

    schema = StreamSchema(SCHEMAS)
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {}

    _shaper: RecordShaper | None = None
    _fast_path: tuple[Callable[..., None], Callable[[dict[str, t.Any]], bool]] | None = None
    _fast_path_checked = False

    def post_process(
        self, row: dict[str, t.Any], context: Context | None = None
    ) -> dict[str, t.Any] | None:
        """Exact decimals, unknown fields kept, no null key (:mod:`tap_lago.records`)."""
        return self.shaper.shape(row)

    @property
    def shaper(self) -> RecordShaper:
        """The stream's record shaper (made on first use)."""
        if self._shaper is None:
            self._shaper = RecordShaper(self.name, self.schema, self.logger, self.key_stand_ins)
        return self._shaper

    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        """No child contexts at all for a stream without child streams."""
        if not self.child_streams:
            return ()
        return super().generate_child_contexts(record, context)

    def log_sync_costs(self) -> None:
        """At the end of the sync (the tap's last stream): the table of every stream."""
        streams = list(self._tap.streams.values())
        if not streams or streams[-1] is not self:
            return
        progress = getattr(self._tap, "progress", None)
        if isinstance(progress, Progress) and progress.streams:
            for line in ["Sync summary:", *progress.table()]:
                self._tap.logger.info("%s", line)

    # The per-record loop ----------------------------------------------------------------

    def _sync_records(
        self, context: Context | None = None, *, write_messages: bool = True
    ) -> Generator[dict[str, t.Any], t.Any, t.Any]:
        """The SDK's loop, or for a plain stream `_sync_plain` (the same output, less work).

        Returns the chosen generator itself (one generator less to resume per record).
        """
        if write_messages and context is None and self._plain_loop():
            return self._sync_plain()
        return super()._sync_records(context, write_messages=write_messages)

    def _plain_loop(self) -> bool:
        """Whether a record needs nothing of the SDK's loop beyond what `_sync_plain` does.

        A top-level stream without partitions or children, selected, with no record limit,
        whose records the fast writer takes, and whose per-record hooks are this module's.
        """
        cls = type(self)
        return (
            PLAIN_LOOP
            and self.selected
            and not self.partitions
            and not self.child_streams
            and self.parent_stream_type is None
            and self.ABORT_AT_RECORD_COUNT is None
            and cls._process_record is Stream._process_record
            and cls._write_record_message is LagoStream._write_record_message
            and self._fast_record_path() is not None
        )

    def _sync_plain(self) -> Generator[dict[str, t.Any], None, None]:
        """`Stream._sync_records` without a context, for a plain stream (`_plain_loop`).

        What the SDK does per record that changes nothing here is left out: partition
        keys (none), child contexts (none), the bookmark of a stream read in time
        windows (moved per window). Each record is post-processed, written (by the fast
        writer when it conforms, else the SDK's way), moves the bookmark, and is counted
        (the SDK's record counter every ``COUNT_EVERY`` records: its interim metric lines
        may lag by as many, its last one is exact); a STATE follows every
        ``STATE_MSG_FREQUENCY`` records and the stream's end, as in the SDK's loop.
        """
        conforms_fully = t.cast("tuple[t.Any, Callable[..., bool]]", self._fast_path)[1]
        write = t.cast("LagoMessageWriter", self._tap.message_writer).record_writer(
            self.name, self._stream_version
        )
        shape: Callable[[dict[str, t.Any]], dict[str, t.Any] | None]
        conforms: Callable[[dict[str, t.Any]], bool] | None = conforms_fully
        shaper = self.shaper
        if type(self).post_process is LagoStream.post_process:
            shape = shaper.shape
            schema = self.effective_schema
            if not shaper.open and shaper.declared == frozenset(schema.get("properties") or {}):
                # The shaper leaves only declared fields: the values alone need a look.
                conforms = value_conformance(schema)
        else:
            shape = functools.partial(self.post_process, context=None)
        write_other = super()._write_record_message
        # Streams read in time windows move their bookmark per window: nothing per record.
        windowed = type(self)._increment_stream_state is TimeWindows._increment_stream_state
        increment = None if windowed else self._increment_stream_state
        manager = self.state_manager
        every = self.STATE_MSG_FREQUENCY
        counter, timer = self.get_record_counter(), self.get_sync_timer()
        with counter, timer:
            counter.with_context({})
            timer.with_context({})
            partition = self._get_state_partition_context(None)
            self._write_starting_replication_value(None)
            index = uncounted = 0
            try:
                for row in self.get_records(None):
                    record = shape(row)
                    if record is None:
                        continue
                    if conforms is None or conforms(record):
                        write(record)
                        manager.is_flushed = False
                    else:
                        write_other(record)
                    if increment is not None:
                        increment(record, context=None)
                    index += 1
                    if index % every == 0:
                        self._write_state_message()
                    uncounted += 1
                    if uncounted == COUNT_EVERY:
                        counter.increment(uncounted)
                        uncounted = 0
                    yield record
            finally:
                counter.increment(uncounted)
            if partition is None:
                self._finalize_state(self.get_context_state(None))
        self._finalize_state(self.stream_state)
        self._write_state_message()

    # Record output --------------------------------------------------------------------

    def _write_record_message(self, record: dict[str, t.Any]) -> None:
        """Write a RECORD: straight to the fast writer when nothing would change it.

        The SDK's path (deselected properties, type conformance, stream maps, flattening)
        is taken when a stream map or flattening is configured, a property is deselected,
        the writer is not the tap's own, or the record does not already match its schema.
        (A private SDK method: see tests/tap/test_sdk_contract.py.)
        """
        fast = self._fast_path if self._fast_path_checked else self._fast_record_path()
        if fast is None or not fast[1](record):
            super()._write_record_message(record)
            return
        fast[0](self.name, record, self._stream_version)
        self.state_manager.is_flushed = False

    def _fast_record_path(
        self,
    ) -> tuple[Callable[..., None], Callable[[dict[str, t.Any]], bool]] | None:
        """The fast writer and the conformance predicate, or None when not applicable."""
        if not self._fast_path_checked:
            self._fast_path_checked = True
            writer = getattr(self._tap, "message_writer", None)
            maps = self.stream_maps
            if (
                isinstance(writer, LagoMessageWriter)
                and len(maps) == 1
                and type(maps[0]) is SameRecordTransform
                and not maps[0].flattening_enabled
                and maps[0].stream_alias == self.name
                and all(self.mask.values())
                and self.TYPE_CONFORMANCE_LEVEL
                in {TypeConformanceLevel.RECURSIVE, TypeConformanceLevel.NONE}
            ):
                check = (
                    conformance_check(self.effective_schema)
                    if self.TYPE_CONFORMANCE_LEVEL == TypeConformanceLevel.RECURSIVE
                    else (lambda record: True)
                )
                self._fast_path = (writer.write_record, check)
        return self._fast_path


class LagoChildStream(LagoStream):
    """A stream read once per parent record; a vanished parent is logged and skipped."""

    state_partitioning_keys: t.ClassVar[list[str]] = []

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Like the base, but a 404 on the parent's URL skips that parent."""
        try:
            yield from super().get_records(context)
        except ParentGoneError as exc:
            self.logger.warning("Skipping %s for %s: %s", self.name, dict(context or {}), exc)


class LagoWindowedStream(TimeWindows, LagoStream):
    """A list read in time windows, oldest first (see :class:`TimeWindows`).

    Subclasses name the list's inclusive time filters in ``window_params``.
    """
