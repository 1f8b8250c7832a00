"""Walking Lago's paged lists: one page at a time, or pages fetched ahead.

Pages are numbered (``page``, ``per_page``) and the walk follows ``meta.next_page``.
:class:`PagingStream` builds each page's request through the SDK's public
``get_http_request`` hook, walks the list serially or with pages requested ahead
(``max_concurrency``), and starts the first request of each child stream as soon as a
page of parents is read.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import typing as t
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote

from singer_sdk.pagination import BaseAPIPaginator, SinglePagePaginator
from singer_sdk.streams.rest import PageContext

from tap_lago.parsing import response_body, response_meta
from tap_lago.transport import TransportStream

if t.TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    import requests
    from singer_sdk.helpers.types import Context

#: Page-ahead starts with none: a page is read on the emitting thread until one took
#: longer than this (and than emitting the previous page) to arrive. Against a fast API,
#: threads cost more (handoffs, GIL contention) than the wait they would hide.
PAGE_AHEAD_AFTER_SECONDS = 0.01
#: The ``max_concurrency`` default: enough to hold the default pace (48 requests/s) up
#: to about 300 ms per request.
MAX_CONCURRENCY = 16
#: Pages in a row already there when wanted before one fewer is requested ahead.
PAGE_AHEAD_SHRINK_AFTER = 8
#: The ``page_size`` default (Lago's own default ``per_page``).
PAGE_SIZE = 100
#: The ``events_page_size`` default: Lago sets no maximum (LAGO_API_BEHAVIOUR.md §1) and
#: its rate limit counts requests, so the one list of millions of rows reads more per
#: request (a tenth of the requests, their budget and their CPU time).
EVENTS_PAGE_SIZE = 1000


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


class LeadPages:
    """Pages of the streams to sync next, fetched before their turn.

    At most ``limit`` wait (requested and not yet taken), on ``limit`` threads of their own.
    """

    def __init__(self, limit: int) -> None:
        """Nothing waiting yet."""
        self.limit = limit
        self.pool = ThreadPoolExecutor(limit, "tap-lago-ahead")
        self.lock = threading.Lock()
        self.waiting = 0


#: Guards the creation of a stream's prefetch pool and the entries of its prefetch table.
_PREFETCH_LOCK = threading.Lock()


class _Abandoned(Exception):
    """A page fetch given up because its walk ended first (not retried)."""


Send = t.Callable[["requests.PreparedRequest", "Context | None"], "requests.Response"]


class PagingStream(TransportStream):
    """Requests a stream's pages and parses their records."""

    #: Wrapper key of the list in the response body (default: the stream's name).
    records_key: str | None = None
    #: Fixed query parameters (e.g. ``status[]`` for subscriptions).
    extra_params: t.ClassVar[dict[str, t.Any]] = {}
    #: False for single-object endpoints.
    paginated = True
    #: Whether pages may be fetched ahead concurrently (``max_concurrency``).
    page_ahead = True
    #: The setting that sizes this stream's pages, and its default.
    page_size_setting = "page_size"
    default_page_size = PAGE_SIZE
    #: Whether the first page of this (top-level) stream may be fetched before its turn,
    #: while earlier streams sync (see :meth:`request_ahead`).
    first_page_ahead = True

    _prefetched: dict[str, Future[t.Any]] | None = None
    #: Pages fetched ahead of this stream's turn, counted in ``_lead`` until taken.
    _lead: LeadPages | None = None
    _lead_urls: set[str] | None = None
    #: Whether this stream's own sync began (nothing more is then fetched ahead for it).
    _turn = False
    #: The highest page fetched ahead of the turn, and the last page the list has.
    _lead_high = 0
    _lead_last = 0
    #: Whether the walk may end before the last page (then no page is read ahead of turn).
    stops_early = False
    _prefetch_pool: ThreadPoolExecutor | None = None
    #: Pages requested ahead when the stream's previous list (e.g. event window) ended.
    _ahead_before = 0

    @property
    def records_jsonpath(self) -> str:
        """Records live under the plural wrapper key."""
        return f"$.{self.records_key or self.name}[*]"

    @property
    def max_concurrency(self) -> int:
        """Requests of one list in flight at once (setting ``max_concurrency``)."""
        return max(1, int(self.config.get("max_concurrency", MAX_CONCURRENCY)))

    def get_url(self, context: Context | None) -> str:
        """Fill ``{placeholders}`` in ``path`` from the context, URL-quoted."""
        url = self.url_base + (self.path or "")
        for key, value in (context or {}).items():
            url = url.replace(f"{{{key}}}", quote(str(value), safe=""))
        return url

    def get_new_paginator(self) -> BaseAPIPaginator[t.Any] | None:
        """Page-number pagination driven by ``meta.next_page``."""
        return LagoPaginator() if self.paginated else None

    def get_url_params(self, context: Context | None, next_page_token: int | None) -> dict:
        """Paging parameters plus the stream's filters."""
        params: dict[str, t.Any] = dict(self.extra_params)
        if self.paginated:
            params["page"] = next_page_token or 1
            params["per_page"] = int(
                self.config.get(self.page_size_setting) or self.default_page_size
            )
        params.update(self.filter_params(context))
        return params

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:
        """Server-side filters for this stream (override)."""
        return {}

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

    def prepare_page(self, context: Context | None, token: t.Any) -> requests.PreparedRequest:
        """The request of one page, from the public ``get_http_request`` hook."""
        request = self.get_http_request(
            page=PageContext(stream_context=context, next_page_token=token)
        )
        body_key = "json" if self.payload_as_json else "data"
        return self.build_prepared_request(
            method=request.method,
            url=request.url,
            params=request.encode_params(),
            headers=request.headers,
            **{body_key: request.data},
        )

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

    # The walk --------------------------------------------------------------------------

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Records of every page, in page order; pages fetched ahead when allowed.

        With ``max_concurrency`` 1 (or a stream that may not page ahead) one request at
        a time, as the SDK's own loop does.
        """
        if self.paginated and self.page_ahead and self.max_concurrency > 1:
            return self._request_pages_ahead(context, self.max_concurrency)
        return self._request_pages(context)

    def _attempt(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """The prefetched response for this request if there is one, else one attempt.

        A prefetched request is the first attempt of this one: its response is returned,
        or its error raised here, so retries (of :meth:`request_decorator` around this)
        and errors are exactly those of a request made now. One cancelled before it was
        sent is sent now.
        """
        if self._prefetched:
            url = str(prepared_request.url)
            future = self._prefetched.pop(url, None)
            if future is not None:
                self._taken(url)
                if not future.cancelled():
                    return t.cast("requests.Response", future.result())
        return self._send(prepared_request, context)

    def _request_pages(self, context: Context | None) -> Generator[dict[str, t.Any], None, None]:
        """Walk the list one page at a time (the SDK's loop, through public hooks)."""
        paginator = self.get_new_paginator() or SinglePagePaginator()
        send = self.request_decorator(self._attempt)
        pages = 0
        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            while not paginator.finished:
                prepared = self.prepare_page(context, paginator.current_value)
                response = send(prepared, context)
                counter.increment()
                self.update_sync_costs(prepared, response, context)
                records = iter(self.parse_response(response))
                try:
                    first = next(records)
                except StopIteration:
                    if paginator.continue_if_empty(response):
                        paginator.advance(response)
                        continue
                    self.log(
                        "Pagination stopped after %d pages because no records were "
                        "found in the last response",
                        pages,
                    )
                    break
                yield first
                yield from records
                pages += 1
                paginator.advance(response)

    def _request_pages_ahead(
        self, context: Context | None, workers: int
    ) -> Generator[dict[str, t.Any], None, None]:
        """Walk a list with up to ``workers`` page requests in flight.

        Page 1 is read first; its ``total_pages`` (and each later ``next_page``) tells how
        far ahead pages may be requested: from none (each page read in turn on this
        thread) up to ``2 * workers - 1`` pages beyond the one being emitted, as
        :meth:`_adapt_ahead` decides from how long each page was waited for (a list
        starts from where the stream's previous one, e.g. the last event window, ended).
        Each request is retried as any other (backoff, ``validate_response``). Records
        come out in page order, and the walk ends, as the serial one does, at the first page without
        ``next_page`` or without records.

        A page read before its predecessor could miss a row pushed across their boundary
        by an insert in between, so each page's ``total_count`` is compared with its
        predecessor's: when it differs, the list changed between the two reads and the
        page is read again, after its predecessor, as a serial walk would have read it.
        """
        gate = self.rate_limit_gate
        abort = threading.Event()

        def attempt_ahead(
            prepared: requests.PreparedRequest, context: Context | None
        ) -> requests.Response:
            if abort.is_set():  # the walk ended: give up, even between retries
                raise _Abandoned
            return self._attempt(prepared, context)

        send_here = self.request_decorator(self._attempt)
        send_ahead = self.request_decorator(attempt_ahead)
        paginator = t.cast("LagoPaginator", self.get_new_paginator())
        pending: collections.deque[tuple[int, requests.PreparedRequest, Future[t.Any]]]
        pending = collections.deque()
        pool: ThreadPoolExecutor | None = None

        def fetch(prepared: requests.PreparedRequest, send: Send = send_here) -> requests.Response:
            gate.wait(abort)
            response = send(prepared, context)
            response_body(response)  # parsed in the worker, off the emitting thread
            return response

        # A page's children (e.g. usage per subscription) keep its emitting slow: the next
        # page is asked for before the page is emitted, and its children's first requests
        # are started as soon as it arrives, so they follow the page's own without a gap.
        parent = self.parent_stream_type is None and self._children_to_prefetch()

        def fetch_ahead(prepared: requests.PreparedRequest) -> requests.Response:
            if abort.is_set():
                raise _Abandoned
            response = fetch(prepared, send_ahead)
            if parent and not abort.is_set():
                self._start_children(response)
            return response

        with self.get_http_request_counter() as counter:
            counter.with_context(context)
            ahead = self._ahead_before
            try:
                page, prepared = 1, self.prepare_page(context, 1)
                started = time.perf_counter()
                response = fetch(prepared)
                next_to_request, horizon, last_count = 2, 1, None
                emitted_at = time.perf_counter()
                ahead, ready_streak = self._adapt_ahead(
                    ahead, 0, workers, 0.0, emitted_at - started
                )
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
                        prepared = self.prepare_page(context, page)
                        response = fetch(prepared)
                        counter.increment()
                        self.update_sync_costs(prepared, response, context)
                        count = response_meta(response).get("total_count")
                    last_count = count
                    records = self.parse_response(response)
                    if not records:
                        break
                    following = response_meta(response).get("next_page")
                    if parent and not pending and following == page + 1:
                        if pool is None:
                            pool = ThreadPoolExecutor(workers, f"tap-lago-{self.name}")
                        upcoming = self.prepare_page(context, page + 1)
                        pending.append((page + 1, upcoming, pool.submit(fetch_ahead, upcoming)))
                        next_to_request = page + 2
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
                        prepared = self.prepare_page(context, page)
                        response = fetch(prepared)
                        next_to_request = page + 1
                    else:
                        while len(pending) <= ahead and next_to_request <= horizon:
                            if pool is None:
                                pool = ThreadPoolExecutor(workers, f"tap-lago-{self.name}")
                            upcoming = self.prepare_page(context, next_to_request)
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
                self._ahead_before = ahead
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

    # Child requests ahead -------------------------------------------------------------

    def _prefetch_children(self, records: list[dict[str, t.Any]]) -> None:
        """Start the first request of each selected child stream for a page of parents.

        The SDK syncs a parent's children one parent record at a time; their requests are
        started here, ``max_concurrency`` at a time, as soon as the parent page is read,
        and each child sync then takes its response (see :meth:`_attempt`).
        """
        children = [
            t.cast("PagingStream", child)
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
        if self.unavailable is not None:
            return
        with _PREFETCH_LOCK:  # parent pages read ahead start children on several workers
            if self._prefetch_pool is None:
                self._prefetch_pool = ThreadPoolExecutor(
                    self.max_concurrency, f"tap-lago-{self.name}"
                )
        self._prefetch(self.prepare_page(context, 1), context, self._prefetch_pool)

    def request_ahead(self, page: int | None) -> requests.PreparedRequest | None:
        """This top-level stream's request of ``page``, if it may be sent before its turn.

        The request its sync will make, as far as can be told now; the sync takes the
        response only for the very same URL (a wrong guess costs a request, nothing else).
        None for a child stream, a stream refused earlier in the run, or one whose first
        request cannot be told before its turn (``first_page_ahead`` False).
        """
        if self.parent_stream_type is not None:
            return None
        if self.unavailable is not None or not self.first_page_ahead:
            return None
        return self.prepare_page(None, page if self.paginated else None)

    def lead_pages(self, lead: LeadPages) -> None:
        """Fetch pages of this stream before its turn, while ``lead`` allows.

        First its first page; once that is in, the following ones (a list that may be
        read ahead: ``page_ahead``, not ``stops_early``), their children's requests
        started as each arrives. Each response waits until the stream's turn:
        :meth:`_attempt` hands it over, or its error, exactly as the request made then.
        The stream drops what its sync never asks for.
        """
        with lead.lock:
            if self._turn or lead.waiting >= lead.limit:
                return
            if self._lead_high:
                self._lead_more(lead)
                return
            if self._prefetched:
                return
            prepared = self.request_ahead(1)
            if prepared is not None:
                self._lead_page(lead, prepared, 1)

    def start_turn(self) -> None:
        """The stream's own sync begins: nothing more is fetched ahead for it."""
        lead = self._lead
        if lead is None:
            self._turn = True
            return
        with lead.lock:
            self._turn = True

    def _lead_page(self, lead: LeadPages, prepared: requests.PreparedRequest, page: int) -> None:
        """Fetch ``page`` ahead, counted in ``lead`` until taken (``lead.lock`` held)."""
        url = str(prepared.url)
        if url in (self._prefetched or {}):
            return
        lead.waiting += 1
        self._lead = lead
        self._lead_high = max(self._lead_high, page)
        if self._lead_urls is None:
            self._lead_urls = set()
        self._lead_urls.add(url)
        follow = self.paginated and self.page_ahead and not self.stops_early
        self._prefetch(
            prepared,
            None,
            lead.pool,
            then=(lambda response: self._lead_next(lead, page, response)) if follow else None,
        )

    def _lead_next(self, lead: LeadPages, page: int, response: requests.Response) -> None:
        """On the worker of a page read ahead: learn how many follow.

        A parent fetches the next ones at once (their children's requests are the longest
        wait); other streams when a stream starts (:meth:`lead_pages`, in sync order, so
        the streams synced sooner come first).
        """
        meta = response_meta(response)
        if meta.get("next_page") != page + 1:
            return
        with lead.lock:
            self._lead_last = max(self._lead_last, int(meta.get("total_pages") or page + 1))
            if not self._turn and self._children_to_prefetch():
                self._lead_more(lead)

    def _lead_more(self, lead: LeadPages) -> None:
        """The next pages up to the last known one, while ``lead`` allows (lock held)."""
        while lead.waiting < lead.limit and self._lead_high < self._lead_last:
            prepared = self.request_ahead(self._lead_high + 1)
            if prepared is None:
                return
            self._lead_page(lead, prepared, self._lead_high + 1)

    def _taken(self, url: str) -> None:
        """A page fetched ahead was handed over (or dropped): one fewer waiting."""
        lead = self._lead
        if lead is not None and self._lead_urls:
            with lead.lock:
                if url in self._lead_urls:
                    self._lead_urls.discard(url)
                    lead.waiting -= 1

    def _prefetch(
        self,
        prepared: requests.PreparedRequest,
        context: Context | None,
        pool: ThreadPoolExecutor,
        then: t.Callable[[requests.Response], None] | None = None,
    ) -> None:
        """Send ``prepared`` once in ``pool`` (paced, parsed) for :meth:`_attempt`.

        One attempt: a failure is the first failed attempt of the request that takes it,
        retried there as any other. ``then`` runs on the worker after a response (its
        errors are left out).
        """
        url = str(prepared.url)
        if url in (self._prefetched or {}):
            return
        gate = self.rate_limit_gate
        children = context is None and self._children_to_prefetch()

        def fetch() -> requests.Response:
            gate.wait()
            response = self._send(prepared, context)
            response_body(response)
            if children:
                self._start_children(response)
            if then is not None:
                with contextlib.suppress(Exception):
                    then(response)
            return response

        with _PREFETCH_LOCK:  # parent pages read ahead start children on several workers
            if self._prefetched is None:
                self._prefetched = {}
            if url not in self._prefetched:
                self._prefetched[url] = pool.submit(fetch)

    def _children_to_prefetch(self) -> bool:
        """Whether this stream starts child requests for its pages (selected children)."""
        return self.max_concurrency > 1 and any(
            child.selected or child.has_selected_descendents for child in self.child_streams
        )

    def _start_children(self, response: requests.Response) -> None:
        """Start the children's first requests for a page read ahead (on its worker).

        The emitting thread asks again when it parses the page (started ones are kept);
        a page that cannot be read here is left to it, with its errors.
        """
        body = response_body(response)
        records = body.get(self.records_key or self.name) if isinstance(body, dict) else None
        if isinstance(records, list) and records:
            with contextlib.suppress(Exception):
                self._prefetch_children(records)

    @property
    def prefetching(self) -> bool:
        """Whether requests of this stream were started ahead and not taken yet."""
        return bool(self._prefetched)

    def drop_prefetched(self) -> None:
        """Forget prefetched requests no sync took (e.g. filtered parents)."""
        for url, future in list((self._prefetched or {}).items()):
            future.cancel()
            self._taken(url)
        self._prefetched = None
