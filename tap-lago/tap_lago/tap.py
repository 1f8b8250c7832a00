"""tap-lago: the Singer tap for Lago (usage-based billing)."""

from __future__ import annotations

import functools

from requests.adapters import HTTPAdapter
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError

from tap_lago.client import LagoSession, RateLimitGate
from tap_lago.streams import STREAM_TYPES, LagoStream
from tap_lago.writer import LagoMessageWriter

DEFAULT_API_URL = "https://api.getlago.com/api/v1"


class TapLago(Tap):
    """Reads a Lago organisation: billing objects, usage events, fees and usage."""

    name = "tap-lago"
    message_writer_class = LagoMessageWriter

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_key",
            th.StringType,
            required=True,
            secret=True,
            title="API key",
            description="Lago API key (Developers > API keys), sent as a Bearer token.",
        ),
        th.Property(
            "api_url",
            th.StringType,
            default=DEFAULT_API_URL,
            title="API URL",
            description=(
                "Root of the Lago API, ending in /api/v1. US cloud: "
                "https://api.getlago.com/api/v1 (default); EU cloud: "
                "https://api.eu.getlago.com/api/v1; self-hosted: <your host>/api/v1."
            ),
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description=(
                "Earliest data to read on a first sync: events by timestamp, fees by "
                "creation, invoices/credit notes by last update and issuing date. Later "
                "syncs start from the bookmark."
            ),
        ),
        th.Property(
            "page_size",
            th.IntegerType(minimum=1),
            default=100,
            title="Page size",
            description="Records per list request (per_page).",
        ),
        th.Property(
            "max_concurrency",
            th.IntegerType(minimum=1),
            default=4,
            title="Maximum concurrency",
            description=(
                "Requests in flight at once: later pages of a list, and the first "
                "requests of child streams (wallet transactions, customer usage) for a "
                "page of parents, are fetched ahead while records still come out in "
                "order. 1 reads one page at a time. A 429 pauses every new request for "
                "the time the server asks."
            ),
        ),
        th.Property(
            "lookback_window_days",
            th.NumberType(minimum=0),
            default=1,
            title="Lookback window (days)",
            description=(
                "Events are re-read from this long before the bookmark, to catch late "
                "events sent with a past timestamp. Re-read events are emitted again "
                "(same primary key)."
            ),
        ),
        th.Property(
            "request_timeout",
            th.NumberType(exclusive_minimum=0),
            default=60,
            title="Request timeout (seconds)",
            description="Timeout of one HTTP request; a timed-out request is retried.",
        ),
        th.Property(
            "max_retries",
            th.IntegerType(minimum=0),
            default=8,
            title="Maximum retries",
            description=(
                "Retries of one request after a 429, a 5xx, a timeout or a dropped "
                "connection (exponential backoff with jitter; a 429 waits what "
                "X-RateLimit-Reset or Retry-After asks)."
            ),
        ),
        th.Property(
            "emit_activate_version_messages",
            th.BooleanType,
            default=True,
            title="Emit ACTIVATE_VERSION messages",
            description=(
                "Full-table streams (customers, plans, coupons, add-ons, ...) open each "
                "sync with ACTIVATE_VERSION, so a loader that supports it (e.g. "
                "target-postgres with add_record_metadata) removes or marks deleted the "
                "rows Lago no longer lists."
            ),
        ),
    ).to_dict()

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Create the tap and check cross-field settings."""
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        api_url = str(self.config.get("api_url") or "")
        if not api_url.startswith(("http://", "https://")):
            msg = f"api_url must start with http:// or https:// (got {api_url!r})"
            raise ConfigValidationError(msg)

    @functools.cached_property
    def http_session(self) -> LagoSession:
        """One session for every stream, its connection pool sized to ``max_concurrency``."""
        size = max(1, int(self.config.get("max_concurrency", 4)))
        session = LagoSession()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, pool_block=False)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @functools.cached_property
    def rate_limit_gate(self) -> RateLimitGate:
        """The pause every request honours after a 429 (shared by all streams)."""
        return RateLimitGate()

    def discover_streams(self) -> list[LagoStream]:
        """One stream per entry of ``STREAM_TYPES``."""
        return [stream_class(tap=self) for stream_class in STREAM_TYPES]


if __name__ == "__main__":
    TapLago.cli()
