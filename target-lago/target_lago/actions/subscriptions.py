"""`subscriptions`: the lifecycle from one table: create, change plan, update, terminate.

A row creates the subscription or changes its plan (`POST /subscriptions`, the same plan
again is a no-op), then updates `name`, `ending_at` and a pending one's `subscription_at`
when Lago holds other values (`PUT /subscriptions/{external_id}`). A `terminated` or
`canceled` row ends it (`DELETE /subscriptions/{external_id}`, `status=pending` for a
pending one), after the events received before it have been delivered. A pending row
that follows another plan (a scheduled downgrade, `previous_plan_code`) is written after
every other write, so the active subscription it follows is there first.

A row with a `plan_overrides` column for a subscription Lago does not hold yet sends them
with the post that creates it (premium: a refusal creates nothing). Otherwise a row with
`plan_overrides`, or with the `plan` its subscription is billed on (tap-lago's
`subscription_plans`), gets those overrides (`PUT` with `plan_overrides`) when the plan
Lago bills it on differs (`plan_overrides.py`); a rerun sends nothing.
"""

from __future__ import annotations

import typing as t
import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.actions import plan_overrides
from target_lago.actions.catalog import Unmapped, shown
from target_lago.client import LagoUnavailableError, encode
from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    epoch_seconds,
    missing,
    plain,
    refuse_unsendable,
    to_iso,
)
from target_lago.sinks import Item, OneByOneSink

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse

SUBSCRIPTION_FIELDS = frozenset(
    {
        "external_customer_id",
        "plan_code",
        "external_id",
        "name",
        "billing_time",
        "subscription_at",
        "ending_at",
        "billing_entity_code",
        "consolidate_invoice",
        "purchase_order_number",
        "invoice_custom_section",
    }
)
SUBSCRIPTION_READ_ONLY = frozenset(
    {
        "lago_id",
        "lago_customer_id",
        "status",
        "created_at",
        "canceled_at",
        "started_at",
        "terminated_at",
        "previous_plan_code",
        "next_plan_code",
        "downgrade_plan_date",
        "trial_ended_at",
        "current_billing_period_started_at",
        "current_billing_period_ending_at",
        "on_termination_credit_note",
        "on_termination_invoice",
        "plan_amount_cents",
        "plan_amount_currency",
        "applied_invoice_custom_sections",
        "payment_method",
        "cancellation_reason",
        "activated_at",
        "activation_rules",
        "plan",
        "plan_overrides",
        "applicable_usage_thresholds",
    }
)
# A row in one of these states ends the subscription in the other state (DELETE).
ENDING = {"terminated": "active", "canceled": "pending"}
ENDED = {"active": "terminated", "pending": "canceled"}
# Subscriptions in this state wait for a payment: nothing is sent for them.
SKIPPED_SUBSCRIPTION_STATUSES = frozenset({"incomplete"})
STATUSES = frozenset({"active", "pending", "terminated", "canceled", "incomplete"})


def _state(item: Item) -> str:
    """The state a row asks for: active unless it says pending."""
    return "pending" if item.record.get("status") == "pending" else "active"


def normal_status(text: str) -> str:
    """A status in Lago's spelling: trimmed, lower case, "cancelled" as "canceled"."""
    status = text.strip().lower()
    return "canceled" if status == "cancelled" else status


