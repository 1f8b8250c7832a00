"""tap-lago: the Singer tap for Lago (usage-based billing)."""

from __future__ import annotations

import functools
import gc
import sys
import typing as t
import weakref

from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.helpers.capabilities import PluginCapabilities, TapCapabilities

from tap_lago.extra_streams import extra_stream_class, parse_extra_streams
from tap_lago.pacing import Pacer
from tap_lago.paging import EVENTS_PAGE_SIZE, MAX_CONCURRENCY, LeadPages, PagingStream
from tap_lago.preflight import (
    config_errors,
    config_warnings,
    install_secret_filter,
    one_line_errors,
)
from tap_lago.progress import Progress
from tap_lago.streams import STREAM_TYPES, LagoStream
from tap_lago.transport import LagoSession, RateLimitGate, WireAdapter
from tap_lago.writer import LagoMessageWriter

if t.TYPE_CHECKING:
    import click
    from singer_sdk.helpers.capabilities import CapabilitiesEnum
    from singer_sdk.streams import Stream

DEFAULT_API_URL = "https://api.getlago.com/api/v1"
CONNECTION_CHECK_STREAM = "billable_metrics"
#: Settings the SDK would advertise that tap-lago does not offer: Faker is no dependency,
#: so map expressions have no ``fake``.
UNOFFERED_SDK_SETTINGS = ("faker_config",)
# Streams are synced in this order, the others after it by name: what a record refers to
# comes first, so `tap-lago | target-lago` (which writes as records come) can copy an
# organisation into an empty one.
SYNC_ORDER = (
    "taxes", "billable_metrics", "features", "add_ons", "plans", "coupons", "customers",
    "wallets", "subscriptions", "applied_coupons", "events",
)  # fmt: skip


