"""A list read in date windows at once, each window walked one page at a time (invoices).

Invoices come newest first (``issuing_date DESC``) and Lago caches their count for 30
minutes, so their pages cannot be fetched ahead: a row pushed across a page boundary by
an insert would go unnoticed. A window of issuing dates is a list of its own, though, with
the same order and the same paging. So the list is cut into windows of about equal size
(the dates at evenly spaced positions of the list, read with one-record requests), and up
to ``max_concurrency`` windows are walked at once, each in page order exactly as a serial
read walks the whole list. A row inserted meanwhile shifts rows within its own window
only, which a walk in page order survives (a shifted row is read twice and dropped as a
duplicate). The windows cover every date: the newest is open above, the oldest below.

Records of one window come out in page order; the windows' pages interleave as they
arrive. The stream's bookmark is unaffected: it is written when the stream completes,
after every window was read, as for any unsorted stream.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tap_lago.paging import LagoPaginator, PagingStream
from tap_lago.parsing import response_body, response_meta

if t.TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    import requests
    from singer_sdk.helpers.types import Context

#: Windows are only worth their one-record requests from this many pages per window on.
PAGES_PER_WINDOW = 4
#: Windows per worker: more, smaller windows than workers even out the last ones' wait.
WINDOWS_PER_WORKER = 2
#: Pages a window may hold ready for the emitting thread, per worker, before it waits.
QUEUED_PAGES_PER_WORKER = 2


@dataclass(frozen=True)
class DateWindow:
    """An inclusive range of dates; None leaves that side open."""

    low: dt.date | None = None
    high: dt.date | None = None

    def label(self) -> str:
        """``2026-01-01..2026-03-31`` (``..`` at an open side)."""
        low = self.low.isoformat() if self.low else ""
        high = self.high.isoformat() if self.high else ""
        return f"{low}..{high}"


@dataclass(frozen=True)
class WindowPage:
    """A page token: page ``page`` of ``window`` (``per_page`` overrides ``page_size``)."""

    window: DateWindow
    page: int
    per_page: int | None = None


def windows_between(boundaries: Iterable[dt.date]) -> list[DateWindow]:
    """Windows cut at ``boundaries`` (each the first date of a window), newest first.

    ``[d1, d2]`` (any order, repeats allowed) gives ``d_max..``, ``d_min..d_max - 1 day``
    and ``..d_min - 1 day``: every date is in exactly one window.
    """
    cuts = sorted(set(boundaries), reverse=True)
    windows: list[DateWindow] = []
    high: dt.date | None = None
    for cut in cuts:
        windows.append(DateWindow(cut, high))
        high = cut - dt.timedelta(days=1)
    windows.append(DateWindow(None, high))
    return windows


class DateWindowsStream(PagingStream):
    """Reads its list in date windows walked concurrently (see the module docstring).

    ``window_field`` names the date field the list is sorted on (newest first) and whose
    inclusive ``<field>_from`` / ``<field>_to`` filters select a window.
    """

    window_field = "issuing_date"

    def get_url_params(self, context: Context | None, next_page_token: t.Any) -> dict:
        """A window's page: the page, and the window's bounds over the stream's filters."""
        if not isinstance(next_page_token, WindowPage):
            return super().get_url_params(context, next_page_token)
        params = super().get_url_params(context, next_page_token.page)
        if next_page_token.per_page is not None:
            params["per_page"] = next_page_token.per_page
        window = next_page_token.window
        if window.low is not None:
            params[f"{self.window_field}_from"] = window.low.isoformat()
        if window.high is not None:
            params[f"{self.window_field}_to"] = window.high.isoformat()
        return params

    def request_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Every window's records; one page at a time with ``max_concurrency`` 1."""
        if context is not None or not self.paginated or self.max_concurrency <= 1:
            return super().request_records(context)
        return self._request_windows(context, self.max_concurrency)

    # The walk -------------------------------------------------------------------------

    def _request_windows(
        self, context: Context | None, workers: int
    ) -> Generator[dict[str, t.Any], None, None]:
        """Page 1 of the whole list, then the windows it suggests, up to ``workers`` at once.

        A list of fewer than ``2 * PAGES_PER_WINDOW`` pages is one window, walked here
        from that first page on. Otherwise page 1 becomes the first page of the newest
        window when every record on it falls in that window (else it is not used).
        """
        abort = threading.Event()
        everything = DateWindow()
        first_prepared = self.prepare_page(context, WindowPage(everything, 1))
        first = self._fetch(first_prepared, context, abort)
        windows = self._plan(context, first, workers, abort)
        with self.get_http_request_counter() as counter:
            counter.with_context(context)

            def emit(prepared: requests.PreparedRequest, response: requests.Response) -> list:
                counter.increment()
                self.update_sync_costs(prepared, response, context)
                return list(self.parse_response(response))

            if len(windows) == 1:
                for prepared, response in self._walk(context, everything, first, abort):
                    yield from emit(prepared, response)
                return
            reuse = self._first_page_fits(first, windows[0])
            self.logger.info(
                "%s: reading %d %s windows, up to %d at once, each in page order",
                self.name,
                len(windows),
                self.window_field,
                min(workers, len(windows)),
            )
            pages: queue.Queue[tuple[str, t.Any]] = queue.Queue(
                maxsize=QUEUED_PAGES_PER_WORKER * workers
            )

            def put(item: tuple[str, t.Any]) -> None:
                while not abort.is_set():
                    try:
                        pages.put(item, timeout=0.1)
                    except queue.Full:
                        continue
                    return

            def walk(window: DateWindow, first_page: requests.Response | None) -> None:
                try:
                    for pair in self._walk(context, window, first_page, abort):
                        put(("page", pair))
                    put(("done", window))
                except BaseException as exc:
                    put(("error", exc))

            pool = ThreadPoolExecutor(min(workers, len(windows)), f"tap-lago-{self.name}")
            try:
                for number, window in enumerate(windows):
                    pool.submit(walk, window, first if number == 0 and reuse else None)
                remaining = len(windows)
                while remaining:
                    kind, value = pages.get()
                    if kind == "error":
                        raise value
                    if kind == "done":
                        remaining -= 1
                        continue
                    yield from emit(*value)
            finally:
                abort.set()
                pool.shutdown(wait=False, cancel_futures=True)

    def _walk(
        self,
        context: Context | None,
        window: DateWindow,
        first: requests.Response | None,
        abort: threading.Event,
    ) -> Generator[tuple[requests.PreparedRequest, requests.Response], None, None]:
        """One window's pages in order, as the serial walk reads them (``first`` as page 1).

        Ends at the first page without ``next_page`` or without records.
        """
        paginator = LagoPaginator()
        while not paginator.finished:
            prepared = self.prepare_page(context, WindowPage(window, paginator.current_value))
            if first is not None and paginator.current_value == 1:
                response = first
            else:
                response = self._fetch(prepared, context, abort)
            yield prepared, response
            body = response_body(response)
            if not (isinstance(body, dict) and body.get(self.records_key or self.name)):
                return
            paginator.advance(response)

    def _fetch(
        self, prepared: requests.PreparedRequest, context: Context | None, abort: threading.Event
    ) -> requests.Response:
        """One request with the usual retries, after any 429 pause; the body parsed here.

        The first page may have been fetched ahead, before the stream's turn (``_attempt``).
        """
        self.rate_limit_gate.wait(abort)
        response = self.request_decorator(self._attempt)(prepared, context)
        response_body(response)
        return response

    # Planning -------------------------------------------------------------------------

    def _plan(
        self,
        context: Context | None,
        first: requests.Response,
        workers: int,
        abort: threading.Event,
    ) -> list[DateWindow]:
        """Windows of about equal size, from the dates at evenly spaced list positions.

        ``total_count`` may be cached (30 minutes for invoices): the cuts then land a
        little off even sizes, and a position past the end gives no cut. Any cuts give
        windows that cover every date.
        """
        meta = response_meta(first)
        count = int(meta.get("total_count") or 0)
        pages = int(meta.get("total_pages") or 0)
        windows = min(WINDOWS_PER_WORKER * workers, pages // PAGES_PER_WINDOW)
        if windows < 2:
            return [DateWindow()]
        positions = sorted({max(1, round(k * count / windows)) for k in range(1, windows)})
        with ThreadPoolExecutor(min(workers, len(positions)), f"tap-lago-{self.name}") as pool:
            dates = list(pool.map(lambda p: self._date_at(context, p, abort), positions))
        return windows_between(date for date in dates if date is not None)

    def _date_at(
        self, context: Context | None, position: int, abort: threading.Event
    ) -> dt.date | None:
        """The date of the record at ``position`` (1-based) of the list, by a one-record read."""
        prepared = self.prepare_page(context, WindowPage(DateWindow(), position, per_page=1))
        records = list(self._records_of(self._fetch(prepared, context, abort)))
        return self._date_of(records[0]) if records else None

    def _first_page_fits(self, first: requests.Response, window: DateWindow) -> bool:
        """Whether every record of the list's page 1 is in ``window`` (the newest)."""
        records = list(self._records_of(first))
        dates = [self._date_of(record) for record in records]
        return bool(records) and all(
            date is not None and (window.low is None or date >= window.low) for date in dates
        )

    def _records_of(self, response: requests.Response) -> list[dict[str, t.Any]]:
        body = response_body(response)
        records = body.get(self.records_key or self.name) if isinstance(body, dict) else None
        return records if isinstance(records, list) else []

    def _date_of(self, record: dict[str, t.Any]) -> dt.date | None:
        value = record.get(self.window_field)
        try:
            return dt.date.fromisoformat(str(value)[:10]) if value else None
        except ValueError:
            return None
