"""Request pacing under Lago Cloud's per-organisation rate limits.

Lago Cloud allows 500 requests/s for event ingestion, 200/s for current usage and 50/s for
everything else, and answers 429 with ``X-RateLimit-Reset`` above that. The pacer spaces
requests evenly below a rate, so a run keeps as many requests in flight as latency needs
without tripping the limit; a 429 (another client sharing the budget) halves the pace and
holds every request of that bucket until the reset, and the pace then climbs back.

tap-lago and target-lago install separately, so each carries this module; the two copies
are kept identical (a test compares them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Lago Cloud's limits, requests per second per organisation.
CLOUD_LIMITS = {"events": 500.0, "current_usage": 200.0, "default": 50.0}


def bucket_of(method: str, path: str) -> str:
    """The Lago Cloud bucket of a request (its path or URL, query allowed)."""
    route = path.split("?", 1)[0].rstrip("/")
    if method == "POST" and route.endswith(("/events", "/events/batch")):
        return "events"
    if method == "GET" and "/customers/" in route and route.endswith("/current_usage"):
        return "current_usage"
    return "default"


class _Lane:
    """One bucket's pace: the next free slot, the current and the configured rate."""

    def __init__(self, rate: float | None) -> None:
        self.ceiling = rate
        self.rate = rate
        self.next_slot = 0.0
        self.held_until = 0.0
        self.slowed_at = -1.0


class Pacer:
    """Spaces requests per bucket; thread-safe.

    ``rate`` is the pace of the ``reference`` bucket; the other buckets keep Lago Cloud's
    proportions to it (with events as the reference: current usage 0.4 of it, everything
    else 0.1). None or 0: no pacing, only the pauses a 429 asks for.
    """

    #: Pace kept after a 429, as a share of the pace before it.
    decrease = 0.5
    #: Pace regained per acknowledged request, as a share of the configured rate.
    increase = 0.01
    #: Times a request goes back for a later slot because a hold began while it waited.
    rechecks = 3

    def __init__(self, rate: float | None, reference: str = "events") -> None:
        scale = (rate or 0) / CLOUD_LIMITS[reference]
        self._lanes = {
            name: _Lane(limit * scale if scale > 0 else None)
            for name, limit in CLOUD_LIMITS.items()
        }
        self._lock = threading.Lock()
        self.throttled = 0

    def rate(self, bucket: str) -> float | None:
        """The current pace of a bucket (None: unpaced)."""
        return self._lanes[bucket].rate

    def wait(self, bucket: str, sleep: Callable[[float], object]) -> None:
        """Block until this request's slot, by ``sleep(seconds)``.

        A hold that began while the request slept (a 429 to another request) sends it
        back for a slot after the hold, a bounded number of times.
        """
        lane = self._lanes[bucket]
        for _ in range(self.rechecks + 1):
            with self._lock:
                now = time.monotonic()
                slot = max(now, lane.next_slot)
                if lane.rate is not None:
                    lane.next_slot = slot + 1.0 / lane.rate
                held_until = lane.held_until
            if slot <= now:
                return
            sleep(slot - now)
            if lane.held_until == held_until:
                return

    def acknowledged(self, bucket: str) -> None:
        """A request of the bucket was answered without a 429: regain some pace."""
        lane = self._lanes[bucket]
        if lane.rate is None or lane.ceiling is None or lane.rate >= lane.ceiling:
            return
        with self._lock:
            lane.rate = min(lane.ceiling, lane.rate + lane.ceiling * self.increase)

    def limited(self, bucket: str, reset_seconds: float) -> bool:
        """A 429: hold the bucket for ``reset_seconds`` and slow down.

        Returns:
            True for the first 429 of a hold, at most one a second (the ones answered
            meanwhile to requests already in flight change nothing more).
        """
        lane = self._lanes[bucket]
        with self._lock:
            self.throttled += 1
            now = time.monotonic()
            first = now >= lane.held_until and now - lane.slowed_at >= 1.0
            lane.held_until = max(lane.held_until, now + reset_seconds)
            lane.next_slot = max(lane.next_slot, lane.held_until)
            if first:
                lane.slowed_at = now
                if lane.rate is not None:
                    lane.rate = max(1.0, lane.rate * self.decrease)
            return first
