"""HTTP to Lago: the shared session, one request attempt, errors, retries, the 429 gate.

:class:`TransportStream` is the lowest layer of every stream (see :mod:`tap_lago.client`):
how a request is sent and authenticated, how a response is classified (retry, fail in
one line, or "the parent is gone"), and how long a retry waits.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import random
import ssl
import sys
import threading
import time
import typing as t
import zlib
from http import HTTPStatus
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    get_encoding_from_headers,
    resolve_proxies,
    select_proxy,
)
from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import (
    AbortedSyncFailedException,
    AbortedSyncPausedException,
    FatalAPIError,
    MaxRecordsLimitException,
    RetriableAPIError,
)

from tap_lago.pacing import Pacer, bucket_of
from tap_lago.parsing import error_code
from tap_lago.preflight import API_ERRORS, INSTANCES, connection_error
from tap_lago.progress import Progress, StreamProgress
from tap_lago.wire import Wire

if t.TYPE_CHECKING:
    from collections.abc import Generator

    from backoff.types import Details
    from singer_sdk.helpers.types import Context

#: Exponential backoff (seconds) for 5xx, timeouts and dropped connections: base * 2**n,
#: capped, with full jitter between half and all of it. Tests may lower the base.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
#: Bytes read from a response body at once (a page of 100 records is 30-300 KiB).
BODY_CHUNK_BYTES = 1 << 20
#: Upper bound on a server-requested wait (X-RateLimit-Reset / Retry-After).
RATE_LIMIT_CAP_SECONDS = 300.0


class ParentGoneError(FatalAPIError):
    """A child request found its parent object gone (deleted mid-sync)."""


class ListRefusedError(FatalAPIError):
    """A list request refused as invalid (400 or 422), e.g. for a filter it requires."""


class PremiumOnlyError(FatalAPIError):
    """403 ``feature_unavailable``: the endpoint needs a Lago premium licence.

    Not an error of the run: ``get_records`` skips the stream (one log line, no record,
    no ACTIVATE_VERSION, no bookmark moved) and the sync goes on.
    """


#: Exceptions after which the SDK's "An unhandled error occurred" line is only noise: the
#: error is reported in one line at the end, or the stop is wanted (``--test``).
_EXPECTED_STOPS = (
    *API_ERRORS,
    MaxRecordsLimitException,
    AbortedSyncFailedException,
    AbortedSyncPausedException,
)


#: The pace of a stream whose tap keeps none.
UNPACED = Pacer(None)


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


class WireAdapter(HTTPAdapter):
    """requests' adapter, sending GETs over keep-alive connections of the tap's own.

    urllib3 spends about 1.4 ms of CPU on each page (a body of a few hundred KiB read
    through several layers, headers parsed by the ``email`` package); :class:`Wire`
    spends a fraction of that. A GET without a proxy or a client certificate goes over
    a pooled :class:`Wire` (an idle one is checked still open first, as urllib3 does);
    anything else takes urllib3, its body read in one piece. Each request is sent once:
    a failure is requests' own exception (``SSLError``, ``ConnectTimeout``,
    ``ReadTimeout``, ``ConnectionError``, whose cause tells refused from unresolved),
    for the SDK's retries and the tap's one-line hints. A gzip or deflate body (a
    gateway may compress what was asked for uncompressed) is decoded as urllib3 would.
    """

    def __init__(self, **kwargs: t.Any) -> None:
        """The adapter of requests (``pool_maxsize`` etc.) and an empty pool of wires."""
        super().__init__(**kwargs)
        self._idle: dict[tuple[t.Any, ...], list[Wire]] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def send(  # noqa: PLR0917 - requests' signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: t.Any = None,
        verify: bool | str = True,
        cert: t.Any = None,
        proxies: t.Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request (see the class)."""
        url = str(request.url)
        parts = urlsplit(url)
        if (
            stream
            or cert
            or request.method != "GET"
            or request.body is not None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or select_proxy(url, dict(proxies or {}))
        ):
            return self._send_urllib3(request, stream, timeout, verify, cert, proxies)
        seconds = max(timeout) if isinstance(timeout, tuple) else timeout
        head = "".join(
            f"{name}: {value}\r\n"
            for name, value in request.headers.items()
            if name.lower() not in _WIRE_HEADERS
        ).encode("latin-1")
        key = (parts.scheme, parts.hostname, parts.port, head, str(verify), seconds)
        wire = self._idle_wire(key)
        if wire is None:
            context = self._context(verify) if parts.scheme == "https" else None
            wire = Wire(parts.hostname, parts.port, timeout=seconds, context=context, head=head)
            try:
                wire.connect()
            except ssl.SSLError as exc:
                raise requests.exceptions.SSLError(exc, request=request) from exc
            except TimeoutError as exc:
                raise requests.exceptions.ConnectTimeout(exc, request=request) from exc
            except OSError as exc:
                raise requests.exceptions.ConnectionError(exc, request=request) from exc
        try:
            answer = wire.exchange("GET", request.path_url, None)
        except TimeoutError as exc:
            wire.close()
            raise requests.exceptions.ReadTimeout(exc, request=request) from exc
        except (OSError, http.client.HTTPException) as exc:
            wire.close()
            raise requests.exceptions.ConnectionError(exc, request=request) from exc
        if answer.will_close:
            wire.close()
        else:
            with self._lock:
                self._idle.setdefault(key, []).append(wire)
        return _response(request, answer, self)

    def _idle_wire(self, key: tuple[t.Any, ...]) -> Wire | None:
        """An idle wire for ``key`` still open, if any (closed ones are dropped)."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                wire = idle.pop() if idle else None
            if wire is None or wire.still_open():
                return wire
            wire.close()

    def _send_urllib3(
        self, request: requests.PreparedRequest, stream: bool, *args: t.Any
    ) -> requests.Response:
        """The urllib3 way (``args``: timeout, verify, cert, proxies), the body in one piece."""
        response = super().send(request, True, *args)
        if not stream:
            # Response.content would read it in 10 KiB pieces, each through several layers.
            response._content = b"".join(response.iter_content(BODY_CHUNK_BYTES))
        return response

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        """The TLS context of a ``verify`` value, as urllib3 would check the server."""
        name = str(verify)
        with self._lock:
            context = self._contexts.get(name)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif isinstance(verify, str) and os.path.isdir(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                bundle = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
                context = ssl.create_default_context(cafile=bundle)
            with self._lock:
                self._contexts[name] = context
        return context

    def close(self) -> None:
        """Close every idle wire, then urllib3's pools."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for wires in idle.values():
            for wire in wires:
                wire.close()
        super().close()


