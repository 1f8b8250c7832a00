"""Lago Cloud's gateway rate limits: per-organisation token buckets (README "Cloud limits").

lago-api itself limits nothing (BEHAVIOUR §7); Lago Cloud's gateway allows, per
organisation, 500 requests/s for event ingestion, 200/s for current usage and 50/s for
everything else. Each bucket holds one second of its rate and refills continuously. Every
API response carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (whole seconds
until the bucket is full again); a request that finds its bucket empty gets 429.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

#: Lago Cloud's default limits, requests per second (docs: api-reference/rate-limits).
CLOUD = {"events": 500, "current_usage": 200, "default": 50}

_CURRENT_USAGE = re.compile(r"^/api/v1/customers/[^/]+/current_usage/?$")
_EVENTS = ("/api/v1/events", "/api/v1/events/", "/api/v1/events/batch")


def bucket_of(method: str, path: str) -> str:
    """The bucket a request draws from."""
    if method == "POST" and path in _EVENTS:
        return "events"
    if method == "GET" and _CURRENT_USAGE.match(path):
        return "current_usage"
    return "default"


def parse(value: Any) -> dict[str, int] | None:
    """``None``/false (off), ``"cloud"``/true, or ``{"events": n, ...}``; ValueError otherwise.

    A partial object takes Cloud's figure for the buckets it leaves out.
    """
    if value is None or value is False:
        return None
    if value is True or value == "cloud":
        return dict(CLOUD)
    if isinstance(value, str):
        try:
            value = dict(part.split("=", 1) for part in value.split(",") if part)
            value = {name: int(rate) for name, rate in value.items()}
        except ValueError:
            raise ValueError(
                'rate_limits must be "cloud" or like events=500,current_usage=200,default=50'
            ) from None
    if not isinstance(value, dict):
        raise ValueError('rate_limits must be null, "cloud" or an object of rates per second')
    unknown = sorted(set(value) - set(CLOUD))
    if unknown:
        raise ValueError(f"rate_limits: unknown bucket(s) {', '.join(unknown)}")
    rates = {**CLOUD, **value}
    for name, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ValueError(f"rate_limits.{name} must be an integer >= 1")
    return rates


class RateLimits:
    """The organisation's buckets (thread-safe); ``rates`` None means no limits."""

    def __init__(self, rates: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self.set(rates)

    def set(self, rates: dict[str, int] | None) -> None:
        """New rates; every bucket starts full."""
        now = time.monotonic()
        with self._lock:
            self.rates = rates
            self._tokens = {name: float(rate) for name, rate in (rates or {}).items()}
            self._at = dict.fromkeys(rates or {}, now)
            self.limited = dict.fromkeys(rates or {}, 0)

    def take(self, method: str, path: str) -> tuple[bool, dict[str, str]]:
        """Draw one request: (allowed, the X-RateLimit headers); no headers when off."""
        if self.rates is None:
            return True, {}
        name = bucket_of(method, path)
        rate = self.rates[name]
        now = time.monotonic()
        with self._lock:
            tokens = min(float(rate), self._tokens[name] + (now - self._at[name]) * rate)
            self._at[name] = now
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            else:
                self.limited[name] += 1
            self._tokens[name] = tokens
        reset = math.ceil((rate - tokens) / rate) if tokens < rate else 0
        return allowed, {
            "X-RateLimit-Limit": str(rate),
            "X-RateLimit-Remaining": str(int(tokens)),
            "X-RateLimit-Reset": str(max(reset, 0 if allowed else 1)),
        }

    def describe(self) -> dict[str, Any]:
        """The rates and how many requests each bucket refused."""
        with self._lock:
            return {"rates": self.rates, "limited": dict(self.limited)}