def spare_the_collector() -> None:
    """Keep Python's cycle collector off the records (once, before a run).

    Records are acyclic dicts made by the thousand: with the default thresholds the
    collector runs every 700 of them and walks every object made at import now and then.
    Those are frozen (never walked again), young objects are collected every 50,000
    allocations, older ones 20 times less often than that.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class TapLago(Tap):
    """Reads a Lago organisation: billing objects, usage events, fees and usage."""

    name = "tap-lago"
    message_writer_class = LagoMessageWriter
    #: No `batch`: a BATCH message goes out after the STATE of the events windows it
    #: holds, so a bookmark would pass records not yet delivered (batch_config is refused).
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        TapCapabilities.ACTIVATE_VERSION,
        TapCapabilities.TEST,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

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
                "Earliest data to read on a first sync, for facts only: events by "
                "timestamp, fees and payment receipts by creation, invoices and credit "
                "notes by last update (and issuing date), past usage by period, activity "
                "and API logs by time. Dimensions (customers, subscriptions, plans, ...) are "
                "always read whole on a first sync, so every fact finds its customer. "
                "Later syncs start from the bookmark."
            ),
        ),
        th.Property(
            "end_date",
            th.DateTimeType,
            title="End date",
            description=(
                "Latest data to read, inclusive: events and fees up to this time (a date "
                "alone: through its last millisecond), and their bookmarks never pass it. "
                "Splits a backfill into jobs (start_date to end_date); leave empty to read "
                "up to the sync's start."
            ),
        ),
        th.Property(
            "events_window_days",
            th.IntegerType(minimum=1),
            default=30,
            title="Events window (days)",
            description=(
                "Events are read in time windows of this many days, oldest first; the "
                "events bookmark advances (and STATE is emitted) as each window "
                "completes, so a killed backfill resumes at its last completed window."
            ),
        ),
        th.Property(
            "page_size",
            th.IntegerType(minimum=1),
            default=100,
            title="Page size",
            description="Records per list request (per_page), events aside.",
        ),
        th.Property(
            "events_page_size",
            th.IntegerType(minimum=1),
            default=EVENTS_PAGE_SIZE,
            title="Events page size",
            description=(
                "Events per request of the events list (per_page). Lago sets no maximum, "
                "and its rate limit counts requests: 1000 reads up to 50,000 events a "
                "second within Lago Cloud's 50 requests/s (100: 5,000), with a tenth of "
                "the requests' CPU time. Lower it if a proxy limits response sizes."
            ),
        ),
        th.Property(
            "max_concurrency",
            th.IntegerType(minimum=1),
            default=MAX_CONCURRENCY,
            title="Maximum concurrency",
            description=(
                "Requests in flight at once: later pages of a list, invoices' issuing-date "
                "windows, the first requests of child streams (wallet transactions, "
                "usage, alerts, payment methods, entitlements) for a page of parents, and "
                "up to this many pages of the streams to sync next, are fetched ahead "
                "while records still come out in order. Only as many as "
                "the API's latency needs are used, and max_requests_per_second still "
                "paces them: 16 holds Lago Cloud's 48 requests/s up to about 300 ms per "
                "request. 1 reads one page at a time. A 429 pauses every new request for "
                "the time the server asks."
            ),
        ),
        th.Property(
            "max_requests_per_second",
            th.IntegerType(minimum=0),
            default=48,
            title="Maximum requests per second",
            description=(
                "Pace of the tap's requests. Lago Cloud allows 50 a second per organisation "
                "(200 for current usage, paced at four times this); the default keeps 4% "
                "headroom. Requests are spaced evenly, so a run gets no 429; a 429 (another "
                "client sharing the budget) halves the pace for a while. Split the budget "
                "between taps run in parallel. 0: no pacing (self-hosted Lago)."
            ),
        ),
        th.Property(
            "lookback_window_days",
            th.IntegerType(minimum=0),
            default=1,
            title="Lookback window (days)",
            description=(
                "Events are re-read from this many days before the bookmark, to catch late "
                "events sent with a past timestamp, and payment receipts, to catch their "
                "files attached after creation. Re-read records are emitted again (same "
                "primary key)."
            ),
        ),
        th.Property(
            "request_timeout",
            th.IntegerType(minimum=1),
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
        th.Property(
            "extra_streams",
            th.ArrayType(
                th.ObjectType(
                    th.Property(
                        "name",
                        th.StringType,
                        description="Stream name: letters, digits and _, not a tap-lago stream's.",
                    ),
                    th.Property(
                        "path",
                        th.StringType,
                        description=(
                            "Path of the list after api_url, e.g. /customers/{external_id}/"
                            "invoices; each {placeholder} names a field of the parent's records."
                        ),
                    ),
                    th.Property(
                        "records_key",
                        th.StringType,
                        description="Key of the list in the response body, e.g. invoices.",
                    ),
                    th.Property(
                        "primary_keys",
                        th.ArrayType(th.StringType),
                        description='Fields that identify a record, e.g. ["lago_id"].',
                    ),
                    th.Property(
                        "parent_stream",
                        th.StringType,
                        description=(
                            "A tap-lago stream, or an extra stream defined earlier, whose "
                            "records fill the path's {placeholders}: the list is read once "
                            "per parent record."
                        ),
                    ),
                    th.Property(
                        "params",
                        th.ObjectType(additional_properties=True),
                        description='Fixed query parameters, e.g. {"status": "finalized"}.',
                    ),
                    th.Property(
                        "replication_key",
                        th.StringType,
                        description=(
                            "A date-time field (e.g. updated_at): records before the bookmark "
                            "are dropped after reading (the whole list is read). Leave out "
                            "for a full table."
                        ),
                    ),
                )
            ),
            title="Extra streams",
            description=(
                "Lago API lists tap-lago does not declare, read as streams with the same "
                "paging, retries, rate limits and dedupe. Each entry needs name, path, "
                "records_key and primary_keys; parent_stream, params and replication_key "
                "are optional. The schema declares the key fields and allows any other."
            ),
        ),
    ).to_dict()

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """The SDK's settings for the capabilities above, less ``UNOFFERED_SDK_SETTINGS``."""
        super().append_builtin_config(config_jsonschema)
        for name in UNOFFERED_SDK_SETTINGS:
            config_jsonschema["properties"].pop(name, None)

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Create the tap and check every setting: one line per invalid one."""
        self.extra_stream_errors: list[str] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        install_secret_filter(str(self.config.get("api_key") or ""))
        _ = self.streams  # discovery checks extra_streams
        if errors := [*config_errors(self.config), *self.extra_stream_errors]:
            msg = "Config validation failed"
            raise ConfigValidationError(msg, errors=errors)
        for warning in config_warnings(self.config):
            self.logger.warning("%s", warning)
        self._connection_checked = False

    @classmethod
    def invoke(cls, **kwargs: t.Any) -> None:
        """Run the tap; an API or network error ends it with one line and exit status 1."""
        spare_the_collector()
        try:
            with one_line_errors(cls.logger):
                super().invoke(**kwargs)
        except ConfigValidationError as exc:  # a line per invalid setting, no summary line
            for error in exc.errors or [str(exc)]:
                cls.logger.error("Invalid setting: %s", error)
            sys.exit(1)

    @classmethod
    def cb_test(cls, ctx: click.Context, param: click.Option, value: str) -> None:
        """``--test``, with the same one-line errors as a sync."""
        with one_line_errors(cls.logger):
            super().cb_test(ctx, param, value)

    def check_connection_once(self) -> None:
        """Before the first stream's first request: one cheap request, whatever is selected.

        One record of billable metrics: a short list every Lago version serves.
        """
        if not self._connection_checked:
            self._connection_checked = True
            t.cast("LagoStream", self.streams[CONNECTION_CHECK_STREAM]).check_connection()

    def fetch_first_pages_ahead(self, current: Stream) -> None:
        """As a top-level stream starts: the first pages of it and of the streams after it.

        Most streams are a page or two: read one after the other, each would wait a round
        trip for its first page while the pace allows more. So up to ``max_concurrency``
        pages of the streams to sync next (in sync order, from ``current`` on) are in
        flight or waiting, under the same pace; each stream takes its own when its turn
        comes (records, order and state as without). A stream's next pages follow its first
        (the earlier streams first), with their children's requests
        (:meth:`PagingStream.lead_pages`).
        """
        lead = self.lead_pages
        if lead is None:
            return
        streams = list(self.streams.values())
        for stream in streams[streams.index(current) :] if current in streams else ():
            if lead.waiting >= lead.limit:
                return
            if not isinstance(stream, PagingStream) or stream.parent_stream_type is not None:
                continue
            if stream.selected or stream.has_selected_descendents:
                stream.lead_pages(lead)

    @functools.cached_property
    def lead_pages(self) -> LeadPages | None:
        """Pages fetched before their stream's turn (``max_concurrency``; none with 1)."""
        size = max(1, int(self.config.get("max_concurrency", MAX_CONCURRENCY)))
        return LeadPages(size) if size > 1 else None

    @functools.cached_property
    def progress(self) -> Progress:
        """Progress lines and the closing table of every stream."""
        return Progress()

    @functools.cached_property
    def http_session(self) -> LagoSession:
        """One session for every stream, its pool sized for every thread that may send.

        A list's page-ahead pool, each child stream's prefetch pool and the pages fetched
        ahead of their stream's turn each run up to ``max_concurrency`` requests, besides
        the emitting thread. (The pool only keeps that many connections for reuse.)
        """
        children = sum(1 for stream in self.streams.values() if stream.parent_stream_type)
        concurrency = max(1, int(self.config.get("max_concurrency", MAX_CONCURRENCY)))
        size = (2 + children) * concurrency + 2
        session = LagoSession()
        adapter = WireAdapter(pool_connections=4, pool_maxsize=size, pool_block=False)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        # Its connections are closed with the tap, or at exit: none is left to the
        # interpreter to report unclosed.
        weakref.finalize(self, session.close)
        return session

    @functools.cached_property
    def pacer(self) -> Pacer:
        """The pace every request keeps (shared by all streams)."""
        rate = float(self.config.get("max_requests_per_second", 48) or 0)
        return Pacer(rate, reference="default")

    @functools.cached_property
    def rate_limit_gate(self) -> RateLimitGate:
        """The pause every request honours after a 429 (shared by all streams)."""
        return RateLimitGate()

    @property
    def streams(self) -> dict[str, Stream]:
        """The streams in sync order (`SYNC_ORDER`, then by name; the SDK sorts by name)."""
        streams = super().streams
        ordered = sorted(
            streams,
            key=lambda n: (SYNC_ORDER.index(n) if n in SYNC_ORDER else len(SYNC_ORDER), n),
        )
        if list(streams) != ordered:
            self._streams = {name: streams[name] for name in ordered}
        return self._streams or streams

    def discover_streams(self) -> list[LagoStream]:
        """One stream per entry of ``STREAM_TYPES``, then one per valid ``extra_streams`` entry.

        Invalid entries are kept in ``extra_stream_errors`` (reported at start-up).
        """
        declared = [stream_class(tap=self) for stream_class in STREAM_TYPES]
        specs, self.extra_stream_errors = parse_extra_streams(
            self.config.get("extra_streams"), {stream.name: stream for stream in declared}
        )
        return [*declared, *(extra_stream_class(spec)(tap=self) for spec in specs)]


if __name__ == "__main__":
    TapLago.cli()
