"""Fault rules: latency, rate limits, 5xx, timeouts, dropped connections and lost responses.

A rule matches on method and path prefix. Rules are tried in order; the first one that
decides to fire on a request gives that request's fault. ``after`` lets the first N matching
requests through, ``count`` caps how many times a rule fires, ``probability`` draws from the
rule's own seeded RNG, so a run with the same rules and requests is reproducible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("latency", "rate_limit", "error", "timeout", "drop", "lost_response")
ERROR_STATUSES = (404, 500, 502, 503)
ERROR_TEXT = {
    404: "Not Found",  # a route lost behind a gateway: the body of an unknown route
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
DEFAULT_DELAY_MS = {"latency": 100, "timeout": 30000}


class FaultRuleError(ValueError):
    """A fault rule that cannot be used; the message names the rule and the field."""


@dataclass
class FaultRule:
    """One rule, as given to ``POST /_sandbox/faults`` (see the README for each field)."""

    fault: str
    method: str = "*"
    path: str = "/api/v1/"
    count: int | None = None
    probability: float = 1.0
    after: int = 0
    status: int = 503
    delay_ms: int = 0
    reset_seconds: int = 1
    retry_after: int | None = None
    seed: int = 0
    fired: int = 0
    seen: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def from_dict(cls, index: int, raw: Any) -> FaultRule:
        """Build a rule from its JSON form, with a clear error for each bad field."""
        if not isinstance(raw, dict):
            raise FaultRuleError(f"rule {index}: must be an object")
        known = {
            "fault",
            "method",
            "path",
            "count",
            "probability",
            "after",
            "status",
            "delay_ms",
            "reset_seconds",
            "retry_after",
            "seed",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FaultRuleError(f"rule {index}: unknown field(s) {', '.join(unknown)}")
        fault = raw.get("fault")
        if fault not in FAULT_KINDS:
            raise FaultRuleError(f"rule {index}: fault must be one of {', '.join(FAULT_KINDS)}")
        method = str(raw.get("method", "*")).upper()
        if method not in ("GET", "POST", "DELETE", "PUT", "PATCH", "*"):
            raise FaultRuleError(f"rule {index}: method must be GET, POST, DELETE or *")
        path = raw.get("path", "/api/v1/")
        if not isinstance(path, str) or not path.startswith("/"):
            raise FaultRuleError(f"rule {index}: path must be a string starting with /")

        def integer(name: str, default: int | None, minimum: int = 0) -> int | None:
            value = raw.get(name, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise FaultRuleError(f"rule {index}: {name} must be an integer >= {minimum}")
            return value

        probability = raw.get("probability", 1.0)
        if (
            isinstance(probability, bool)
            or not isinstance(probability, (int, float))
            or not 0 <= probability <= 1
        ):
            raise FaultRuleError(f"rule {index}: probability must be a number in [0, 1]")
        status = integer("status", 503)
        if status not in ERROR_STATUSES:
            raise FaultRuleError(f"rule {index}: status must be 404, 500, 502 or 503")
        seed = integer("seed", 0) or 0
        return cls(
            fault=fault,
            method=method,
            path=path,
            count=integer("count", None),
            probability=float(probability),
            after=integer("after", 0) or 0,
            status=status,
            delay_ms=integer("delay_ms", DEFAULT_DELAY_MS.get(fault, 0)) or 0,
            reset_seconds=integer("reset_seconds", 1) or 0,
            retry_after=integer("retry_after", None),
            seed=seed,
            rng=random.Random(seed),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as ``GET /_sandbox/faults`` lists it, with its ``fired`` count."""
        return {
            "fault": self.fault,
            "method": self.method,
            "path": self.path,
            "count": self.count,
            "probability": self.probability,
            "after": self.after,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "reset_seconds": self.reset_seconds,
            "retry_after": self.retry_after,
            "seed": self.seed,
            "fired": self.fired,
        }

    def _decide(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not path.startswith(self.path):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


class FaultSet:
    """The active rules (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def replace(self, raw_rules: Any) -> list[dict[str, Any]]:
        """Replace every rule; raises FaultRuleError (and keeps the old rules) on a bad one."""
        if not isinstance(raw_rules, list):
            raise FaultRuleError('body must be {"rules": [...]}')
        rules = [FaultRule.from_dict(i, r) for i, r in enumerate(raw_rules)]
        with self._lock:
            self._rules = rules
            return [r.to_dict() for r in rules]

    def describe(self) -> list[dict[str, Any]]:
        """Every rule with its fired count."""
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The rule that fires on this request, if any (counts are updated)."""
        with self._lock:
            for rule in self._rules:
                if rule._decide(method, path):
                    return rule
            return None
