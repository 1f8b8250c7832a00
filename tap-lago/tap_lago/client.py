"""HTTP layer shared by every tap-lago stream: auth, paging, retries, replication."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import decimal
import hashlib
import itertools
import json
import logging
import random
import re
import sys
import threading
import time
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import quote, urlsplit

import orjson
import requests
from requests.utils import resolve_proxies
from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import (
    AbortedSyncFailedException,
    AbortedSyncPausedException,
    FatalAPIError,
    MaxRecordsLimitException,
    RetriableAPIError,
)
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.helpers.types import Context
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.schema.source import SchemaDirectory, StreamSchema

from tap_lago import schemas
from tap_lago.preflight import API_ERRORS, INSTANCES, connection_error, parse_setting_datetime
from tap_lago.progress import Progress, StreamProgress
from tap_lago.records import RecordShaper
from tap_lago.writer import LagoMessageWriter, conformance_check

if t.TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable

    from backoff.types import Details

SCHEMAS = SchemaDirectory(schemas)

#: Keys remembered per stream and run to drop duplicates caused by shifting offset pages.
#: When k rows are inserted ahead of the reader between the reads of two consecutive
#: pages, the later page repeats the last k rows emitted: duplicates are always among the
#: most recently emitted records. Remembering the last 100,000 keys (128-bit digests,
#: about 100 bytes each with set and queue overhead, so about 10 MB) only lets one
#: through if more than 100,000 rows are inserted ahead of the reader between two page
#: reads, and keeps memory flat however many records a sync emits.
DEDUPE_MEMORY = 100_000

#: Exponential backoff (seconds) for 5xx, timeouts and dropped connections: base * 2**n,
#: capped, with full jitter between half and all of it. Tests may lower the base.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
#: Upper bound on a server-requested wait (X-RateLimit-Reset / Retry-After).
RATE_LIMIT_CAP_SECONDS = 300.0
#: Page-ahead starts with none: a page is read on the emitting thread until one took
#: longer than this (and than emitting the previous page) to arrive. Against a fast API,
#: threads cost more (handoffs, GIL contention) than the wait they would hide.
PAGE_AHEAD_AFTER_SECONDS = 0.01
#: Pages in a row already there when wanted before one fewer is requested ahead.
PAGE_AHEAD_SHRINK_AFTER = 8

#: Most windows one sync reads a windowed stream in; a longer span gets wider windows.
MAX_WINDOWS = 100

_CANONICAL = "%Y-%m-%dT%H:%M:%S.%fZ"
#: UTC timestamps as Lago writes them (``...T12:34:56Z`` or with 1 to 6 decimals).
_UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,6}))?Z")
#: Maps digits and dots to "0", every other byte to " ": a body holding a run of 17 of them
#: may hold a number a double cannot represent exactly (checked at C speed).
_DIGIT_MASK = bytes(0x30 if chr(i) in "0123456789." else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 17


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


class ParentGoneError(FatalAPIError):
    """A child request found its parent object gone (deleted mid-sync)."""


class ListRefusedError(FatalAPIError):
    """A list request refused as invalid (400 or 422), e.g. for a filter it requires."""


class PremiumOnlyError(FatalAPIError):
    """403 ``feature_unavailable``: the endpoint needs a Lago premium licence.

    Not an error of the run: :meth:`LagoStream.get_records` skips the stream (one log line,
    no record, no ACTIVATE_VERSION, no bookmark moved) and the sync goes on.
    """


#: Exceptions after which the SDK's "An unhandled error occurred" line is only noise: the
#: error is reported in one line at the end, or the stop is wanted (``--test``).
_EXPECTED_STOPS = (
    *API_ERRORS,
    MaxRecordsLimitException,
    AbortedSyncFailedException,
    AbortedSyncPausedException,
)


def parse_json(content: bytes) -> t.Any:
    """Parse a response body: orjson, unless a number would lose digits as a double.

    Such bodies (and any orjson refuses) are parsed as the SDK does, floats as Decimal.
    """
    if _LONG_NUMBER not in content.translate(_DIGIT_MASK):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return json.loads(content, parse_float=decimal.Decimal)


def response_body(response: requests.Response) -> t.Any:
    """The parsed JSON body of a response, parsed once and kept on the response."""
    body = getattr(response, "_lago_body", None)
    if body is None:
        try:
            body = parse_json(response.content)
        except ValueError as exc:
            request = response.request
            url = request.url if request is not None else response.url
            msg = f"HTTP {response.status_code} from GET {url} is not JSON: {exc}"
            raise FatalAPIError(msg) from exc
        response._lago_body = body  # type: ignore[attr-defined]
    return body


def response_meta(response: requests.Response) -> dict[str, t.Any]:
    """The ``meta`` object of a list response (empty when absent)."""
    body = response_body(response)
    meta = body.get("meta") if isinstance(body, dict) else None
    return meta if isinstance(meta, dict) else {}


def _error_code(response: requests.Response) -> str | None:
    """The ``code`` of a Lago error body, when there is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


