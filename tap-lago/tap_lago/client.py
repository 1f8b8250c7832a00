"""HTTP layer shared by every tap-lago stream: auth, paging, retries, replication."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import random
import typing as t
from http import HTTPStatus
from urllib.parse import quote

from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.helpers.types import Context
from singer_sdk.pagination import BaseAPIPaginator
from singer_sdk.schema.source import SchemaDirectory, StreamSchema

from tap_lago import schemas

if t.TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    import requests
    from backoff.types import Details

SCHEMAS = SchemaDirectory(schemas)

#: Keys remembered per stream and run to drop duplicates caused by shifting offset pages.
#: Each key is stored as a 128-bit digest (about 80 bytes with set and queue overhead, so
#: about 80 MB at the cap). Past the cap the oldest keys are forgotten: page-shift
#: duplicates are always among the most recently emitted records, so a window this large
#: only lets a duplicate through if more than a million rows shift during one sync.
DEDUPE_MEMORY = 1_000_000

#: Exponential backoff (seconds) for 5xx, timeouts and dropped connections: base * 2**n,
#: capped, with full jitter between half and all of it. Tests may lower the base.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
#: Upper bound on a server-requested wait (X-RateLimit-Reset / Retry-After).
RATE_LIMIT_CAP_SECONDS = 300.0

_CANONICAL = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_datetime(value: str | dt.datetime) -> dt.datetime:
    """Parse an ISO-8601 value (``Z`` or offset) into an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def canonical(value: str | dt.datetime) -> str:
    """One string format for bookmarks, so string comparisons order them correctly."""
    return parse_datetime(value).strftime(_CANONICAL)


def api_datetime(value: dt.datetime) -> str:
    """Format a datetime as Lago query filters expect (ISO 8601, UTC, milliseconds)."""
    return (
        value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class ParentGoneError(FatalAPIError):
    """A child request found its parent object gone (deleted mid-sync)."""


class LagoPaginator(BaseAPIPaginator[int]):
    """Page numbers from ``meta.next_page``; stops when it is null (or the page is empty).

    ``total_count``/``total_pages`` are never used: Lago caches them for up to 30 minutes.
    """

    def __init__(self) -> None:
        """Start at page 1."""
        super().__init__(1)

    def has_more(self, response: requests.Response) -> bool:  # noqa: D102
        return self.get_next(response) is not None

    def get_next(self, response: requests.Response) -> int | None:  # noqa: D102
        meta = response.json().get("meta") or {}
        next_page = meta.get("next_page")
        return int(next_page) if next_page else None


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
        paginated: False for single-object endpoints.
    """

    schema = StreamSchema(SCHEMAS)
    records_key: str | None = None
    extra_params: t.ClassVar[dict[str, t.Any]] = {}
    client_side_filter = False
    replication_precision = "s"
    paginated = True
    is_sorted = False
    extra_retry_statuses: t.Sequence[int] = (HTTPStatus.TOO_MANY_REQUESTS,)

    _seen: _SeenKeys | None = None
    _signpost_value: str | None = None

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
        return BearerTokenAuthenticator(token=self.config["api_key"])

    @property
    def timeout(self) -> int:
        """Per-request timeout in seconds (setting ``request_timeout``)."""
        return t.cast("int", self.config.get("request_timeout", 60))

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
        """Where this sync starts: the bookmark, else ``start_date``, else None."""
        value = self.get_starting_replication_key_value(context)
        return parse_datetime(value) if value else None

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
        """Track bookmarks in one canonical format so string comparison is time order."""
        key = self.replication_key
        if key and latest_record.get(key):
            latest_record = {**latest_record, key: canonical(latest_record[key])}
        super()._increment_stream_state(latest_record, context=context)

    # Records -----------------------------------------------------------------------

    def _reset_seen(self) -> None:
        self._seen = _SeenKeys()
        for child in self.child_streams:
            t.cast("LagoStream", child)._reset_seen()

    def record_key(self, record: dict[str, t.Any]) -> tuple[t.Any, ...]:
        """The primary key of a record."""
        return tuple(record.get(k) for k in self.primary_keys)

    def get_records(self, context: Context | None) -> Iterable[dict[str, t.Any]]:
        """Request every page, keep records past the bookmark, drop repeated keys."""
        if self._seen is None or (context is None and self.parent_stream_type is None):
            self._reset_seen()
        seen = t.cast("_SeenKeys", self._seen)
        start = self.start_datetime(context) if self.client_side_filter else None
        dupes_before = seen.duplicates
        for record in self.request_records(context):
            record = self.prepare_record(record, context)  # noqa: PLW2901
            if start is not None:
                value = record.get(t.cast("str", self.replication_key))
                if value and parse_datetime(value) < start:
                    continue
            if self.primary_keys and not seen.add(self.record_key(record)):
                continue
            yield record
        if seen.duplicates > dupes_before:
            self.logger.info(
                "%s: dropped %d records already emitted in this run (page shifts)",
                self.name,
                seen.duplicates - dupes_before,
            )

    def prepare_record(
        self,
        record: dict[str, t.Any],
        context: Context | None,
    ) -> dict[str, t.Any]:
        """Hook to add fields to a record before it is keyed (override)."""
        return record

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
        if status in {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}:
            msg = (
                f"{self.name}: Lago refused the request with HTTP {status} "
                f"{response.reason} for {where}. Check the api_key setting (and that "
                f"api_url points at the right Lago region or host)."
            )
            raise FatalAPIError(msg)
        body = response.text[:500]
        if self.parent_stream_type is not None and status in self.skippable_child_statuses:
            msg = f"{self.name}: HTTP {status} for {where}: {body}"
            raise ParentGoneError(msg)
        msg = f"{self.name}: HTTP {status} {response.reason} for {where}: {body}"
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

    @staticmethod
    def _rate_limit_wait(exception: BaseException | None) -> float | None:
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
        wait = min(max(*waits, 0.0), RATE_LIMIT_CAP_SECONDS)
        return wait + random.uniform(0, min(1.0, wait * 0.1))

    def backoff_handler(self, details: Details) -> None:
        """Log each retry without request details (no headers, no key)."""
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