def subscription_payload(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Build the `subscription` body of `POST /subscriptions`.

    Args:
        record: The record (warehouse row or tap-lago subscription).

    Returns:
        The body and the record's columns that Lago cannot take (ignored).

    Raises:
        RecordSkipped: For an incomplete subscription.
        RecordRejected: When a required field is missing or a date cannot be read.
    """
    status = record.get("status")
    if isinstance(status, str) and status in SKIPPED_SUBSCRIPTION_STATUSES:
        raise RecordSkipped(f"status is {status}")
    if status not in STATUSES and not missing(status):
        raise RecordRejected(
            {"status": ["value_is_invalid"]},
            f"'status' {status!r} is none of {', '.join(sorted(STATUSES))} (a row of "
            "unknown status is neither started nor ended)",
        )
    details: dict[str, list[str]] = {}
    reasons: list[str] = []
    for field in ("external_customer_id", "plan_code", "external_id"):
        if missing(record.get(field)):
            details[field] = ["value_is_mandatory"]
            reasons.append(f"'{field}' is missing or empty")
    body: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in record.items():
        if key in SUBSCRIPTION_FIELDS:
            if value is not None:
                body[key] = value
        elif key not in SUBSCRIPTION_READ_ONLY and not key.startswith("_sdc_"):
            ignored.append(key)
    for field in ("subscription_at", "ending_at"):
        if field in body:
            try:
                body[field] = to_iso(body[field])
            except ValueError as exc:
                details[field] = ["invalid_date"]
                reasons.append(f"'{field}' {exc}")
    if details:
        raise RecordRejected(details, "; ".join(reasons))
    for field in ("external_customer_id", "plan_code", "external_id"):
        body[field] = str(body[field])
    refuse_unsendable(body)
    return plain(body), ignored


def ending_payload(record: Mapping[str, Any]) -> dict:
    """What identifies the subscription a `terminated` or `canceled` row ends.

    `external_id`, and when present `external_customer_id`, `plan_code`,
    `subscription_at` and the time it ended (`terminated_at` / `canceled_at`): a live
    subscription that differs from them is another one (a later plan, a re-created one,
    or one created after this end) and is left alone.

    Raises:
        RecordRejected: When `external_id` is missing or the end time cannot be read.
    """
    if missing(record.get("external_id")):
        raise RecordRejected(
            {"external_id": ["value_is_mandatory"]}, "'external_id' is missing or empty"
        )
    payload: dict[str, Any] = {"external_id": str(record["external_id"])}
    for field in ("external_customer_id", "plan_code"):
        if not missing(record.get(field)):
            payload[field] = str(record[field])
    for field, name in (("terminated_at", "ended_at"), ("canceled_at", "ended_at"),
                        ("subscription_at", "subscription_at")):  # fmt: skip
        if record.get(field) is not None and name not in payload:
            try:
                payload[name] = to_iso(record[field])
            except ValueError as exc:
                raise RecordRejected({field: ["invalid_date"]}, f"'{field}' {exc}") from None
    return payload


def _same_time(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return epoch_seconds(a) == epoch_seconds(b) is not None


def _ending(item: Item) -> str | None:
    """For a row that ends its subscription, the status of the live row it ends."""
    status = item.record.get("status")
    return ENDING.get(status) if isinstance(status, str) else None


class SubscriptionsSink(OneByOneSink):
    """`POST`, `PUT` and `DELETE /subscriptions`: one row, one subscription state."""

    action = "subscriptions"
    endpoint = "/subscriptions"
    root_key = "subscription"
    rank = 60
    self_parsed = ("subscription_at", "ending_at", "terminated_at", "canceled_at")

    def _get_context(self, record: dict) -> dict:
        # One spelling of the status first: " Terminated" and "cancelled" end a
        # subscription too (an unknown status is rejected by the payload).
        if isinstance(record.get("status"), str):
            record["status"] = normal_status(record["status"])
        # A termination is queued only once the events received before it are in Lago.
        status = record.get("status")
        if not self.lago.dry_run and isinstance(status, str) and status in ENDING:
            self.lago.flush_after(self.rank)
        return super()._get_context(record)

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a subscription body (or, to end one, what identifies it)."""
        status = record.get("status")
        if isinstance(status, str) and status in ENDING:
            payload = ending_payload(record)
        else:
            payload, ignored = subscription_payload(record)
            self.warn_ignored(ignored)
        return payload, f"subscription {payload['external_id']!r}"

    def describe(self, item: Item) -> str:
        """The request of a record, for the dry run's log."""
        want = _ending(item)
        if want is None:
            return super().describe(item)
        query = "?status=pending" if want == "pending" else ""
        return f"DELETE {self.endpoint}/{item.payload['external_id']}{query}"

    def order(self, groups: list[list[Item]]) -> list[list[Item]]:
        """Send an active subscription before a pending one of the same external_id.

        Rows that end a subscription keep their place. Successive rows of one state with
        other plans (a table holding a subscription's plans as history) come down to the
        latest: posting an older plan after a newer one would schedule a downgrade, on
        every replay.
        """
        ordered = []
        for whole in groups:
            group: list[Item] = []
            for item in whole:
                earlier = group[-1] if group else None
                if (
                    earlier is not None
                    and _ending(item) is None
                    and _ending(earlier) is None
                    and _state(earlier) == _state(item)
                    and earlier.payload.get("plan_code") != item.payload.get("plan_code")
                ):
                    self.stats.add("skipped")
                    self.logger.info(
                        "Skipped a row of %s: a later row of the same subscription in this "
                        "run supersedes it",
                        group[-1].key,
                    )
                    group[-1] = item
                else:
                    group.append(item)
            writes = iter(
                sorted(
                    (item for item in group if _ending(item) is None),
                    key=lambda item: item.record.get("status") == "pending",
                )
            )
            ordered.append([item if _ending(item) else next(writes) for item in group])
        return ordered

    def setup(self) -> None:
        """Keys whose rows wait until the next STATE (see `_deliver_group`)."""
        self._held: set[str] = set()

    def _deliver_group(self, group: list[Item]) -> None:
        for index, item in enumerate(group):
            want = _ending(item)
            if item.key in self._held and not (want is None and _state(item) == "active"):
                self.lago.defer(self, item)  # after the held downgrade, in received order
                continue
            if want is not None:
                self._end(item, want)
                continue
            stored = self._stored(item)
            if self._before_its_active(item, stored):
                # A pending downgrade read from Lago whose active row sits in a later batch
                # of this run: posting it now would create it as the subscription, and the
                # active row would then replace it. Its key's rows wait for the next STATE.
                self._held.add(item.key)
                for rest in group[index:]:
                    self.lago.defer(self, rest)
                return
            self._create(item, stored)

    def deliver_deferred(self, items: list[Item]) -> None:
        """Rows held behind a pending downgrade, once the run's active rows are in Lago."""
        self._held.discard(items[0].key)
        for item in items:
            want = _ending(item)
            if want is not None:
                self._end(item, want)
            else:
                self._create(item, self._stored(item))

    def _create(self, item: Item, stored: list[dict]) -> None:
        """Create the subscription (or see it there), then give it the plan the row names."""
        if self.done(item, stored):
            outcome: str | None = "already_present"
            if not any(s.get("status") in ENDED for s in stored):
                self.stats.add("already_present")  # history: nothing live to override
                return
        else:
            outcome = self._write(item, stored)
        if outcome is not None and self._wants_plan(item):
            outcome = self._override(item, outcome)
        if outcome is not None:
            self.stats.add(outcome)

    @staticmethod
    def _wants_plan(item: Item) -> bool:
        return item.record.get("plan_overrides") is not None or item.record.get("plan") is not None

    def _override(self, item: Item, outcome: str, absent: str | None = None) -> str | None:
        """Send the overrides Lago does not hold yet; the outcome (None: dead-lettered).

        `absent` is the outcome when Lago has no subscription in the row's state (default:
        `outcome`; a scheduled downgrade Lago dates on its own).
        """
        state = _state(item)
        current = self._find(item, state)
        plan = (current or {}).get("plan")
        if not isinstance(plan, Mapping):
            return outcome if absent is None else absent
        try:
            want = plan_overrides.wanted(item.record)
            body, changed = plan_overrides.pending(
                want or {}, plan, whole_plan=item.record.get("plan_overrides") is None
            )
        except Unmapped as exc:
            self.reject(item.record, None, "value_is_invalid", exc.details, f"{item.key}: {exc}",
                        payload=item.payload)  # fmt: skip
            return None
        if not body:
            return outcome
        query = "?status=pending" if state == "pending" else ""
        response = self.lago.client.request(
            "PUT", f"{self._path(item)}{query}", encode({"subscription": {"plan_overrides": body}})
        )
        if response.ok:
            return "delivered"
        if response.status == 403:
            self._refused(item, response, body, changed)
        else:
            self.reject_response(item, response, response.error_details or response.body)
        return None

    def _refused(
        self, item: Item, response: LagoResponse, body: Mapping[str, Any], changed: list[str]
    ) -> None:
        """Dead-letter a row whose plan overrides Lago refused (no premium licence)."""
        instead = (
            "leave the plan_overrides column out"
            if item.record.get("plan_overrides") is not None
            else "deselect the subscription_plans stream"
        )
        self.reject(
            item.record,
            403,
            response.error_code,
            {"plan_overrides": [response.error_code or "feature_unavailable"]},
            f"{item.key}: its plan differs from plan {item.payload['plan_code']!r} in "
            f"{', '.join(changed)}, and Lago refused the overrides (HTTP 403 "
            f"{response.error_code}): plan overrides need a premium licence in the "
            f"organisation written to (or {instead} to keep Lago's plan); wanted "
            f"{shown(body)}",
            payload=item.payload,
        )

    def _before_its_active(self, item: Item, stored: list[dict]) -> bool:
        """Whether a row is a pending downgrade whose subscription is not live in Lago yet.

        Such a row names the plan it follows (`previous_plan_code`, as Lago lists it).
        """
        previous = item.record.get("previous_plan_code")
        return (
            _state(item) == "pending"
            and isinstance(previous, str)
            and bool(previous)
            and item.key not in self._held
            and not any(s.get("status") in ENDED for s in stored)
        )

    def _stored(self, item: Item) -> list[dict]:
        """The subscriptions with this row's external_id and customer, in any state."""
        payload = item.payload
        query = urllib.parse.urlencode(
            {
                "external_customer_id": payload["external_customer_id"],
                "status[]": ["active", "pending", "terminated", "canceled"],
                "per_page": "100",
            },
            doseq=True,
        )
        listed = self.lago.client.request("GET", f"{self.endpoint}?{query}", None)
        rows = (listed.body or {}).get("subscriptions") if listed.ok else None
        return [
            row
            for row in rows or []
            if isinstance(row, dict) and row.get("external_id") == payload["external_id"]
        ]

    @staticmethod
    def done(item: Item, stored: list[dict]) -> bool:
        """Whether posting the row again would change what it already did.

        True when Lago holds its subscription ended and nothing live (posting would start
        a new one: a replay of "created, then terminated", or a row still active upstream
        for a subscription Lago ended), or when the row's plan is already scheduled as the
        live one's downgrade (posting would schedule it again).
        """
        payload = item.payload
        plan, start = payload["plan_code"], payload.get("subscription_at")
        live = [s for s in stored if s.get("status") in ENDED]
        if not live:
            return any(
                s.get("plan_code") == plan
                and (start is None or _same_time(start, s.get("subscription_at")))
                for s in stored
            )
        return any(
            s.get("status") == "active"
            and s.get("plan_code") != plan
            and s.get("next_plan_code") == plan
            for s in live
        )

    # Create, change plan, update.

    def _write(self, item: Item, before: list[dict]) -> str | None:
        """Post the row, then update what differs; the outcome (None: dead-lettered).

        `before` is what Lago listed for the row just before: a post that answers one of
        those subscriptions unchanged is already present, whatever the clocks say.
        """
        client = self.lago.client
        data = b'{"subscription":' + item.data + b"}"
        try:
            overrides = self._overrides_at_creation(item, before)
        except Unmapped as exc:
            self.reject(item.record, None, "value_is_invalid", exc.details, f"{item.key}: {exc}",
                        payload=item.payload)  # fmt: skip
            return None
        if overrides:
            data = encode({"subscription": {**item.payload, "plan_overrides": overrides[0]}})
        response = client.post(self.endpoint, data)
        if overrides and response.status == 403:
            self._refused(item, response, *overrides)
            return None
        if not response.ok:
            self.reject_response(item, response, response.error_details or response.body)
            return None
        body = response.body if isinstance(response.body, dict) else {}
        stored = body.get("subscription") or {}
        changes = self.changes(item, stored)
        if not changes:
            if stored.get("lago_id") and stored["lago_id"] in {s.get("lago_id") for s in before}:
                return "already_present"
            return self._posted(response)
        query = "?status=pending" if stored.get("status") == "pending" else ""
        update = client.request(
            "PUT", f"{self._path(item)}{query}", encode({"subscription": changes})
        )
        if update.ok:
            return "delivered"
        self.reject_response(item, update, update.error_details or update.body)
        return None

    def changes(self, item: Item, stored: Mapping[str, Any]) -> dict:
        """The updatable fields the record gives with another value than Lago's."""
        record, payload = item.record, item.payload
        out: dict[str, Any] = {}
        if "name" in record and record["name"] != stored.get("name"):
            out["name"] = record["name"]
        if "ending_at" in record and not _same_time(
            payload.get("ending_at"), stored.get("ending_at")
        ):
            out["ending_at"] = payload.get("ending_at")
        if (
            payload.get("subscription_at") is not None
            and stored.get("status") == "pending"
            and not stored.get("previous_plan_code")
            and not _same_time(payload["subscription_at"], stored.get("subscription_at"))
        ):
            out["subscription_at"] = payload["subscription_at"]
        return out

    def settle_ok(self, item: Item, response: LagoResponse) -> None:
        """Count a re-post that returned an older subscription as already present."""
        self.stats.add(self._posted(response))

    def _overrides_at_creation(
        self, item: Item, before: list[dict]
    ) -> tuple[dict, list[str]] | None:
        """A `plan_overrides` column (body, fields that differ) for the creating post.

        Sent together, a refusal (no premium licence) creates nothing: the subscription is
        never billed on the plan without its overrides. A subscription Lago holds already
        gets its overrides compared and sent afterwards (`_override`).
        """
        if item.record.get("plan_overrides") is None:
            return None
        if any(s.get("status") == _state(item) for s in before):
            return None
        code = urllib.parse.quote(str(item.payload["plan_code"]), safe="")
        response = self.lago.client.get(f"/plans/{code}")
        plan = (response.body or {}).get("plan") if response.ok else None
        if not isinstance(plan, Mapping):
            return None  # no such plan: the post says so
        body, changed = plan_overrides.pending(plan_overrides.wanted(item.record) or {}, plan)
        return (body, changed) if body else None

    def _posted(self, response: LagoResponse) -> str:
        body = response.body if isinstance(response.body, dict) else {}
        created = (body.get("subscription") or {}).get("created_at")
        if self.lago.existed_before(created, response.server_time):
            return "already_present"
        return "delivered"

    # Terminate.

    def _path(self, item: Item) -> str:
        return f"{self.endpoint}/{urllib.parse.quote(item.payload['external_id'], safe='')}"

    def _find(self, item: Item, status: str) -> dict | None:
        """The subscription with this external_id and status (None: 404)."""
        response = self.lago.client.get(self._path(item), {"status": status})
        if response.ok and isinstance(response.body, dict):
            found = response.body.get("subscription")
            return found if isinstance(found, dict) else None
        if response.status == 404:
            return None
        msg = f"GET {self._path(item)} answered HTTP {response.status} {response.error_code}"
        raise LagoUnavailableError(msg)

    def _ended_row(self, item: Item, live: Mapping[str, Any], want: str) -> dict | None:
        """The row `live` once ended (looked up by its lago_id), or None."""
        found = self._find(item, ENDED[want])
        if found is not None and found.get("lago_id") == live.get("lago_id"):
            return found
        params = {
            "external_customer_id": str(live.get("external_customer_id") or ""),
            "status[]": ENDED[want],
            "per_page": "100",
        }
        listed = self.lago.client.get(self.endpoint, params)
        rows = (listed.body or {}).get("subscriptions") if listed.ok else None
        for row in rows or []:
            if isinstance(row, dict) and row.get("lago_id") == live.get("lago_id"):
                return row
        return None

    @staticmethod
    def describes(item: Item, sub: Mapping[str, Any]) -> bool:
        """Whether a stored subscription is the one this row ends."""
        payload = item.payload
        for field in ("external_customer_id", "plan_code"):
            if field in payload and sub.get(field) != payload[field]:
                return False
        start = payload.get("subscription_at")
        if start is not None and not _same_time(start, sub.get("subscription_at")):
            return False
        ended, created = (
            epoch_seconds(payload.get("ended_at")),
            epoch_seconds(sub.get("created_at")),
        )
        return ended is None or created is None or created <= ended

    def _end(self, item: Item, want: str) -> None:
        live = self._find(item, want)
        if live is not None and self.describes(item, live):
            self._delete(item, want, live)
            return
        if live is None:
            ended = self._find(item, ENDED[want])
            if ended is not None and self.describes(item, ended):
                self.stats.add("already_present")
                return
            if ended is None and "ended_at" not in item.payload:
                self.reject(
                    item.record,
                    404,
                    "subscription_not_found",
                    {"external_id": ["subscription_not_found"]},
                    f"{item.key}: Lago has no {want} or {ENDED[want]} subscription with this "
                    "external_id, so there is nothing to end",
                    payload=item.payload,
                )
                return
        self.stats.add("skipped")
        self.logger.info(
            "Skipped a record of stream '%s': %s is history (Lago has no subscription with "
            "this external_id, or another one: other plan or customer, or created after "
            "this end)",
            self.stream_name,
            item.key,
        )

    def _delete(self, item: Item, want: str, live: Mapping[str, Any]) -> None:
        """DELETE the live row; after a failed attempt, look before sending it again.

        A DELETE retried blindly could end a newer subscription with the same external_id
        (LAGO_API_WRITES.md section 2), so each attempt is sent once and, when its answer
        is lost, the row is read again: ended means done, still live means send again.
        """
        client = self.lago.client
        query = "?status=pending" if want == "pending" else ""
        for attempt in range(client.max_retries + 1):
            try:
                response = client.request(
                    "DELETE", f"{self._path(item)}{query}", None, max_retries=0
                )
            except LagoUnavailableError:
                response = None
            if response is not None and response.ok:
                self.stats.add("delivered")
                return
            if response is not None and response.status != 404:
                self.reject_response(item, response, response.error_details or response.body)
                return
            now = self._find(item, want)
            if now is None or now.get("lago_id") != live.get("lago_id"):
                if self._ended_row(item, live, want) is not None:
                    ours = attempt > 0 or response is None
                    self.stats.add("delivered" if ours else "already_present")
                else:
                    self.reject(
                        item.record,
                        404,
                        "subscription_not_found",
                        {"external_id": ["subscription_not_found"]},
                        f"{item.key}: the subscription to end disappeared from Lago",
                        payload=item.payload,
                    )
                return
            client.pause(attempt)
        msg = f"DELETE {self._path(item)} still failing after {client.max_retries} retries"
        raise LagoUnavailableError(msg)
