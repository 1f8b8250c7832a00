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
- this module: schemas, record shaping (:mod:`tap_lago.records`) and RECORD output
  (:mod:`tap_lago.writer`).

Response bodies are parsed by :mod:`tap_lago.parsing`.
"""

from __future__ import annotations

import typing as t

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
from tap_lago.writer import LagoMessageWriter, conformance_check

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

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
        if self._shaper is None:
            self._shaper = RecordShaper(self.name, self.schema, self.logger, self.key_stand_ins)
        return self._shaper.shape(row)

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
