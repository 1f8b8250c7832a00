"""`subscription_plans`: tap-lago's subscriptions with the plan each is billed on.

The rows are whole subscriptions (`GET /subscriptions/{external_id}`), but the
`subscriptions` action writes them (select both streams); this one, after it (rank 65),
gives each row's subscription its `plan` as plan overrides where that differs from the
plan Lago bills it on (`plan_overrides.py`, premium). A row whose plan is its parent's
sends nothing. A pending row whose subscription Lago does not hold yet (a scheduled
downgrade the `subscriptions` action holds until the next STATE) waits until then too,
after that action's held rows; a row whose subscription Lago still does not hold is
skipped (it never creates one, so the two streams never write the same subscription at
once).
"""

from __future__ import annotations

from target_lago.actions.subscriptions import SubscriptionsSink, _state
from target_lago.sinks import Item


class SubscriptionPlansSink(SubscriptionsSink):
    """Plan overrides of the subscriptions Lago holds (premium)."""

    action = "subscription_plans"
    rank = 65

    def describe(self, item: Item) -> str:
        """The requests of a record, for the dry run's log."""
        path = self._path(item)
        return f"GET {path}, then PUT {path} with plan_overrides when its plan differs"

    deferred_last = True

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            if _state(item) == "pending" and self._find(item, "pending") is None:
                self.lago.defer(self, item)  # after the subscriptions action's held rows
                continue
            self._apply(item)

    def deliver_deferred(self, items: list[Item]) -> None:
        """Pending rows, once the subscriptions action's held rows are in Lago."""
        for item in items:
            self._apply(item)

    def _apply(self, item: Item) -> None:
        outcome = self._override(item, "already_present", absent="skipped")
        if outcome == "skipped":
            self.logger.info(
                "Skipped a record of stream '%s': Lago has no %s subscription %s (the "
                "subscriptions stream creates it)",
                self.stream_name,
                _state(item),
                item.key,
            )
        if outcome is not None:
            self.stats.add(outcome)
