"""HTTP client for Lago writes: one pooled session, retries, and an error taxonomy."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from target_lago import __version__

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


@dataclass
class LagoResponse:
    """A final (non-retried) answer from Lago.

    Attributes:
        status: HTTP status code.
        body: Decoded JSON body, or None when the body is not JSON.
        replayed: True when an earlier attempt of this request may have been applied by
            the server (its response was lost: timeout or dropped connection), so that
            a `value_already_exist` answer proves our own delivery.
        server_time: The response's Date header as epoch seconds, when present.
    """

    status: int
    body: Any
    replayed: bool = False
    server_time: float | None = None

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
    ) -> None:
        """Create the client.

        Args:
            api_url: Base URL ending in `/api/v1`.
            api_key: Lago API key (sent as a Bearer token, never logged).
            timeout: Seconds to wait for a response.
            max_retries: Retries allowed per request after the first attempt.
            pool_size: Connections kept open (the number of requests in flight).
        """
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"target-lago/{__version__}",
            }
        )

        self._stopped = threading.Event()

    def stop(self) -> None:
        """Make retries still waiting give up, then close every pooled connection."""
        self._stopped.set()
        self._session.close()

    def _sleep(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def _wait_seconds(self, attempt: int, response: requests.Response | None) -> float:
        if response is not None and response.status_code == 429:
            for header in ("Retry-After", "X-RateLimit-Reset"):
                announced = _seconds(response.headers.get(header))
                if announced is not None:
                    return min(self.announced_max, announced) + random.uniform(0, 0.1)
        wait = min(self.backoff_max, self.backoff_base * (2**attempt))
        return random.uniform(wait / 2, wait)

    def post(self, path: str, body: dict) -> LagoResponse:
        """POST a JSON body, retrying transient failures.

        Args:
            path: Path below the API URL, e.g. `/events/batch`.
            body: JSON body.

        Returns:
            The first non-retriable answer.

        Raises:
            LagoAuthError: On 401, or a 403 that refuses the key's permissions.
            LagoUnavailableError: When every retry failed.
        """
        url = f"{self.api_url}{path}"
        replayed = False
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            if self._stopped.is_set():
                raise LagoError(f"POST {url} abandoned: the run is stopping")
            response: requests.Response | None = None
            try:
                response = self._session.post(url, json=body, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as exc:
                # The server may have applied the write before the connection failed.
                replayed = True
                last_problem = f"{type(exc).__name__} (no response)"
            else:
                status = response.status_code
                if status in {401, 403}:
                    parsed = _json(response)
                    code = parsed.get("code") if isinstance(parsed, dict) else None
                    if status == 401 or code not in RECORD_LEVEL_403_CODES:
                        msg = (
                            f"Lago refused the API key: HTTP {status} "
                            f"{'Unauthorized' if status == 401 else 'Forbidden'}"
                            f"{f' ({code})' if code else ''} for POST {url}. Check the "
                            "api_key and api_url settings (and the key's permissions)."
                        )
                        raise LagoAuthError(msg)
                if status not in RETRY_STATUSES:
                    return LagoResponse(
                        status=status,
                        body=_json(response),
                        replayed=replayed,
                        server_time=_http_date(response.headers.get("Date")),
                    )
                last_problem = f"HTTP {status}"
            if attempt < self.max_retries:
                wait = self._wait_seconds(attempt, response)
                LOGGER.warning(
                    "POST %s failed with %s; retry %d of %d in %.2fs",
                    url,
                    last_problem,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                self._sleep(wait)
        msg = (
            f"POST {url} still failing after {self.max_retries} retries "
            f"(last: {last_problem}). Nothing after the last STATE message is "
            "acknowledged; rerun the same input: deliveries are idempotent."
        )
        raise LagoUnavailableError(msg)


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
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