#: Headers `Wire` writes itself (Host, Accept-Encoding: identity) or never needs.
_WIRE_HEADERS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding"})


def _response(
    request: requests.PreparedRequest, answer: t.Any, adapter: HTTPAdapter
) -> requests.Response:
    """A requests ``Response`` of a complete :class:`~tap_lago.wire.Answer`."""
    response = requests.Response()
    response.status_code = answer.status
    response.headers = CaseInsensitiveDict(answer.headers)
    response._content = _decoded(request, answer.content, response.headers)
    response._content_consumed = True  # type: ignore[attr-defined]
    response.encoding = get_encoding_from_headers(response.headers)
    try:
        response.reason = HTTPStatus(answer.status).phrase
    except ValueError:
        response.reason = ""
    response.url = str(request.url)
    response.request = request
    response.connection = adapter
    return response


def _decoded(
    request: requests.PreparedRequest, content: bytes, headers: t.Mapping[str, str]
) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate; others left as sent)."""
    coding = (headers.get("content-encoding") or "").strip().lower()
    if not content or coding in ("", "identity"):
        return content
    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompress(content, 16 + zlib.MAX_WBITS)
        if coding == "deflate":
            try:
                return zlib.decompress(content)
            except zlib.error:  # raw deflate, as some servers send it
                return zlib.decompress(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        msg = f"cannot decode a {coding} body: {exc}"
        raise requests.exceptions.ContentDecodingError(msg, request=request) from exc
    return content


class LagoAuthenticator(BearerTokenAuthenticator):
    """``Authorization: Bearer <api_key>``, set in the header alone.

    The SDK's authenticator also rebuilds the URL of every request to add query
    parameters, which this one never has: about a fifth of the CPU time of a request.
    """

    def authenticate_request(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the header (and the query parameters, were there any)."""
        if self.auth_params:
            return super().authenticate_request(request)
        request.headers.update(self.auth_headers)
        return request


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