class LagoPaginator(BaseAPIPaginator[int]):
    """Page numbers from ``meta.next_page``; stops when it is null (or the page is empty).

    ``total_pages`` only tells how far ahead pages may be fetched concurrently; the walk
    itself follows ``next_page`` (Lago caches counts of some lists for 30 minutes).
    """

    def __init__(self, page: int = 1) -> None:
        """Start at ``page``."""
        super().__init__(page)

    def has_more(self, response: requests.Response) -> bool:  # noqa: D102
        return self.get_next(response) is not None

    def get_next(self, response: requests.Response) -> int | None:  # noqa: D102
        next_page = response_meta(response).get("next_page")
        return int(next_page) if next_page else None


class LagoSession(requests.Session):
    """A session that works out the environment's proxy settings once per host.

    ``Session.send`` otherwise rescans every environment variable on each request to
    resolve proxies, about a third of the CPU time of a small request.
    """

    def __init__(self) -> None:
        """An empty cache."""
        super().__init__()
        self._proxies_by_host: dict[str, dict[str, str]] = {}

    def send(self, request: requests.PreparedRequest, **kwargs: t.Any) -> requests.Response:
        """Send with the host's cached proxy settings (unless proxies are given)."""
        if "proxies" not in kwargs:
            parts = urlsplit(str(request.url))
            host = f"{parts.scheme}://{parts.netloc}"
            proxies = self._proxies_by_host.get(host)
            if proxies is None:
                proxies = resolve_proxies(request, dict(self.proxies), self.trust_env)
                self._proxies_by_host[host] = proxies
            kwargs["proxies"] = dict(proxies)
        return super().send(request, **kwargs)


