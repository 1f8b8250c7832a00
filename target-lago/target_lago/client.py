"""HTTP client for Lago writes: one pooled session, retries, and an error taxonomy."""

from __future__ import annotations

import email.utils
import functools
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import requests
from requests import certs
from requests.adapters import HTTPAdapter

from target_lago import __version__
from target_lago.mapping import json_default
from target_lago.pacing import Pacer, bucket_of
from target_lago.wire import Wire

LOGGER = logging.getLogger("target-lago")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A 403 with one of these codes refuses one record (a premium feature), not the key.
RECORD_LEVEL_403_CODES = frozenset({"feature_unavailable", "feature_not_available"})


class LagoError(Exception):
    """Base class for errors that stop a target-lago run."""


class LagoAuthError(LagoError):
    """Lago refused the API key (401) or its permissions (403): every write would fail."""


class LagoUnavailableError(LagoError):
    """Lago stayed unreachable or kept failing after every allowed retry."""


class LagoEndpointError(LagoError):
    """The API URL is wrong: DNS, refused connection, TLS, or no such endpoint (404)."""


@dataclass
class LagoResponse:
    """A final (non-retried) answer from Lago.

    The body is decoded on first use: an acknowledged events batch never needs it.

    Attributes:
        status: HTTP status code.
        content: The raw body.
        replayed: True when an earlier attempt of this request may have been applied by
            the server (its response was lost: timeout or dropped connection), so that
            a `value_already_exist` answer proves our own delivery.
        date: The response's Date header, when present.
    """

    status: int
    content: bytes = b""
    replayed: bool = False
    date: str | None = None
    sent_at: float = 0.0
    received_at: float = 0.0

    @functools.cached_property
    def body(self) -> Any:
        """Decoded JSON body, or None when the body is not JSON."""
        return _json(self.content)

    @functools.cached_property
    def server_time(self) -> float | None:
        """The response's Date header as epoch seconds, when present."""
        return _http_date(self.date)

    @property
    def server_sent_at(self) -> float:
        """When the first attempt was sent, by the server's clock as far as known.

        The Date header has whole seconds, so this may be up to a second early.
        """
        server = self.server_time
        offset = 0.0 if server is None else server - self.received_at
        return self.sent_at + offset

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str | None:
        """Lago's error `code` (e.g. `plan_not_found`), else its `error` text."""
        if isinstance(self.body, dict):
            code = self.body.get("code") or self.body.get("error")
            return str(code) if code is not None else None
        return None

    @property
    def error_details(self) -> Any:
        """Lago's `error_details` (field -> codes, or index -> field -> codes)."""
        if isinstance(self.body, dict):
            return self.body.get("error_details")
        return None


@dataclass
class _Reply:
    """A raw HTTP answer."""

    status: int
    headers: Mapping[str, str] | http.client.HTTPMessage
    content: bytes


class _NoResponse(Exception):
    """The request got no answer (timeout or lost connection): it may have been applied."""


class _Unreachable(Exception):
    """No connection could be made (DNS, refused, TLS): nothing was sent."""


def _unreachable(exc: BaseException) -> str | None:
    """What makes a connection error a wrong address rather than a passing fault."""
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused (nothing listens on that host and port)"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or type(exc).__name__}; http vs https?)"
    return None


