"""Activity logs and API logs (premium; self-hosted Lago also needs ClickHouse and Kafka).

Both lists are newest first with ``from_date`` as their only time filter, and show the
last ``audit_logs_period`` days (30 by default). A sync asks from the bookmark's day (the
filter takes a date) and keeps records logged at or after the bookmark; the overlap is
dropped by the key. LAGO_API_READS.md §12.
"""

from __future__ import annotations

import typing as t

from tap_lago.client import LagoStream

if t.TYPE_CHECKING:
    from singer_sdk.helpers.types import Context


class _LogStream(LagoStream):
    """INCREMENTAL ``logged_at``: ``from_date`` server-side, the exact time client-side."""

    replication_key = "logged_at"
    client_side_filter = True

    def filter_params(self, context: Context | None) -> dict[str, t.Any]:
        start = self.start_datetime(context)
        return {"from_date": start.date().isoformat()} if start is not None else {}


class ActivityLogsStream(_LogStream):
    """What was created, changed or deleted, by whom (API, front end or system)."""

    name = "activity_logs"
    path = "/activity_logs"
    primary_keys = ("activity_id",)


class ApiLogsStream(_LogStream):
    """Write requests made to the API (Lago does not log GETs)."""

    name = "api_logs"
    path = "/api_logs"
    primary_keys = ("request_id",)


LOG_STREAMS: tuple[type[LagoStream], ...] = (ActivityLogsStream, ApiLogsStream)
