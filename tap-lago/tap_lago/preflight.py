"""Start-up checks: settings, one cheap request, and one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import typing as t
from urllib.parse import urlsplit

import requests
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

#: Where each Lago instance serves its API (shown with every api_url error).
INSTANCES = (
    "US cloud https://api.getlago.com/api/v1, EU cloud https://api.eu.getlago.com/api/v1, "
    "self-hosted https://<your Lago API host>/api/v1"
)
DATE_EXAMPLE = "e.g. 2026-01-01 or 2026-01-01T00:00:00Z"

#: Errors reported as one line (with the traceback only at DEBUG level).
API_ERRORS: tuple[type[BaseException], ...] = (
    FatalAPIError,
    RetriableAPIError,
    requests.RequestException,
)


class LagoConnectionError(FatalAPIError):
    """The API cannot be reached at all (DNS, refused connection, TLS): never retried."""


def parse_setting_datetime(value: str | dt.datetime) -> dt.datetime:
    """A date or date-time setting as an aware UTC datetime (a date is its midnight UTC)."""
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


def parse_setting_end(value: str | dt.datetime) -> dt.datetime:
    """``end_date`` as an aware UTC datetime: a date alone reaches through its last millisecond.

    The bound is inclusive, so ``2025-11-30`` means the whole of that day (as
    ``2025-11-30T23:59:59.999Z``), not its first instant.
    """
    end = parse_setting_datetime(value)
    if isinstance(value, str) and "T" not in value.upper() and ":" not in value:
        end += dt.timedelta(days=1, milliseconds=-1)
    return end


def _api_url_fix(raw: str) -> tuple[str, bool, bool]:
    """The value ``api_url`` should have, whether it has a scheme, and a /api/v1 root."""
    url = raw.strip()
    parts = urlsplit(url)
    has_scheme = parts.scheme in {"http", "https"} and bool(parts.netloc)
    fixed = url if has_scheme else "https://" + url.split("://", 1)[-1].lstrip("/")
    has_root = urlsplit(fixed).path.rstrip("/").endswith("/api/v1")
    if not has_root:
        fixed = fixed.rstrip("/") + "/api/v1"
    return fixed, has_scheme, has_root


def config_errors(config: Mapping[str, t.Any]) -> list[str]:
    """One line per invalid setting, each naming the setting and the fix."""
    errors = []
    if not str(config.get("api_key") or "").strip():
        errors.append("api_key is empty: use a key from Lago (Developers > API keys).")
    url = str(config.get("api_url") or "").strip()
    fixed, has_scheme, has_root = _api_url_fix(url)
    if not has_scheme:
        also = "" if has_root else " and does not end in /api/v1"
        errors.append(
            f"api_url {url!r} has no http:// or https:// scheme{also}: use {fixed!r} ({INSTANCES})."
        )
    dates: dict[str, dt.datetime] = {}
    for name in ("start_date", "end_date"):
        value = config.get(name)
        if value in (None, ""):
            continue
        try:
            parse = parse_setting_end if name == "end_date" else parse_setting_datetime
            dates[name] = parse(value)
        except (TypeError, ValueError) as exc:
            errors.append(
                f"{name} {value!r} is not a valid ISO 8601 date or date-time ({exc}): "
                f"use {DATE_EXAMPLE}."
            )
    if len(dates) == 2 and dates["end_date"] <= dates["start_date"]:
        errors.append(
            f"end_date {config['end_date']!r} is not after start_date "
            f"{config['start_date']!r}: set an end_date later than start_date, or none."
        )
    if config.get("batch_config"):
        errors.append(
            "batch_config is not supported: tap-lago writes RECORD messages, never BATCH "
            "files (a bookmark must not pass records still in a file); remove batch_config."
        )
    return errors


def config_warnings(config: Mapping[str, t.Any]) -> list[str]:
    """One line per setting that looks wrong but may be meant (a proxy or a mock)."""
    url = str(config.get("api_url") or "").strip()
    fixed, has_scheme, has_root = _api_url_fix(url)
    if has_scheme and not has_root:
        return [
            f"api_url {url!r} does not end in /api/v1, as the Lago API does: if requests "
            f"fail with 404, use {fixed!r} ({INSTANCES})."
        ]
    return []


def connection_error(exc: requests.ConnectionError, url: str) -> LagoConnectionError | None:
    """The one-line error for a failure no retry can fix (DNS, refused, TLS), else None.

    Dropped or reset connections are not among them: those are retried.
    """
    host = urlsplit(url).netloc
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__ or _reason(cause)
    text = " ".join(type(c).__name__ for c in chain)
    if isinstance(exc, requests.exceptions.SSLError):
        what = (
            f"TLS handshake with {host} failed; if the server speaks plain HTTP, "
            "api_url must start with http://"
        )
    elif "NameResolutionError" in text or "gaierror" in text:
        what = f"cannot resolve the host name {host!r}; check api_url"
    elif any(isinstance(c, ConnectionRefusedError) for c in chain):
        what = f"connection refused by {host}; check api_url (host and port) and that Lago runs"
    else:
        return None
    return LagoConnectionError(f"Cannot reach Lago at {url}: {what} ({INSTANCES}).")


def _reason(exc: BaseException) -> BaseException | None:
    """The underlying error urllib3 keeps in ``reason`` or in the first argument."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    if exc.args and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return None


@contextlib.contextmanager
def one_line_errors(logger: logging.Logger) -> Iterator[None]:
    """Turn an API or network error into one ERROR line and exit status 1.

    The traceback is logged too, at DEBUG level only.
    """
    try:
        yield
    except API_ERRORS as exc:
        message = str(exc).strip().splitlines()
        logger.error("%s", message[0] if message else type(exc).__name__)
        logger.debug("Traceback of the error above", exc_info=True)
        sys.exit(1)


class SecretFilter(logging.Filter):
    """Replaces a secret in every log line (message, arguments and traceback) by ``***``."""

    def __init__(self, secret: str) -> None:
        """Hide ``secret`` (and it with surrounding whitespace trimmed)."""
        super().__init__()
        self.secrets = sorted({secret, secret.strip()} - {""}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place; never drops it."""
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***").replace(repr(secret)[1:-1], "***")
        return text


def install_secret_filter(secret: str) -> None:
    """Add a :class:`SecretFilter` to every handler of the root logger (once per secret)."""
    if not secret.strip():
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) and secret in f.secrets for f in handler.filters):
            handler.addFilter(SecretFilter(secret))