class _Connections:
    """Keep-alive connections (`wire.Wire`) to one host, one per request in flight.

    About a tenth of the CPU time of `requests` per call, which matters at hundreds of
    event batches a second. Thread-safe: a connection serves one request at a time.
    """

    def __init__(self, api_url: str, headers: dict[str, str], timeout: float | None) -> None:
        parts = urllib.parse.urlsplit(api_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path
        self._head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode(
            "latin-1"
        )
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self._https:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._context = ssl.create_default_context(cafile=bundle or certs.where())  # type: ignore[attr-defined]
        self._idle: list[Wire] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> Wire:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            if connection.still_open():
                return connection
            connection.close()  # the server closed it while idle
        return Wire(
            self._host, self._port, timeout=self._timeout, context=self._context, head=self._head
        )

    def send(self, method: str, path: str, data: bytes | None) -> _Reply:
        """Send a request to `path` below the API URL.

        Raises:
            _Unreachable: When no connection could be made.
            _NoResponse: When no complete answer arrived.
        """
        connection = self._connection()
        try:
            answer = connection.exchange(method, f"{self._prefix}{path}", data)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            reason = _unreachable(exc)
            if reason is not None:
                raise _Unreachable(reason) from exc
            raise _NoResponse(f"{type(exc).__name__} (no response)") from exc
        with self._lock:
            keep = not answer.will_close and not self._closed
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()
        return _Reply(answer.status, answer.headers, answer.content)

    def close(self) -> None:
        """Close every idle connection; busy ones close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _Session:
    """`requests`, used when a proxy applies to the API URL.

    `http.client` does not read the proxy environment variables; `requests` does.
    """

    def __init__(self, api_url: str, headers: dict[str, str], timeout: float | None, size: int):
        self._prefix = api_url
        self._timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, size))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(headers)

    def send(self, method: str, path: str, data: bytes | None) -> _Reply:
        """Send a request to `path` below the API URL.

        Raises:
            _Unreachable: When no connection could be made.
            _NoResponse: When no complete answer arrived.
        """
        try:
            response = self._session.request(
                method, f"{self._prefix}{path}", data=data, timeout=self._timeout
            )
        except requests.exceptions.SSLError as exc:
            raise _Unreachable(f"the TLS handshake failed ({exc.__class__.__name__})") from exc
        except requests.exceptions.ProxyError as exc:
            msg = "the proxy named by HTTP(S)_PROXY cannot be reached (ProxyError)"
            raise _Unreachable(msg) from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            cause: BaseException | None = exc
            while cause is not None:
                reason = _unreachable(cause)
                if reason is not None:
                    raise _Unreachable(reason) from exc
                cause = cause.__cause__ or cause.__context__
            raise _NoResponse(f"{type(exc).__name__} (no response)") from exc
        return _Reply(response.status_code, response.headers, response.content)

    def close(self) -> None:
        """Close every pooled connection."""
        self._session.close()


class LagoClient:
    """Thread-safe Lago API client shared by every sink of a run.

    Retries 429 (waiting `X-RateLimit-Reset` or `Retry-After`), 5xx, timeouts and
    dropped connections with exponential backoff and jitter, at most `max_retries`
    times. 401 and 403 raise `LagoAuthError` at once. Other answers are returned to the
    caller, which decides per record. The API key never appears in a message.
    """

    backoff_base: float = 0.5
    """First backoff wait in seconds; doubled on every retry."""
    backoff_max: float = 30.0
    """Longest backoff wait in seconds."""
    announced_max: float = 300.0
    """Longest wait a 429's Retry-After or X-RateLimit-Reset may ask for."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 8,
        pool_size: int = 4,
        max_requests_per_second: float | None = None,
    ) -> None:
        """Create the client.

        Args:
            api_url: Base URL ending in `/api/v1`.
            api_key: Lago API key (sent as a Bearer token, never logged).
            timeout: Seconds to wait for a response (0: no limit).
            max_retries: Retries allowed per request after the first attempt.
            pool_size: Connections kept open (the number of requests in flight).
            max_requests_per_second: Pace of event ingestion (other endpoints keep Lago
                Cloud's proportions, see `Pacer`); None or 0: unpaced.
        """
        self.api_url = redact_url(api_url.rstrip("/"))  # for messages: no password
        self.timeout = timeout
        self.max_retries = max_retries
        headers = {
            "Authorization": f"Bearer {api_key.strip()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"target-lago/{__version__}",
        }
        seconds = timeout if timeout > 0 else None
        self._transport: _Connections | _Session
        root = api_url.rstrip("/")
        if requests.utils.get_environ_proxies(root):
            self._transport = _Session(root, headers, seconds, pool_size)
        else:
            self._transport = _Connections(root, headers, seconds)
        self._stopped = threading.Event()
        self.pacer = Pacer(max_requests_per_second)

    def stop(self) -> None:
        """Make retries still waiting give up, then close every pooled connection."""
        self._stopped.set()
        self._transport.close()

    def _sleep(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def pause(self, attempt: int) -> None:
        """Wait before trying again after `attempt` failed (exponential, with jitter).

        A 429's announced reset needs no pause here: its bucket is held by the pacer, so
        the next request of that kind waits for it.
        """
        wait = min(self.backoff_max, self.backoff_base * (2**attempt))
        self._sleep(random.uniform(wait / 2, wait))

    def _announced_reset(self, response: _Reply) -> float:
        for header in ("Retry-After", "X-RateLimit-Reset"):
            announced = _seconds(response.headers.get(header))
            if announced is not None:
                return min(self.announced_max, announced) + random.uniform(0, 0.1)
        return 1.0

    def post(self, path: str, body: dict | bytes) -> LagoResponse:
        """POST a JSON body (a dict, or JSON bytes), retrying transient failures.

        Args:
            path: Path below the API URL, e.g. `/events/batch`.
            body: JSON body.

        Returns:
            The first non-retriable answer.
        """
        return self.request("POST", path, body if isinstance(body, bytes) else encode(body))

    def get(self, path: str, params: Mapping[str, str] | None = None) -> LagoResponse:
        """GET a path below the API URL (with query parameters), retrying transient failures.

        Args:
            path: Path below the API URL, e.g. `/events/tx-1`.
            params: Query parameters.

        Returns:
            The first non-retriable answer.
        """
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self.request("GET", f"{path}{query}", None)

    def request(
        self, method: str, path: str, data: bytes | None, *, max_retries: int | None = None
    ) -> LagoResponse:
        """Send one request, retrying 429, 5xx, timeouts and dropped connections.

        Args:
            method: HTTP method.
            path: Path below the API URL, with its query string.
            data: The body, or None.
            max_retries: Retries allowed (default: the client's `max_retries`).

        Returns:
            The first non-retriable answer.

        Raises:
            LagoAuthError: On 401, or a 403 that refuses the key's permissions.
            LagoEndpointError: When the host cannot be reached (DNS, refused, TLS) or
                the endpoint does not exist (404 without a resource code).
            LagoUnavailableError: When every retry failed.
        """
        url = f"{self.api_url}{path.split('?', 1)[0]}"
        bucket = bucket_of(method, path)
        retries = self.max_retries if max_retries is None else max_retries
        replayed = False
        last_problem = ""
        sent_at = time.time()
        for attempt in range(retries + 1):
            if self._stopped.is_set():
                raise LagoError(f"{method} {url} abandoned: the run is stopping")
            response: _Reply | None = None
            self.pacer.wait(bucket, self._sleep)
            if self._stopped.is_set():
                raise LagoError(f"{method} {url} abandoned: the run is stopping")
            try:
                response = self._transport.send(method, path, data)
            except _Unreachable as exc:
                msg = (
                    f"Cannot reach Lago at api_url {self.api_url}: {exc}. Check the "
                    "api_url setting (scheme, host and port; US cloud: "
                    "https://api.getlago.com/api/v1, EU: https://api.eu.getlago.com/api/v1)."
                )
                raise LagoEndpointError(msg) from None
            except _NoResponse as exc:
                # The server may have applied the write before the connection failed.
                replayed = True
                last_problem = str(exc)
            else:
                status = response.status
                parsed = _json(response.content) if status in {401, 403, 404} else None
                code = parsed.get("code") if isinstance(parsed, dict) else None
                if status == 401 or (status == 403 and code not in RECORD_LEVEL_403_CODES):
                    msg = (
                        f"Lago refused the API key: HTTP {status} "
                        f"{'Unauthorized' if status == 401 else 'Forbidden'}"
                        f"{f' ({code})' if code else ''} for {method} {url}. Check the "
                        "api_key and api_url settings (and the key's permissions)."
                    )
                    raise LagoAuthError(msg)
                if status == 404 and code in {None, "resource_not_found"}:
                    msg = (
                        f"Lago has no endpoint {method} {url} (HTTP 404"
                        f"{f' {code}' if code else ''}). Check the api_url setting: it must "
                        "be the API root ending in /api/v1, e.g. https://api.getlago.com/api/v1."
                    )
                    raise LagoEndpointError(msg)
                if status == 429:
                    reset = self._announced_reset(response)
                    if self.pacer.limited(bucket, reset):
                        LOGGER.warning(
                            "Lago's rate limit answered 429 to %s %s: pausing %s requests "
                            "%.1fs and slowing down (max_requests_per_second)",
                            method,
                            url,
                            bucket,
                            reset,
                        )
                elif status not in RETRY_STATUSES:
                    self.pacer.acknowledged(bucket)
                    return LagoResponse(
                        status=status,
                        content=response.content,
                        replayed=replayed,
                        date=response.headers.get("Date"),
                        sent_at=sent_at,
                        received_at=time.time(),
                    )
                last_problem = f"HTTP {status}"
            if attempt < retries and (response is None or response.status != 429):
                LOGGER.warning(
                    "%s %s failed with %s; retry %d of %d",
                    method,
                    url,
                    last_problem,
                    attempt + 1,
                    retries,
                )
                self.pause(attempt)
        advice = "rerun the same input: deliveries are idempotent"
        if last_problem == "HTTP 429":
            advice = (
                "Lago's rate limit kept refusing it: lower max_requests_per_second (or "
                "give this job a smaller share of the organisation's budget) and rerun "
                "the same input: deliveries are idempotent"
            )
        msg = (
            f"{method} {url} still failing after {retries} retries "
            f"(last: {last_problem}). Nothing after the last STATE message is "
            f"acknowledged; {advice}."
        )
        raise LagoUnavailableError(msg)


def redact_url(url: str) -> str:
    """The URL without a password it may carry (`https://user:***@host/...`)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else host))


def encode(body: Any) -> bytes:
    """A request body (already JSON-ready, see `mapping.plain`) as compact JSON.

    Keys are sorted, so equal bodies are equal bytes whatever their columns' order.
    """
    return msgspec.json.encode(body, enc_hook=json_default, order="sorted")


def _json(content: bytes) -> Any:
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = _http_date(value)
        return None if parsed is None else max(0.0, parsed - time.time())


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