class RateLimitGate:
    """A pause shared by every request of a tap after a 429.

    The request that got the 429 waits through its own retry; requests about to start
    wait here until the same moment, so concurrent workers do not keep hitting the limit.
    """

    def __init__(self) -> None:
        """No pause."""
        self._lock = threading.Lock()
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold new requests for ``seconds`` from now (never shortens a pause)."""
        with self._lock:
            self._until = max(self._until, time.monotonic() + min(seconds, RATE_LIMIT_CAP_SECONDS))

    def wait(self, abort: threading.Event | None = None) -> None:
        """Return when no pause is in force (or ``abort`` is set)."""
        while (delay := self._until - time.monotonic()) > 0:
            if (abort or threading.Event()).wait(delay):
                return


class _Abandoned(Exception):
    """A page fetch given up because its walk ended first (not retried)."""


_worker = threading.local()


class _SeenKeys:
    """Bounded memory of primary keys already emitted in this run."""

    def __init__(self, capacity: int = DEDUPE_MEMORY) -> None:
        self.capacity = capacity
        self._keys: set[bytes] = set()
        self._order: collections.deque[bytes] = collections.deque()
        self.duplicates = 0

    def add(self, key: tuple[t.Any, ...]) -> bool:
        """Remember ``key``; return False when it was already seen."""
        digest = hashlib.blake2b(repr(key).encode(), digest_size=16).digest()
        if digest in self._keys:
            self.duplicates += 1
            return False
        self._keys.add(digest)
        self._order.append(digest)
        if len(self._order) > self.capacity:
            self._keys.discard(self._order.popleft())
        return True


class LagoStream(RESTStream[int]):
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
    """

    schema = StreamSchema(SCHEMAS)
    records_key: str | None = None
    extra_params: t.ClassVar[dict[str, t.Any]] = {}
    key_stand_ins: t.ClassVar[dict[str, t.Any]] = {}
    client_side_filter = False
    replication_precision = "s"
    paginated = True
    page_ahead = True
    is_sorted = False
    #: Whether ``start_date`` limits a first sync (facts) or not (dimensions: read whole).
    applies_start_date = True
    #: Whether ``end_date`` caps what is read and the bookmark (events and fees).
    applies_end_date = False
    extra_retry_statuses: t.Sequence[int] = (HTTPStatus.TOO_MANY_REQUESTS,)
    # One METRIC line per request floods the log; progress lines and the closing table
    # (tap_lago.progress) say the same in a readable form.
    _LOG_REQUEST_METRICS = False

    _seen: _SeenKeys | None = None
    _shaper: RecordShaper | None = None
    _signpost_value: str | None = None
    _max_bookmark: str | None = None
    _fast_path: tuple[Callable[..., None], Callable[[dict[str, t.Any]], bool]] | None = None
    _fast_path_checked = False
    _prefetched: dict[str, Future[t.Any]] | None = None
    _prefetch_pool: ThreadPoolExecutor | None = None
    #: Why the server refused this stream (a premium licence), once it did in this run.
    _unavailable: PremiumOnlyError | None = None
    _pending_version: int | None = None

    @property
    def url_base(self) -> str:
        """Lago API root, e.g. ``https://api.getlago.com/api/v1``."""
        return str(self.config["api_url"]).rstrip("/")

    @property
    def records_jsonpath(self) -> str:
        """Records live under the plural wrapper key."""
        return f"$.{self.records_key or self.name}[*]"

    @property
    def authenticator(self) -> BearerTokenAuthenticator:
        """``Authorization: Bearer <api_key>``."""
        return BearerTokenAuthenticator(token=str(self.config["api_key"]).strip())

    @property
    def timeout(self) -> int:
        """Per-request timeout in seconds (setting ``request_timeout``)."""
        return t.cast("int", self.config.get("request_timeout", 60))

    @property
    def requests_session(self) -> requests.Session:
        """The tap's shared session (connection pool sized to ``max_concurrency``)."""
        session = getattr(self._tap, "http_session", None)
        return session if isinstance(session, requests.Session) else super().requests_session

    @property
    def max_concurrency(self) -> int:
        """Requests of one list in flight at once (setting ``max_concurrency``)."""
        return max(1, int(self.config.get("max_concurrency", 4)))

    @property
    def rate_limit_gate(self) -> RateLimitGate:
        """The tap's shared 429 pause."""
        gate = getattr(self._tap, "rate_limit_gate", None)
        if not isinstance(gate, RateLimitGate):
            gate = RateLimitGate()
            self._tap.rate_limit_gate = gate  # type: ignore[attr-defined]
        return gate

    @property
    def progress(self) -> StreamProgress:
        """This stream's counters (shared through the tap)."""
        progress = getattr(self._tap, "progress", None)
        if not isinstance(progress, Progress):
            progress = Progress()
            self._tap.progress = progress  # type: ignore[attr-defined]
        return progress.of(self.name)

    def check_connection(self) -> None:
        """Ask for one record of this stream's list; a failure raises a one-line error.

        Goes through the retrying request, so 429s, 5xx and timeouts are retried as usual,
        while a refused connection, a DNS or TLS failure, 401, 403 or 404 fail at once.
        """
        request = requests.Request("GET", self.get_url(None), params={"page": 1, "per_page": 1})
        prepared = self.requests_session.prepare_request(request)
        response = self.request_decorator(self._send)(prepared, None)
        self.logger.info(
            "Connected to Lago at %s (HTTP %s for GET %s?per_page=1)",
            self.url_base,
            response.status_code,
            self.path,
        )

    def get_url(self, context: Context | None) -> str:
        """Fill ``{placeholders}`` in ``path`` from the context, URL-quoted."""
        url = self.url_base + (self.path or "")
        for key, value in (context or {}).items():
            url = url.replace(f"{{{key}}}", quote(str(value), safe=""))
        return url

    def get_new_paginator(self) -> BaseAPIPaginator[t.Any] | None:
        """Page-number pagination driven by ``meta.next_page``."""
        return LagoPaginator() if self.paginated else None

    def parse_response(self, response: requests.Response) -> Iterable[dict[str, t.Any]]:
        """Records under the wrapper key (a single object for single-object endpoints)."""
        body = response_body(response)
        records = body.get(self.records_key or self.name) if isinstance(body, dict) else None
        if isinstance(records, dict):
            return [records]
        records = records if isinstance(records, list) else []
        if records and self.parent_stream_type is None and self.max_concurrency > 1:
            self._prefetch_children(records)
        return records

    def get_url_params(self, context: Context | None, next_page_token: int | None) -> dict:
        """Paging parameters plus the stream's filters."""
        params: dict[str, t.Any] = dict(self.extra_params)
        if self.paginated:
            params["page"] = next_page_token or 1
            params["per_page"] = int(self.config.get("page_size", 100))
        params.update(self.filter_params(context))
        return params

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:
        """Server-side filters for this stream (override)."""
        return {}

    # Replication -------------------------------------------------------------------

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
        """The ``end_date`` setting, if any."""
        value = self.config.get("end_date")
        return parse_setting_datetime(value) if value else None

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

    # Records -----------------------------------------------------------------------

    def _reset_seen(self) -> None:
        self._seen = _SeenKeys()
        self._max_bookmark = None
        for child in self.child_streams:
            t.cast("LagoStream", child)._reset_seen()

    def record_key(self, record: dict[str, t.Any]) -> tuple[t.Any, ...]:
        """The primary key of a record."""
        return tuple(map(record.get, self.primary_keys))

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
        if self._seen is None or top_level:
            self._reset_seen()
        seen = t.cast("_SeenKeys", self._seen)
        dupes_before = seen.duplicates
        progress = self.progress
        started = progress.start()
        emitted = False
        try:
            if self._unavailable is None:
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
            self._unavailable = exc
            self.logger.warning("%s", exc)
        finally:
            progress.seconds += time.monotonic() - started
        for child in self.child_streams:
            t.cast("LagoStream", child)._drop_prefetched()
        if seen.duplicates > dupes_before:
            self.logger.info(
                "%s: dropped %d records already emitted in this run (page shifts)",
                self.name,
                seen.duplicates - dupes_before,
            )

    def _filtered_records(
        self,
        records: Iterable[dict[str, t.Any]],
        context: Context | None,
        seen: _SeenKeys,
    ) -> Iterable[dict[str, t.Any]]:
        """Records past the bookmark (client-side filter) and not yet emitted, counted."""
        start = self.start_datetime(context) if self.client_side_filter else None
        keys, key_of = self.primary_keys, self.record_key
        progress = self.progress
        for record in records:
            record = self.prepare_record(record, context)  # noqa: PLW2901
            if start is not None:
                value = record.get(t.cast("str", self.replication_key))
                if value and parse_datetime(value) < start:
                    continue
            if keys and not seen.add(key_of(record)):
                continue
            progress.records += 1
            yield record

    def prepare_record(
        self,
        record: dict[str, t.Any],
        context: Context | None,
    ) -> dict[str, t.Any]:
        """Hook to add fields to a record before it is keyed (override)."""
        return record

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

    # Progress ------------------------------------------------------------------------

    def calculate_sync_cost(
        self,
        request: requests.PreparedRequest,
        response: requests.Response,
        context: Context | None,
    ) -> dict[str, int]:
        """Count a page read (called once per response used) and log progress now and then."""
        progress = self.progress
        if self.paginated:
            # A child stream walks one list per parent: its pages are counted, not totalled.
            total = response_meta(response).get("total_pages") if context is None else None
            progress.page(total)
        progress.maybe_log(self.logger)
        return {}

    def log_sync_costs(self) -> None:
        """At the end of the sync (the tap's last stream): the table of every stream."""
        streams = list(self._tap.streams.values())
        if not streams or streams[-1] is not self:
            return
        progress = getattr(self._tap, "progress", None)
        if isinstance(progress, Progress) and progress.streams:
            for line in ["Sync summary:", *progress.table()]:
                self._tap.logger.info("%s", line)

    def log(self, message: str, *args: t.Any, level: int = logging.INFO, **kwargs: t.Any) -> None:
        """Log; the SDK's "unhandled error" line drops to DEBUG for expected stops.

        An API error is reported in one line when the run ends; an abort is what
        ``--test`` asks for.
        """
        if message.startswith("An unhandled error occurred") and isinstance(
            sys.exc_info()[1], _EXPECTED_STOPS
        ):
            level = logging.DEBUG
        super().log(message, *args, level=level, **kwargs)

    def post_process(
        self, row: dict[str, t.Any], context: Context | None = None
    ) -> dict[str, t.Any] | None:
        """Exact decimals, unknown fields kept, no null key (:mod:`tap_lago.records`)."""
        if self._shaper is None:
            self._shaper = RecordShaper(self.name, self.schema, self.logger, self.key_stand_ins)
        return self._shaper.shape(row)

    # Concurrent paging --------------------------------------------------------------

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Records of every page, in page order; pages fetched ahead when allowed.

        With ``max_concurrency`` 1 (or a stream that may not page ahead) this is the SDK's
        own loop, one request at a time.
        """
        if self.paginated and self.page_ahead and self.max_concurrency > 1:
            return self._request_pages_ahead(context, self.max_concurrency)
        return super().request_records(context)

    def _request_pages_ahead(
        self, context: Context | None, workers: int
    ) -> Generator[dict[str, t.Any], None, None]:
        """Walk a list with up to ``workers`` page requests in flight.

        Page 1 is read first; its ``total_pages`` (and each later ``next_page``) tells how
        far ahead pages may be requested: from none (each page read in turn on this
        thread) up to ``2 * workers - 1`` pages beyond the one being emitted, as
        :meth:`_adapt_ahead` decides from how long each page was waited for. Each request
        goes through the SDK's retrying ``_request`` (backoff, ``validate_response``).
        Records come out in page order, and the walk ends, as the serial one does, at the
        first page without ``next_page`` or without records.

        A page read before its predecessor could miss a row pushed across their boundary
        by an insert in between, so each page's ``total_count`` is compared with its
        predecessor's: when it differs, the list changed between the two reads and the
        page is read again, after its predecessor, as a serial walk would have read it.
        """
        decorated = self.request_decorator(self._request)
        gate = self.rate_limit_gate
        abort = threading.Event()
        paginator = t.cast("LagoPaginator", self.get_new_paginator())
        pending: collections.deque[tuple[int, requests.PreparedRequest, Future[t.Any]]]
        pending = collections.deque()
        pool: ThreadPoolExecutor | None = None

        def prepare(page: int) -> requests.PreparedRequest:
            return self._prepare_request(context=context, page=LagoPaginator(page))

        def fetch(prepared: requests.PreparedRequest) -> requests.Response:
            gate.wait(abort)
            response = decorated(prepared, context)
            response_body(response)  # parsed in the worker, off the emitting thread
            return response

        def fetch_ahead(prepared: requests.PreparedRequest) -> requests.Response:
            _worker.abort = abort  # this pool's threads give up once the walk ends
            if abort.is_set():
                raise _Abandoned
            return fetch(prepared)

        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            try:
                page, prepared = 1, prepare(1)
                started = time.perf_counter()
                response = fetch(prepared)
                next_to_request, horizon, last_count = 2, 1, None
                emitted_at = time.perf_counter()
                ahead, ready_streak = self._adapt_ahead(0, 0, workers, 0.0, emitted_at - started)
                while True:
                    counter.increment()
                    self.update_sync_costs(prepared, response, context)
                    count = response_meta(response).get("total_count")
                    if page > 1 and count != last_count:
                        self.logger.info(
                            "%s: the list changed while paging (total_count %s, then %s); "
                            "reading page %d again",
                            self.name,
                            last_count,
                            count,
                            page,
                        )
                        prepared = prepare(page)
                        response = fetch(prepared)
                        counter.increment()
                        self.update_sync_costs(prepared, response, context)
                        count = response_meta(response).get("total_count")
                    last_count = count
                    records = self.parse_response(response)
                    if not records:
                        break
                    yield from records
                    paginator.advance(response)
                    if paginator.finished:
                        break
                    following = paginator.current_value
                    if following != page + 1:  # not the next page: drop what was fetched
                        self._drop(pending)
                        next_to_request = following
                    page = following
                    meta = response_meta(response)
                    horizon = max(horizon, page, int(meta.get("total_pages") or 0))
                    waited = time.perf_counter()
                    if not pending and not ahead:
                        # Nothing ahead: read the page here, with no thread handoff.
                        prepared = prepare(page)
                        response = fetch(prepared)
                        next_to_request = page + 1
                    else:
                        while len(pending) <= ahead and next_to_request <= horizon:
                            if pool is None:
                                pool = ThreadPoolExecutor(workers, f"tap-lago-{self.name}")
                            upcoming = prepare(next_to_request)
                            pending.append(
                                (next_to_request, upcoming, pool.submit(fetch_ahead, upcoming))
                            )
                            next_to_request += 1
                        number, prepared, future = pending.popleft()
                        if number != page:  # pragma: no cover - the window starts at page
                            msg = f"{self.name}: page {number} fetched where {page} was expected"
                            raise RuntimeError(msg)
                        response = future.result()
                    now = time.perf_counter()
                    ahead, ready_streak = self._adapt_ahead(
                        ahead, ready_streak, workers, waited - emitted_at, now - waited
                    )
                    emitted_at = now
            finally:
                abort.set()
                self._drop(pending)
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _adapt_ahead(
        ahead: int,
        ready_streak: int,
        workers: int,
        busy: float,
        wait: float,
    ) -> tuple[int, int]:
        """How many pages to request beyond the next one, after waiting for a page.

        ``busy`` seconds were spent emitting the previous page, ``wait`` seconds waiting
        for this one. With nothing ahead, the window opens only when the
        wait was longer than both the emitting and :data:`PAGE_AHEAD_AFTER_SECONDS` (a
        fast API is read inline: threads would only add handoffs and GIL contention).
        Otherwise it doubles when waiting took longer than emitting (the API is the
        bottleneck) and shrinks by one after a run of pages that were already there.
        """
        if wait > busy and (ahead or wait > PAGE_AHEAD_AFTER_SECONDS):
            return min(2 * workers - 1, max(1, 2 * ahead)), 0
        if not ahead:
            return 0, 0
        ready_streak += 1
        if ready_streak >= PAGE_AHEAD_SHRINK_AFTER:
            return ahead - 1, 0
        return ahead, ready_streak

    @staticmethod
    def _drop(pending: collections.deque[tuple[int, t.Any, Future[t.Any]]]) -> None:
        """Cancel page requests no longer wanted (those running finish in the background)."""
        while pending:
            pending.popleft()[2].cancel()

    # Child requests ahead -----------------------------------------------------------

    def _prefetch_children(self, records: list[dict[str, t.Any]]) -> None:
        """Start the first request of each selected child stream for a page of parents.

        The SDK syncs a parent's children one parent record at a time; their requests are
        started here, ``max_concurrency`` at a time, as soon as the parent page is read,
        and each child sync then takes its response (see :meth:`_request`).
        """
        children = [
            t.cast("LagoStream", child)
            for child in self.child_streams
            if child.selected or child.has_selected_descendents
        ]
        if not children:
            return
        for record in records:
            for context in self.generate_child_contexts(record, None):
                if context:
                    for child in children:
                        child.prefetch(dict(context))

    def prefetch(self, context: Context) -> None:
        """Start this (child) stream's first request for ``context`` in the background."""
        if self._unavailable is not None:
            return
        prepared = self._prepare_request(context=context, page=LagoPaginator(1))
        url = str(prepared.url)
        if self._prefetched is None:
            self._prefetched = {}
        if url in self._prefetched:
            return
        if self._prefetch_pool is None:
            self._prefetch_pool = ThreadPoolExecutor(self.max_concurrency, f"tap-lago-{self.name}")
        send = self.request_decorator(self._send)
        gate = self.rate_limit_gate

        def fetch() -> requests.Response:
            gate.wait()
            response = send(prepared, context)
            response_body(response)
            return response

        self._prefetched[url] = self._prefetch_pool.submit(fetch)

    def _drop_prefetched(self) -> None:
        """Forget prefetched requests no child sync took (e.g. filtered parents)."""
        for future in (self._prefetched or {}).values():
            future.cancel()
        self._prefetched = None

    def _request(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """The prefetched response for this request if there is one, else one attempt.

        A prefetched request that failed in any way is simply asked again here, so retries
        and errors are exactly those of a request made now.
        """
        if self._prefetched:
            future = self._prefetched.pop(str(prepared_request.url), None)
            if future is not None:
                with contextlib.suppress(Exception):  # a failed one is asked again below
                    return t.cast("requests.Response", future.result())
        return self._send(prepared_request, context)

    def _send(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """One attempt (the SDK's); a 429 also pauses the tap's other requests.

        A connection no retry can fix (DNS, refused, TLS) fails at once, in one line.
        """
        abort = getattr(_worker, "abort", None)
        if abort is not None and abort.is_set():
            raise _Abandoned
        progress = self.progress
        try:
            response = super()._request(prepared_request, context)
        except RetriableAPIError as exc:
            limited = exc.response is not None and exc.response.status_code == 429
            progress.count_request(rate_limited=limited)
            wait = self._rate_limit_seconds(exc)
            if wait:
                self.rate_limit_gate.pause(wait)
            raise
        except requests.ConnectionError as exc:
            progress.count_request()
            fatal = connection_error(exc, self.url_base)
            if fatal is not None:
                raise fatal from exc
            raise
        except Exception:
            progress.count_request()
            raise
        progress.count_request()
        return response

    # Record output -----------------------------------------------------------------

    def _write_record_message(self, record: dict[str, t.Any]) -> None:
        """Write a RECORD: straight to the fast writer when nothing would change it.

        The SDK's path (deselected properties, type conformance, stream maps, flattening)
        is taken when a stream map or flattening is configured, a property is deselected,
        the writer is not the tap's own, or the record does not already match its schema.
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

    def generate_child_contexts(
        self, record: dict[str, t.Any], context: Context | None
    ) -> Iterable[Context | None]:
        """No child contexts at all for a stream without child streams."""
        if not self.child_streams:
            return ()
        return super().generate_child_contexts(record, context)

    # Errors and retries --------------------------------------------------------------

    def validate_response(self, response: requests.Response) -> None:
        """Classify a response: retry 429/5xx, fail fast on auth errors."""
        status = response.status_code
        if status < HTTPStatus.BAD_REQUEST:
            return
        where = f"GET {self._safe_url(response)}"
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            msg = f"{self.name}: HTTP {status} {response.reason} from {where}"
            raise RetriableAPIError(msg, response)
        code = _error_code(response) if status == HTTPStatus.FORBIDDEN else None
        if code == "feature_unavailable":
            msg = (
                f"{self.name}: skipped: this endpoint needs a Lago premium licence "
                f"(HTTP 403 feature_unavailable for {where}); deselect the stream to "
                "silence this line"
            )
            raise PremiumOnlyError(msg)
        if code and code.startswith("read_action_not_allowed_for_"):
            msg = (
                f"{self.name}: the API key may not read this resource (HTTP 403 {code} for "
                f"{where}). Give the key read access to it in Lago (Developers > API keys) "
                f"or deselect the stream {self.name}."
            )
            raise FatalAPIError(msg)
        if status in {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}:
            msg = (
                f"{self.name}: Lago refused the request with HTTP {status} "
                f"{response.reason} for {where}. Check the api_key setting (and that "
                f"api_url points at the right Lago region or host: {INSTANCES})."
            )
            raise FatalAPIError(msg)
        body = " ".join(response.text[:500].split())
        if self.parent_stream_type is not None and status in self.skippable_child_statuses:
            msg = f"{self.name}: HTTP {status} for {where}: {body}"
            raise ParentGoneError(msg)
        if status == HTTPStatus.NOT_FOUND:
            if _error_code(response) not in {None, "resource_not_found"}:
                # e.g. customer_not_found: an object the request names is gone.
                msg = f"{self.name}: HTTP {status} for {where}: {body}"
                raise ParentGoneError(msg)
            msg = (
                f"{self.name}: HTTP 404 for {where}: no Lago API list there. Check api_url: "
                f"the root of the Lago API, ending in /api/v1 ({INSTANCES})."
            )
            raise FatalAPIError(msg)
        msg = f"{self.name}: HTTP {status} {response.reason} for {where}: {body}"
        if status in {HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY}:
            raise ListRefusedError(msg)
        raise FatalAPIError(msg)

    #: Statuses that mean "the parent object is gone": skip this child request.
    skippable_child_statuses: t.ClassVar[frozenset[int]] = frozenset({HTTPStatus.NOT_FOUND})

    @staticmethod
    def _safe_url(response: requests.Response) -> str:
        """The request URL (the key travels in a header, never in the URL)."""
        return str(response.request.url if response.request else response.url)

    def backoff_max_tries(self) -> int:
        """First attempt plus ``max_retries`` retries."""
        return int(self.config.get("max_retries", 8)) + 1

    def backoff_jitter(self, value: float) -> float:
        """Jitter is applied inside :meth:`backoff_wait_generator`."""
        return value

    def backoff_wait_generator(self) -> Generator[float, t.Any, None]:
        """Wait what a 429 asks for, otherwise exponential backoff with jitter."""
        exception = yield  # type: ignore[misc]
        attempt = 0
        while True:
            wait = self._rate_limit_wait(exception)
            if wait is None:
                ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
                wait = random.uniform(ceiling / 2, ceiling)
            attempt += 1
            exception = yield wait

    @classmethod
    def _rate_limit_wait(cls, exception: BaseException | None) -> float | None:
        wait = cls._rate_limit_seconds(exception)
        if wait is None:
            return None
        return wait + random.uniform(0, min(1.0, wait * 0.1))

    @staticmethod
    def _rate_limit_seconds(exception: BaseException | None) -> float | None:
        """What a 429 asks to wait (X-RateLimit-Reset / Retry-After), capped; else None."""
        response = getattr(exception, "response", None)
        if response is None or response.status_code != HTTPStatus.TOO_MANY_REQUESTS:
            return None
        waits = []
        for header in ("X-RateLimit-Reset", "Retry-After"):
            raw = response.headers.get(header)
            try:
                waits.append(float(raw))
            except (TypeError, ValueError):
                continue
        if not waits:
            return None
        return min(max(*waits, 0.0), RATE_LIMIT_CAP_SECONDS)

    def backoff_handler(self, details: Details) -> None:
        """Log each retry without request details (no headers, no key)."""
        self.progress.count_retry()
        exc = details.get("exception")
        self.log(
            "%s: retrying in %.2f s (attempt %d of %d) after %s",
            self.name,
            details.get("wait") or 0.0,
            details.get("tries"),
            self.backoff_max_tries(),
            exc if isinstance(exc, RetriableAPIError) else type(exc).__name__,
            level=logging.WARNING,
        )


class LagoChildStream(LagoStream):
    """A stream read once per parent record; a vanished parent is logged and skipped."""

    state_partitioning_keys: t.ClassVar[list[str]] = []

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Like the base, but a 404 on the parent's URL skips that parent."""
        try:
            yield from super().get_records(context)
        except ParentGoneError as exc:
            self.logger.warning("Skipping %s for %s: %s", self.name, dict(context or {}), exc)


class LagoWindowedStream(LagoStream):
    """A list read in time windows, oldest first; the bookmark moves as each one completes.

    Subclasses name the list's inclusive time filters in ``window_params``. Windows run
    from the bookmark minus the lookback (else ``start_date``, else the oldest record) to
    the signpost (the sync's start, or ``end_date``), ``events_window_days`` long (wider
    when that would make more than :data:`MAX_WINDOWS`). After
    each window the bookmark becomes its end and a STATE message is written, so a run
    killed mid-backfill resumes at its last completed window.
    """

    window_params: tuple[str, str] = ("", "")
    replication_precision = "ms"
    applies_end_date = True
    _window: tuple[dt.datetime, dt.datetime] | None = None

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:  # noqa: D102
        low, high = self._window or (None, self.signpost_datetime())
        params = {self.window_params[1]: api_datetime(high)}
        if low is not None:
            params[self.window_params[0]] = api_datetime(low)
        return params

    def window_start(self, context: Context | None) -> dt.datetime | None:
        """Where the first window begins: the sync's start minus the lookback."""
        start = self.start_datetime(context)
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
            params = {"per_page": 1, "page": page, self.window_params[1]: api_datetime(end)}
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
