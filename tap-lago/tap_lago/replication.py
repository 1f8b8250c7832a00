"""Replication: bookmarks, signposts, start and end dates, dedupe, time windows.

:class:`ReplicationStream` decides which records a sync emits and how far its bookmark
may move: bookmarks in one canonical format, never past the signpost (the sync's start,
or ``end_date``); records before the bookmark dropped where the API cannot filter them;
repeated keys (rows shifting between offset pages) dropped within a run.
:class:`TimeWindows` reads a list in time windows, oldest first, committing the bookmark
after each one.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import operator
import re
import time
import typing as t

import requests

from tap_lago.paging import PagingStream
from tap_lago.parsing import response_meta
from tap_lago.preflight import parse_setting_datetime, parse_setting_end
from tap_lago.transport import PremiumOnlyError

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from singer_sdk.helpers.types import Context

    from tap_lago.progress import StreamProgress

#: Keys remembered per stream and run to drop duplicates caused by shifting offset pages.
#: When k rows are inserted ahead of the reader between the reads of two consecutive
#: pages, the later page repeats the last k rows emitted: duplicates are always among the
#: most recently emitted records. Remembering the last 100,000 keys (as 64-bit hashes,
#: about 60 bytes each with set and queue overhead, so about 6 MB) only lets one through
#: if more than 100,000 rows are inserted ahead of the reader between two page reads,
#: and keeps memory flat however many records a sync emits. Two different keys share a
#: hash with a chance of 100,000 in 2**64 (about 1 in 10**14) per record.
DEDUPE_MEMORY = 100_000

#: Most windows one sync reads a windowed stream in; a longer span gets wider windows.
MAX_WINDOWS = 100

_CANONICAL = "%Y-%m-%dT%H:%M:%S.%fZ"
#: UTC timestamps as Lago writes them (``...T12:34:56Z`` or with 1 to 6 decimals).
_UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,6}))?Z")


#: An ISO-8601 value (``Z`` or offset) as an aware UTC datetime.
parse_datetime = parse_setting_datetime


def canonical(value: str | dt.datetime) -> str:
    """One string format for bookmarks, so string comparisons order them correctly."""
    if isinstance(value, str) and (match := _UTC_Z.fullmatch(value)):
        # Already UTC: pad the fraction to microseconds (what strftime would print).
        fraction = match.group(1) or ""
        return f"{value[:19]}.{fraction.ljust(6, '0')}Z"
    return parse_datetime(value).strftime(_CANONICAL)


def api_datetime(value: dt.datetime) -> str:
    """Format a datetime as Lago query filters expect (ISO 8601, UTC, milliseconds)."""
    return (
        value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def api_datetime_to(value: dt.datetime) -> str:
    """An inclusive upper bound for Lago's filters, through its millisecond's last microsecond.

    Lago keeps microseconds (a float timestamp) but lists times to the millisecond, and
    bounds here are milliseconds: an event at ``…59.9996`` belongs to the ``…59.999`` bound,
    not to the next job or window, which starts at the following millisecond at most.
    """
    moment = value.astimezone(dt.timezone.utc)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000 + 999)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class SeenKeys:
    """Bounded memory of primary keys already emitted in this run."""

    def __init__(self, capacity: int = DEDUPE_MEMORY) -> None:
        """Nothing seen yet; remember at most ``capacity`` keys."""
        self.capacity = capacity
        self._keys: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self.duplicates = 0

    def fresh(
        self,
        records: Iterable[dict[str, t.Any]],
        fast_key: t.Callable[[dict[str, t.Any]], t.Any],
        key_of: t.Callable[[dict[str, t.Any]], t.Any],
        progress: StreamProgress,
    ) -> Iterator[dict[str, t.Any]]:
        """The records whose key (``key_of``) is new, each remembered and counted.

        ``fast_key`` gives the same key, or raises KeyError (then ``key_of`` is used).
        """
        keys, order, capacity = self._keys, self._order, self.capacity
        for record in records:
            try:
                key = fast_key(record)
            except KeyError:
                key = key_of(record)
            try:
                digest = hash(key)
            except TypeError:  # a key field holding a list or an object
                digest = hash(repr(key))
            size = len(keys)
            keys.add(digest)
            if len(keys) == size:  # one set lookup, not two
                self.duplicates += 1
                continue
            order.append(digest)
            if len(order) > capacity:
                keys.discard(order.popleft())
            progress.records += 1
            yield record


class ReplicationStream(PagingStream):
    """Chooses the records a sync emits and keeps the bookmark behind the signpost."""

    #: Drop records whose replication key is before the bookmark (for endpoints without
    #: a server-side filter on it).
    client_side_filter = False
    #: ``"s"`` or ``"ms"``: precision of the replication key's values, used to floor the
    #: signpost so no record can slip under it.
    replication_precision = "s"
    is_sorted = False
    #: Whether ``start_date`` limits a first sync (facts) or not (dimensions: read whole).
    applies_start_date = True
    #: Whether ``end_date`` caps what is read and the bookmark (events and fees).
    applies_end_date = False

    _seen: SeenKeys | None = None
    _signpost_value: str | None = None
    _max_bookmark: str | None = None
    _warned_past_end = False
    #: The ACTIVATE_VERSION held back until the stream's first response is in.
    _pending_version: int | None = None

    # Bookmarks ------------------------------------------------------------------------

    def get_replication_key_signpost(self, context: Context | None = None) -> str | None:
        """The sync's start, floored to the key's precision, in the bookmark format.

        A bookmark never moves past it, so a record created or changed while this sync
        runs is read again by the next one.
        """
        if not self.replication_key:
            return None
        if self._signpost_value is None:
            now = dt.datetime.now(dt.timezone.utc)
            end = self.end_datetime() if self.applies_end_date else None
            if end is not None:
                now = min(now, end)
            if self.replication_precision == "ms":
                now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            else:
                now = now.replace(microsecond=0)
            self._signpost_value = canonical(now)
        return self._signpost_value

    def signpost_datetime(self) -> dt.datetime:
        """The signpost as a datetime."""
        return parse_datetime(t.cast("str", self.get_replication_key_signpost()))

    def start_datetime(self, context: Context | None) -> dt.datetime | None:
        """Where this sync starts: the bookmark, else ``start_date`` (facts only), else None."""
        if not self.applies_start_date and not self.has_bookmark(context):
            return None
        value = self.get_starting_replication_key_value(context)
        return parse_datetime(value) if value else None

    def end_datetime(self) -> dt.datetime | None:
        """The ``end_date`` setting, if any (a date alone: through its last millisecond)."""
        value = self.config.get("end_date")
        return parse_setting_end(value) if value else None

    def start_within_end(self, context: Context | None) -> dt.datetime | None:
        """``start_datetime``, with a warning when a bookmark already passed ``end_date``.

        Such a job reads nothing: its bookmark is another job's or another range's
        (two runs of one Meltano extractor at once share its state file).
        """
        start = self.start_datetime(context)
        end = self.end_datetime() if self.applies_end_date else None
        past = start is not None and end is not None and start > end
        if past and not self._warned_past_end and self.has_bookmark(context):
            self._warned_past_end = True
            self.logger.warning(
                "%s: the bookmark %s is past end_date %s, so this job reads nothing. If the "
                "state came from another job or range, clear this job's state (meltano "
                "state clear <state id>) and run it again; parallel Meltano jobs need an "
                "extractor each (inherit_from).",
                self.name,
                api_datetime(t.cast("dt.datetime", start)),
                api_datetime(t.cast("dt.datetime", end)),
            )
        return start

    _predicting = False

    def request_ahead(self, page: int | None) -> requests.PreparedRequest | None:
        """The request, built with the starting value the stream's sync will have.

        The SDK sets the starting value up (from the bookmark and ``start_date``) only as
        the stream starts, so it is worked out here the same way meanwhile.
        """
        self._predicting = True
        try:
            return super().request_ahead(page)
        finally:
            self._predicting = False

    def get_starting_replication_key_value(self, context: Context | None) -> t.Any | None:
        """The SDK's starting value; before the stream starts, what it will be."""
        if not self._predicting:
            return super().get_starting_replication_key_value(context)
        if not self.replication_key:
            return None
        value = self.get_context_state(context).get("replication_key_value")
        if self.get_context_state(context).get("replication_key") != self.replication_key:
            value = None
        start = self.config.get("start_date")
        if start:
            value = self.compare_start_date(value, start) if value else start
        return value

    def has_bookmark(self, context: Context | None) -> bool:
        """Whether the incoming state holds a bookmark for this stream."""
        state = self.get_context_state(context)
        return bool(
            state.get("replication_key_value")
            and state.get("replication_key") == self.replication_key
        )

    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Track bookmarks in one canonical format so string comparison is time order.

        On an unsorted stream without partitions, a value not above the highest one seen
        in this sync cannot move the bookmark, so the SDK's state update is skipped.
        (A private SDK method: see tests/tap/test_sdk_contract.py.)
        """
        key = self.replication_key
        if key and latest_record.get(key):
            value = canonical(latest_record[key])
            if context is None and not self.is_sorted and self.check_sorted:
                if self._max_bookmark is not None and value <= self._max_bookmark:
                    return
                self._max_bookmark = value
            latest_record = {**latest_record, key: value}
        super()._increment_stream_state(latest_record, context=context)

    # Records --------------------------------------------------------------------------

    def reset_seen(self) -> None:
        """Forget the keys and bookmark seen (a new top-level sync of this stream)."""
        self._seen = SeenKeys()
        self._max_bookmark = None
        for child in self.child_streams:
            t.cast("ReplicationStream", child).reset_seen()

    def record_key(self, record: dict[str, t.Any]) -> tuple[t.Any, ...]:
        """The primary key of a record."""
        return tuple(map(record.get, self.primary_keys))

    def _key_function(self) -> t.Callable[[dict[str, t.Any]], t.Any] | None:
        """What identifies a record for the dedupe (its key, as fast as it comes)."""
        keys = tuple(self.primary_keys or ())
        if type(self).record_key is not ReplicationStream.record_key:
            return self.record_key
        if len(keys) == 1:
            only = keys[0]
            return lambda r: r.get(only)
        if len(keys) == 2:
            first, second = keys
            return lambda r: (r.get(first), r.get(second))
        return self.record_key if keys else None

    def _key_getter(self) -> t.Callable[[dict[str, t.Any]], t.Any] | None:
        """`_key_function` at C speed where it can be: KeyError when a key field is absent."""
        keys = tuple(self.primary_keys or ())
        if keys and type(self).record_key is ReplicationStream.record_key and len(keys) <= 2:
            return operator.itemgetter(*keys)
        return None

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Request every page, keep records past the bookmark, drop repeated keys.

        A stream the server refuses with 403 ``feature_unavailable`` (no premium licence)
        is skipped with one WARNING line, for the rest of the run.
        """
        top_level = context is None and self.parent_stream_type is None
        if top_level:
            check = getattr(self._tap, "check_connection_once", None)
            if check is not None:
                check()
            ahead = getattr(self._tap, "fetch_first_pages_ahead", None)
            if ahead is not None:
                ahead(self)
            self.start_turn()
        if self._seen is None or top_level:
            self.reset_seen()
        seen = t.cast("SeenKeys", self._seen)
        dupes_before = seen.duplicates
        progress = self.progress
        started = progress.start()
        emitted = False
        try:
            if self.unavailable is None:
                records = iter(self._filtered_records(self.request_records(context), context, seen))
                first = next(records, None)
                self._activate_version()  # the stream is readable: old rows may now go
                if first is not None:
                    emitted = True
                    yield first
                    yield from records
        except PremiumOnlyError as exc:
            if emitted:
                raise
            self._pending_version = None
            self.unavailable = exc
            self.logger.warning("%s", exc)
        finally:
            progress.seconds += time.monotonic() - started
        for child in self.child_streams:
            t.cast("PagingStream", child).drop_prefetched()
        if top_level:
            self.drop_prefetched()  # a first page fetched ahead that the sync did not ask for
        if seen.duplicates > dupes_before:
            self.logger.info(
                "%s: dropped %d records already emitted in this run (page shifts)",
                self.name,
                seen.duplicates - dupes_before,
            )

    def _write_activate_version_message(self, full_table_version: int) -> None:
        """Held back until the stream's first response is in (:meth:`get_records`).

        A stream the server refuses (no premium licence) then never tells the loader that
        its rows are gone.
        """
        self._pending_version = full_table_version

    def _activate_version(self) -> None:
        """Write the ACTIVATE_VERSION held back, if any."""
        version, self._pending_version = self._pending_version, None
        if version is not None:
            super()._write_activate_version_message(version)

    def _filtered_records(
        self,
        records: Iterable[dict[str, t.Any]],
        context: Context | None,
        seen: SeenKeys,
    ) -> Iterable[dict[str, t.Any]]:
        """Records past the bookmark (client-side filter) and not yet emitted, counted."""
        start = self.start_datetime(context) if self.client_side_filter else None
        key_of = self._key_function()
        prepare = (
            self.prepare_record
            if type(self).prepare_record is not ReplicationStream.prepare_record
            else None
        )
        if start is not None or prepare is not None:
            records = self._past_bookmark(records, context, start, prepare)
        if key_of is None:
            return self.progress.counted(records)
        return seen.fresh(records, self._key_getter() or key_of, key_of, self.progress)

    def _past_bookmark(
        self,
        records: Iterable[dict[str, t.Any]],
        context: Context | None,
        start: dt.datetime | None,
        prepare: t.Callable[..., dict[str, t.Any]] | None,
    ) -> Iterator[dict[str, t.Any]]:
        """Records prepared (``prepare_record``) and not before ``start``."""
        for record in records:
            if prepare is not None:
                record = prepare(record, context)  # noqa: PLW2901
            if start is not None:
                value = record.get(t.cast("str", self.replication_key))
                if value and parse_datetime(value) < start:
                    continue
            yield record

    def prepare_record(
        self,
        record: dict[str, t.Any],
        context: Context | None,
    ) -> dict[str, t.Any]:
        """Hook to add fields to a record before it is keyed (override)."""
        return record


