"""Per-stream counts, the dead-letter file and the end-of-run summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from target_lago.mapping import json_default

COUNTERS = (
    "received",
    "delivered",
    "already_present",
    "rejected",
    "skipped",
    "accepted_unverified",
)


@dataclass
class StreamStats:
    """Counts for one stream; every record received ends in exactly one other counter.

    `delivered`: stored by Lago in this run. `already_present`: Lago held it before.
    `accepted_unverified`: acknowledged by a ClickHouse event store, which answers a new
    event and a duplicate alike. In a dry run `delivered` counts what would be sent.
    """

    stream: str
    action: str
    received: int = 0
    delivered: int = 0
    already_present: int = 0
    accepted_unverified: int = 0
    rejected: int = 0
    skipped: int = 0
    #: Records another process of a `partition` handles (shown when there are some).
    skipped_by_partition: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, counter: str, count: int = 1) -> None:
        """Add to one counter (thread-safe).

        Args:
            counter: One of COUNTERS.
            count: Amount to add.
        """
        with self._lock:
            setattr(self, counter, getattr(self, counter) + count)

    def line(self, *, dry_run: bool = False) -> str:
        """The summary line of this stream."""
        counts = " ".join(f"{name}={getattr(self, name)}" for name in COUNTERS)
        if self.skipped_by_partition:
            counts += f" skipped_by_partition={self.skipped_by_partition}"
        mode = " (dry run: delivered = would send)" if dry_run else ""
        return f"summary stream={self.stream} action={self.action} {counts}{mode}"


class DeadLetterError(Exception):
    """A rejected record could not be written to the dead-letter file (fatal)."""


def _finite(value: Any) -> Any:
    """A copy with NaN and infinities as strings (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class RunReport:
    """Counts of every stream of a run, and the dead-letter file they share."""

    def __init__(self, dead_letter_path: str | None, logger: logging.Logger) -> None:
        """Create the report.

        Args:
            dead_letter_path: JSONL file rejected records are appended to, or None to
                only log them (dry run).
            logger: Where rejections and the summary go.
        """
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        self.logger = logger
        self.streams: dict[str, StreamStats] = {}
        self._lock = threading.Lock()

    def stream(self, name: str, action: str) -> StreamStats:
        """The counters of a stream (created on first use).

        Args:
            name: Stream name.
            action: Lago action of the stream.

        Returns:
            The stream's counters.
        """
        with self._lock:
            if name not in self.streams:
                self.streams[name] = StreamStats(stream=name, action=action)
            return self.streams[name]

    @property
    def rejected(self) -> int:
        """Records rejected in every stream."""
        return sum(stats.rejected for stats in self.streams.values())

    def reject(
        self,
        stats: StreamStats,
        record: Any,
        *,
        http_status: int | None,
        error_code: str | None,
        details: Any,
        message: str,
        key_properties: list[str] | None = None,
        transaction_id: str | None = None,
    ) -> None:
        """Count a rejected record, log it and append it to the dead-letter file.

        Args:
            stats: The stream's counters.
            record: The record as received (after stream maps).
            http_status: Lago's HTTP status, or None when refused before sending.
            error_code: Lago's error code, or `invalid_record` for local checks.
            details: Lago's error details (field -> codes) or the local equivalent.
            message: One sentence naming the field and the problem.
            key_properties: The stream's key properties (to re-send the record).
            transaction_id: The event's transaction id, when one was made.
        """
        stats.add("rejected")
        line = {
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "stream": stats.stream,
            "action": stats.action,
            "http_status": http_status,
            "error_code": error_code,
            "details": details,
            "message": message,
            "key_properties": key_properties or [],
            "transaction_id": transaction_id,
            "record": record,
        }
        try:
            text = json.dumps(line, default=json_default, ensure_ascii=False, allow_nan=False)
            text.encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            # NaN or a lone surrogate: written as text and as a \u escape, still JSON.
            text = json.dumps(_finite(line), default=json_default)
        self.logger.warning(
            "Rejected a record of stream '%s' (%s, HTTP %s, %s): %s",
            stats.stream,
            stats.action,
            http_status if http_status is not None else "not sent",
            error_code,
            message,
        )
        if self.dead_letter_path is None:
            self.logger.warning("Rejected record: %s", text)
            return
        with self._lock:
            try:
                self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter_path.open("a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError as exc:
                # The record would be lost: stop the run before any STATE passes it.
                msg = (
                    f"cannot write the dead-letter file {self.dead_letter_path} "
                    f"({exc.strerror or exc}): check the dead_letter_path setting and the disk"
                )
                raise DeadLetterError(msg) from None

    def log_summary(self, *, dry_run: bool = False) -> None:
        """Log one summary line per stream."""
        for stats in self.streams.values():
            self.logger.info(stats.line(dry_run=dry_run))
        if self.rejected and self.dead_letter_path is not None:
            self.logger.warning(
                "%d record(s) rejected; each one is in %s",
                self.rejected,
                self.dead_letter_path,
            )