class TransportStream(RESTStream[int]):
    """Sends a stream's requests: Bearer auth, the tap's session, retries, error lines."""

    extra_retry_statuses: t.Sequence[int] = (HTTPStatus.TOO_MANY_REQUESTS,)
    #: Why the server refused this stream (no premium licence), once it did in this run.
    unavailable: PremiumOnlyError | None = None
    #: Statuses that mean "the parent object is gone": skip this child request.
    skippable_child_statuses: t.ClassVar[frozenset[int]] = frozenset({HTTPStatus.NOT_FOUND})

    @property
    def url_base(self) -> str:
        """Lago API root, e.g. ``https://api.getlago.com/api/v1``."""
        return str(self.config["api_url"]).rstrip("/")

    @functools.cached_property
    def authenticator(self) -> BearerTokenAuthenticator:
        """``Authorization: Bearer <api_key>``."""
        return LagoAuthenticator(token=str(self.config["api_key"]).strip())

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
    def pacer(self) -> Pacer:
        """The tap's shared pace (``max_requests_per_second``; none under another tap)."""
        pacer = getattr(self._tap, "pacer", None)
        return pacer if isinstance(pacer, Pacer) else UNPACED

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
        """This stream's counters (shared through the tap); every layer counts into them."""
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

    def _send(
        self, prepared_request: requests.PreparedRequest, context: Context | None
    ) -> requests.Response:
        """One attempt: authenticate, send, classify; a 429 also pauses the tap's requests.

        Wrapped in :meth:`request_decorator` for retries. A connection no retry can fix
        (DNS, refused, TLS) fails at once, in one line.
        """
        progress = self.progress
        bucket = bucket_of(str(prepared_request.method), str(prepared_request.url))
        self.pacer.wait(bucket, time.sleep)
        try:
            response = self.requests_session.send(
                self.authenticator(prepared_request),
                timeout=self.timeout,
                allow_redirects=self.allow_redirects,
            )
            self.validate_response(response)
        except RetriableAPIError as exc:
            limited = exc.response is not None and exc.response.status_code == 429
            progress.count_request(rate_limited=limited)
            wait = self._rate_limit_seconds(exc)
            if wait:
                self.rate_limit_gate.pause(wait)
            if limited:  # the gate holds every request; the pace only slows down
                self.pacer.limited(bucket, 0.0)
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
        self.pacer.acknowledged(bucket)
        return response

    # Errors ---------------------------------------------------------------------------

    def validate_response(self, response: requests.Response) -> None:
        """Classify a response: retry 429/5xx, fail fast on auth errors."""
        status = response.status_code
        if status < HTTPStatus.BAD_REQUEST:
            return
        where = f"GET {self._safe_url(response)}"
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            msg = f"{self.name}: HTTP {status} {response.reason} from {where}"
            raise RetriableAPIError(msg, response)
        code = error_code(response) if status == HTTPStatus.FORBIDDEN else None
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
            if error_code(response) not in {None, "resource_not_found"}:
                # e.g. customer_not_found: an object the request names is gone.
                msg = f"{self.name}: HTTP {status} for {where}: {body}"
                raise ParentGoneError(msg)
            hint = self.not_found_hint()
            msg = f"{self.name}: HTTP 404 for {where}: no Lago API list there. {hint}."
            raise FatalAPIError(msg)
        msg = f"{self.name}: HTTP {status} {response.reason} for {where}: {body}"
        if status in {HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY}:
            raise ListRefusedError(msg)
        raise FatalAPIError(msg)

    def not_found_hint(self) -> str:
        """What to check when the API has no list at the URL (404 ``resource_not_found``)."""
        return f"Check api_url: the root of the Lago API, ending in /api/v1 ({INSTANCES})"

    @staticmethod
    def _safe_url(response: requests.Response) -> str:
        """The request URL (the key travels in a header, never in the URL)."""
        return str(response.request.url if response.request else response.url)

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

    # Retries --------------------------------------------------------------------------

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
