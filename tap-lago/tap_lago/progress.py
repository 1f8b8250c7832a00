"""Progress of a sync: one line per stream every few seconds, and a table at the end."""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t
from dataclasses import dataclass, field

if t.TYPE_CHECKING:
    import logging
    from collections.abc import Iterable, Iterator

#: Seconds between two progress lines of one stream (tests may lower it).
PROGRESS_EVERY_SECONDS = 5.0


@dataclass
class StreamProgress:
    """Counters of one stream; the emitting thread updates them, workers add attempts."""

    name: str
    records: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    seconds: float = 0.0
    #: The list being walked: pages done and ``meta.total_pages`` of its first page.
    pages: int = 0
    total_pages: int = 0
    #: Lists walked one after the other (event windows): which one, out of how many.
    part: int = 0
    parts: int = 1
    part_label: str = ""
    started: float | None = None
    last_line: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counted(self, records: Iterable[dict[str, t.Any]]) -> Iterator[dict[str, t.Any]]:
        """The records, each counted as emitted."""
        for record in records:
            self.records += 1
            yield record

    def count_request(self, *, rate_limited: bool = False) -> None:
        """One HTTP attempt (from any thread)."""
        with self._lock:
            self.requests += 1
            self.rate_limited += rate_limited

    def count_retry(self) -> None:
        """One retry (from any thread)."""
        with self._lock:
            self.retries += 1

    def start(self) -> float:
        """Mark the start of a read; returns the monotonic start time."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
            self.last_line = now
        return now

    def begin_part(self, part: int, parts: int, label: str) -> None:
        """A new list begins (e.g. the next event window)."""
        self.part, self.parts, self.part_label = part, max(parts, 1), label
        self.pages = self.total_pages = 0

    def page(self, total_pages: int | None) -> None:
        """One page of the current list arrived."""
        self.pages += 1
        if total_pages and (self.pages == 1 or total_pages > self.total_pages):
            self.total_pages = int(total_pages)

    def done_fraction(self) -> float | None:
        """How much of the stream is read, from pages and parts; None when unknown."""
        if not self.total_pages:
            return None
        within = min(1.0, self.pages / self.total_pages)
        return (self.part + within) / self.parts

    def line(self, now: float) -> str:
        """The human progress line."""
        elapsed = max(now - (self.started or now), 1e-6)
        rate = self.records / elapsed
        parts = [f"{self.name}: {self.records:,} records"]
        if self.parts > 1:
            parts.append(f"window {self.part + 1}/{self.parts} {self.part_label}".rstrip())
        if self.total_pages:
            parts.append(f"page {self.pages:,}/{self.total_pages:,}")
        elif self.pages:
            parts.append(f"{self.pages:,} pages")
        parts.append(f"{rate:,.0f} records/s")
        fraction = self.done_fraction()
        if fraction:
            eta = elapsed * (1 - fraction) / fraction
            parts.append(f"ETA {dt.timedelta(seconds=round(eta))}")
        return ", ".join(parts)

    def maybe_log(self, logger: logging.Logger) -> None:
        """Log the progress line when the last one is old enough."""
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_EVERY_SECONDS:
            self.last_line = now
            logger.info("%s", self.line(now))


class Progress:
    """Every stream's counters; the table lists them in the order the streams started."""

    def __init__(self) -> None:
        """No stream yet."""
        self.streams: dict[str, StreamProgress] = {}
        self._lock = threading.Lock()

    def of(self, name: str) -> StreamProgress:
        """The counters of one stream (created on first use)."""
        with self._lock:
            if name not in self.streams:
                self.streams[name] = StreamProgress(name)
            return self.streams[name]

    def table(self) -> list[str]:
        """The closing table: per stream, records, requests, retries, 429s and seconds."""
        rows = [("stream", "records", "requests", "retries", "429s", "seconds")]
        rows += [
            (
                s.name,
                f"{s.records:,}",
                f"{s.requests:,}",
                f"{s.retries:,}",
                f"{s.rate_limited:,}",
                f"{s.seconds:,.1f}",
            )
            for s in sorted(
                (s for s in self.streams.values() if s.started is not None),
                key=lambda s: s.started or 0.0,
            )
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return [
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
