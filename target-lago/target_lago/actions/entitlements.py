"""`entitlements`: one plan's entitlement to one feature, with its privilege values.

A row is tap-lago's `entitlements` record (`plan_code`, the feature's `code`, `privileges`
as `[{code, value, ...}]`) or a warehouse row giving `privileges` as `{code: value}`. The
action reads what the plan holds for the feature (`GET /plans/{plan_code}/entitlements/
{code}`) and, when a privilege value differs or the feature is not granted yet, sends
`PATCH /plans/{plan_code}/entitlements` with that feature alone: Lago adds or changes the
privileges given and leaves the plan's other features and privileges alone. Equal values
send nothing (already present). Features need a premium licence; the plan and the feature
must exist (send the `plans` and `features` streams first: this action ranks after them).
A plan's whole set of entitlements, removals included, is the `plans` action's
`entitlements` column instead.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import Unmapped, as_object, shown
from target_lago.client import encode
from target_lago.mapping import RecordRejected, missing, plain
from target_lago.sinks import Item, OneByOneSink


def values(value: Any, field: str = "privileges") -> dict[str, Any]:
    """`{privilege_code: value}` from tap-lago's list or a `{code: value}` object."""
    value = as_object(value, field)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("code") for p in value):
        return {str(p["code"]): p.get("value") for p in value}
    raise Unmapped(field, f"'{field}' must be a list of {{code, value}} or an object")


def _same(a: Any, b: Any) -> bool:
    """Values as Lago types them: "true" is true, "5" is 5."""

    def norm(v: Any) -> Any:
        return str(v).lower() if isinstance(v, bool) else (None if v is None else str(v))

    return bool(norm(a) == norm(b))


class EntitlementsSink(OneByOneSink):
    """`PATCH /plans/{plan_code}/entitlements` for one feature, when it differs."""

    action = "entitlements"
    endpoint = "/plans"
    root_key = "entitlements"
    rank = 25
    self_parsed = ("privileges",)

    def build(self, record: dict) -> tuple[dict, str]:
        """`{plan_code, code, privileges: {code: value}}`."""
        reasons = {
            field: ["value_is_mandatory"]
            for field in ("plan_code", "code")
            if missing(record.get(field))
        }
        if reasons:
            raise RecordRejected(
                reasons, " and ".join(f"'{f}' is missing or empty" for f in reasons)
            )
        payload = {
            "plan_code": str(record["plan_code"]),
            "code": str(record["code"]),
            "privileges": values(record.get("privileges")),
        }
        key = f"entitlement of plan {payload['plan_code']!r} to {payload['code']!r}"
        return plain(payload), key

    def path(self, item: Item) -> str:
        """`/plans/{plan_code}/entitlements`."""
        return f"/plans/{urllib.parse.quote(item.payload['plan_code'], safe='')}/entitlements"

    def describe(self, item: Item) -> str:
        """The request a record would make, for the dry run's log."""
        body = {"entitlements": {item.payload["code"]: item.payload["privileges"]}}
        return f"PATCH {self.path(item)} {shown(body)} (when it differs)"

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            self.apply(item)

    def apply(self, item: Item) -> None:
        """Read the feature's entitlement on the plan; patch it when a value differs."""
        client = self.lago.client
        code, wanted = item.payload["code"], item.payload["privileges"]
        read = client.get(f"{self.path(item)}/{urllib.parse.quote(code, safe='')}")
        held: dict[str, Any] | None = None
        if read.ok and isinstance(read.body, dict):
            held = values((read.body.get("entitlement") or {}).get("privileges"))
        elif read.status != 404 or read.error_code not in ("entitlement_not_found", None):
            self.reject_response(item, read, read.error_details or read.body)
            return
        if held is not None and all(k in held and _same(v, held[k]) for k, v in wanted.items()):
            self.stats.add("already_present")
            return
        body = encode({"entitlements": {code: wanted}})
        response = client.request("PATCH", self.path(item), body)
        if response.ok:
            self.stats.add("delivered")
        elif response.status == 403:
            self.reject(
                item.record,
                403,
                response.error_code,
                {"entitlements": [response.error_code or "feature_unavailable"]},
                f"Lago refused {item.key} (HTTP 403 {response.error_code}): entitlements need "
                "a premium licence in the organisation written to (or deselect the "
                "entitlements stream)",
                payload=item.payload,
            )
        else:
            self.reject_response(item, response, response.error_details or response.body)
