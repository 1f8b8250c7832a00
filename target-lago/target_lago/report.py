"""Per-stream counts and progress, the dead-letter file and the end-of-run summary."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections import Counter
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
SETTLED = COUNTERS[1:]
SHOWN_REJECTIONS = 5
"""Rejections logged one by one per stream; the rest are counted (and dead-lettered)."""


@dataclass
class StreamStats:
    """Counts for one stream; every record received ends in exactly one other counter.

    `delivered`: stored by Lago in this run. `already_present`: Lago held it before.
    `accepted_unverified`: acknowledged by a ClickHouse event store, which answers a new
    event and a duplicate alike. In a dry run `delivered` counts what would be sent. A run
    stopped by an error leaves the rest `unsent`.

    With a `progress_interval`, a change of the counts logs a progress line when the
    stream's last one is that many seconds old (so at most one per interval).
    """

    stream: str
    action: str
    received: int = 0
    delivered: int = 0
    already_present: int = 0
    accepted_unverified: int = 0
    rejected: int = 0
    skipped: int = 0
    progress_interval: float = 0.0
    dry_run: bool = False
    logger: logging.Logger | None = field(default=None, repr=False)
    reasons: Counter[str] = field(default_factory=Counter, repr=False)
    #: Records another process of a `partition` handles (shown when there are some).
    skipped_by_partition: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _started: float = field(default_factory=time.monotonic, repr=False)
    _next_progress: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        """Schedule the first progress line."""
        self._next_progress = self._started + self.progress_interval

    def add(self, counter: str, count: int = 1) -> None:
        """Add to one counter (thread-safe), logging progress when it is due.

        Args:
            counter: One of COUNTERS.
            count: Amount to add.
        """
        with self._lock:
            setattr(self, counter, getattr(self, counter) + count)
            if not self.progress_interval:
                return
            now = time.monotonic()
            if now < self._next_progress:
                return
            self._next_progress = now + self.progress_interval
            if self.logger is not None:  # under the lock: lines come out in order
                self.logger.info("%s", self.progress_line(now))

    @property
    def unsent(self) -> int:
        """Records received and not settled: in flight, or left when the run stopped."""
        settled = sum(getattr(self, name) for name in SETTLED) + self.skipped_by_partition
        return max(0, self.received - settled)

    def progress_line(self, now: float) -> str:
        """A progress line: the counts so far and the rate at which records come in."""
        rate = self.received / max(now - self._started, 1e-3)
        written = "would be sent" if self.dry_run else "delivered"
        extra = "".join(
            f", {getattr(self, name):,} {name.replace('_', ' ')}"
            for name in ("skipped", "accepted_unverified")
            if getattr(self, name)
        )
        return (
            f"progress {self.stream}: {self.received:,} received, {self.delivered:,} "
            f"{written}, {self.already_present:,} already present, {self.rejected:,} "
            f"rejected{extra} ({rate:,.0f} records/s)"
        )

    def line(self) -> str:
        """The summary line of this stream (`unsent` only when the run stopped early)."""
        counts = " ".join(f"{name}={getattr(self, name)}" for name in COUNTERS)
        if self.skipped_by_partition:
            counts += f" skipped_by_partition={self.skipped_by_partition}"
        if self.unsent:
            counts += f" unsent={self.unsent}"
        mode = " (dry run: delivered = would send)" if self.dry_run else ""
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

    def __init__(
        self,
        dead_letter_path: str | None,
        logger: logging.Logger,
        *,
        dry_run: bool = False,
        progress_interval: float = 0.0,
    ) -> None:
        """Create the report.

        Args:
            dead_letter_path: JSONL file rejected records are appended to, or None to
                only log them (dry run).
            logger: Where rejections, progress and the summary go.
            dry_run: Whether nothing is sent (the counts say what would be).
            progress_interval: Seconds between two progress lines of a stream (0: none).
        """
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        self.logger = logger
        self.dry_run = dry_run
        self.progress_interval = progress_interval
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
                self.streams[name] = StreamStats(
                    stream=name,
                    action=action,
                    progress_interval=self.progress_interval,
                    dry_run=self.dry_run,
                    logger=self.logger,
                )
            return self.streams[name]

    @property
    def rejected(self) -> int:
        """Records rejected in every stream."""
        return sum(stats.rejected for stats in self.streams.values())

    @property
    def written(self) -> int:
        """Records Lago holds (delivered, already present or acknowledged), or would."""
        return sum(
            stats.delivered + stats.already_present + stats.accepted_unverified
            for stats in self.streams.values()
        )

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
        """Count a rejected record, append it to the dead-letter file, log the first ones.

        The first `SHOWN_REJECTIONS` of a stream are logged one by one; the others are
        counted by reason for the summary (each one is in the dead-letter file).

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
        with self._lock:
            stats.reasons[_reason(error_code, details)] += 1
            shown = stats.rejected <= SHOWN_REJECTIONS
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
        if shown:
            self.logger.warning(
                "%s a record of stream '%s' (%s, HTTP %s, %s): %s",
                "Would reject" if self.dry_run else "Rejected",
                stats.stream,
                stats.action,
                http_status if http_status is not None else "not sent",
                error_code,
                message,
            )
        if self.dead_letter_path is None:
            if shown:
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

    def log_summary(self) -> None:
        """Log one summary line per stream, then the rejections by reason."""
        for stats in self.streams.values():
            self.logger.info(stats.line())
        for stats in self.streams.values():
            if stats.rejected > SHOWN_REJECTIONS:
                reasons = ", ".join(f"{n} x {why}" for why, n in stats.reasons.most_common())
                self.logger.warning(
                    "%s record(s) of stream '%s' %s rejected, the first %d logged above: %s",
                    stats.rejected,
                    stats.stream,
                    "would be" if self.dry_run else "were",
                    SHOWN_REJECTIONS,
                    reasons,
                )
        if self.rejected and self.dead_letter_path is not None:
            self.logger.warning(
                "%d record(s) rejected; each one is in %s",
                self.rejected,
                self.dead_letter_path,
            )


def _reason(error_code: str | None, details: Any) -> str:
    """A short reason for counting rejections: the fields and codes of the details."""
    if isinstance(details, dict) and details:
        parts = []
        for name, codes in sorted(details.items(), key=lambda item: str(item[0])):
            first = codes[0] if isinstance(codes, list) and codes else codes
            parts.append(f"{name} {first}" if isinstance(first, str) else str(name))
        return ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "")
    return str(error_code or "rejected")