class TimeWindows(ReplicationStream):
    """A list read in time windows, oldest first; the bookmark moves as each one completes.

    Subclasses name the list's inclusive time filters in ``window_params``. Windows run
    from the bookmark minus the lookback (else ``start_date``, else the oldest record) to
    the signpost (the sync's start, or ``end_date``), ``events_window_days`` long (wider
    when that would make more than :data:`MAX_WINDOWS`). After each window the bookmark
    becomes its end and a STATE message is written, so a run killed mid-backfill resumes
    at its last completed window.
    """

    window_params: tuple[str, str] = ("", "")
    replication_precision = "ms"
    applies_end_date = True
    first_page_ahead = False  # its first request is the first window's
    _window: tuple[dt.datetime, dt.datetime] | None = None

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        low, high = self._window or (None, self.signpost_datetime())
        params = {self.window_params[1]: api_datetime_to(high)}
        if low is not None:
            params[self.window_params[0]] = api_datetime(low)
        return params

    def window_start(self, context: Context | None) -> dt.datetime | None:
        """Where the first window begins: the sync's start minus the lookback."""
        start = self.start_within_end(context)
        if start is None:
            return None
        lookback = dt.timedelta(days=float(self.config.get("lookback_window_days", 1)))
        return start - lookback

    def windows(self, context: Context | None) -> list[tuple[dt.datetime, dt.datetime]]:
        """Every window of this sync, oldest first."""
        end = self.signpost_datetime()
        start = self.window_start(context) or self._oldest_record_time(end)
        if start is None or start > end:
            return []
        size = dt.timedelta(days=float(self.config.get("events_window_days", 30)))
        if (end - start) / size > MAX_WINDOWS:
            # A stray ancient timestamp must not cost a request per empty window.
            size = (end - start) / MAX_WINDOWS
            self.logger.info(
                "%s: %s to %s is more than %d windows: reading it in %d windows of %.1f days",
                self.name,
                start.date(),
                end.date(),
                MAX_WINDOWS,
                MAX_WINDOWS,
                size / dt.timedelta(days=1),
            )
        bounds = [start]
        while bounds[-1] + size < end:
            bounds.append(bounds[-1] + size)
        bounds.append(end)
        return list(itertools.pairwise(bounds)) or [(start, end)]

    def _oldest_record_time(self, end: dt.datetime) -> dt.datetime | None:
        """The time of the oldest record up to ``end``: the last entry of a newest-first list.

        Requests of one record: the count, then the last page, asked again while the count
        it comes with differs (rows inserted meanwhile shift the oldest one down). None when
        the list is empty.
        """
        send = self.request_decorator(self._send)

        def first_of(page: int) -> tuple[dict[str, t.Any] | None, int]:
            params = {"per_page": 1, "page": page, self.window_params[1]: api_datetime_to(end)}
            request = requests.Request("GET", self.get_url(None), params=params)
            response = send(self.requests_session.prepare_request(request), None)
            records = list(self.parse_response(response))
            return (records[0] if records else None), int(
                response_meta(response).get("total_count") or 0
            )

        _, count = first_of(1)
        oldest = None
        for _ in range(10):  # bounded: each retry means rows were inserted meanwhile
            if not count:
                return None
            oldest, now = first_of(count)
            if now == count:
                break
            count = now
        value = oldest.get(t.cast("str", self.replication_key)) if oldest else None
        return parse_datetime(value) if value else None

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Each window's records in turn; the bookmark is committed after each window."""
        windows = self.windows(context)
        progress = self.progress
        for number, window in enumerate(windows):
            self._window = window
            label = f"({window[0]:%Y-%m-%d} to {window[1]:%Y-%m-%d})"
            progress.begin_part(number, len(windows), label)
            try:
                yield from super().request_records(context)
            finally:
                self._window = None
            self._commit_window(context, window[1])

    def _commit_window(self, context: Context | None, end: dt.datetime) -> None:
        """Make ``end`` the bookmark (never past the signpost) and write STATE."""
        state = self.get_context_state(context)
        state.pop("progress_markers", None)
        state["replication_key"] = self.replication_key
        state["replication_key_value"] = canonical(min(end, self.signpost_datetime()))
        self.state_manager.is_flushed = False
        self._write_state_message()

    def _increment_stream_state(
        self, latest_record: dict[str, t.Any], *, context: Context | None = None
    ) -> None:
        """Records do not move the bookmark: completed windows do (newest first inside)."""
