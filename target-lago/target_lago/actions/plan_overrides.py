"""A subscription's plan overrides: what to send so its plan becomes the one wanted.

Lago (premium) gives an overridden subscription a plan of its own, with its parent's code
(`plan_overrides` on `POST` or `PUT /subscriptions`; the first creates that plan, later
ones update it). A record asks for overrides in one of two ways:

- `plan_overrides`: the request field itself (a warehouse row); charges name the charge
  they override by `id` (the plan's or the subscription's own), or by `code` or
  `billable_metric_code` (ids differ between organisations);
- `plan`: the plan the subscription is billed on, as `GET /subscriptions/{external_id}`
  shows it (tap-lago's `subscription_plans`): every overridable part of it is wanted.

`pending(wanted, stored)` compares with the plan Lago bills the subscription on and gives
the `plan_overrides` to send, or nothing when Lago already holds them: a rerun sends
nothing. Overridable parts: name, invoice_display_name, description, amount_cents,
amount_currency, trial_period, tax_codes, minimum_commitment, usage_thresholds, each
charge's invoice_display_name, min_amount_cents, properties, filters and tax_codes, and
each fixed charge's invoice_display_name, units, properties and tax_codes (named by `id`,
or by `code` or `add_on_code`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import (
    Unmapped,
    as_object,
    codes,
    differences,
    numeric,
    pairs,
    text,
    whole,
)
from target_lago.actions.plans import (
    charge_filters,
    commitment,
    listed,
    match,
    properties,
    threshold,
)

PLAN_FIELDS = ("name", "invoice_display_name", "description", "amount_cents",
               "amount_currency", "trial_period")  # fmt: skip
CHARGE_FIELDS = ("invoice_display_name", "min_amount_cents", "properties", "filters",
                 "tax_codes")  # fmt: skip
FIXED_FIELDS = ("invoice_display_name", "units", "properties", "tax_codes")


def from_plan(plan: Mapping[str, Any]) -> dict:
    """The `plan_overrides` that make a subscription's plan equal `plan` (as Lago shows it)."""
    out: dict[str, Any] = {k: plan[k] for k in PLAN_FIELDS if k in plan}
    out["tax_codes"] = codes(plan, "tax_codes", "taxes") or []
    held = plan.get("minimum_commitment")
    out["minimum_commitment"] = (
        commitment(held, "plan.minimum_commitment") if isinstance(held, Mapping) else {}
    )
    out["charges"] = _parts(plan, "charges", "billable_metric_code", CHARGE_FIELDS)
    out["fixed_charges"] = _parts(plan, "fixed_charges", "add_on_code", FIXED_FIELDS)
    out["usage_thresholds"] = [
        {k: t.get(k) for k in ("threshold_display_name", "amount_cents", "recurring")}
        for t in plan.get("usage_thresholds") or []
        if isinstance(t, Mapping)
    ]
    return out


def _parts(plan: Mapping[str, Any], key: str, named_by: str, fields: Any) -> list[dict]:
    """A plan's charges or fixed charges as overrides name them (code, what they bill)."""
    return [
        {
            "code": part.get("code"),
            named_by: part.get(named_by),
            **{k: part[k] for k in fields if k in part},
            "tax_codes": codes(part, "tax_codes", "taxes") or [],
        }
        for part in plan.get(key) or []
        if isinstance(part, Mapping)
    ]


def wanted(record: Mapping[str, Any]) -> dict | None:
    """The overrides a record asks for (None: it asks for none).

    Raises:
        Unmapped: When `plan_overrides` or `plan` is not an object.
    """
    given = as_object(record.get("plan_overrides"), "plan_overrides")
    if given is not None:
        if not isinstance(given, Mapping):
            raise Unmapped("plan_overrides", f"'plan_overrides' must be an object, got {given!r}")
        return dict(given)
    plan = as_object(record.get("plan"), "plan")
    if plan is None:
        return None
    if not isinstance(plan, Mapping):
        raise Unmapped("plan", f"'plan' must be an object, got {plan!r}")
    return from_plan(plan)


def _plan_part(key: str, value: Any) -> Any:
    if key in ("invoice_display_name", "description"):
        return text(value)
    if key == "amount_cents":
        return whole(value, key)
    if key == "trial_period":
        return numeric(value or 0, key)
    return value


def _charge_part(key: str, value: Any, field: str) -> Any:
    if key == "invoice_display_name":
        return text(value)
    if key == "min_amount_cents":
        return whole(value or 0, field)
    if key == "properties":
        return properties(value, field)
    if key == "filters":
        return charge_filters(as_object(value, field), field)
    return value


def _stored_charge(stored: Mapping[str, Any]) -> dict:
    return {
        **{k: stored.get(k) for k in CHARGE_FIELDS if k != "tax_codes"},
        "tax_codes": codes(stored, "tax_codes", "taxes") or [],
    }


def pending(
    want: Mapping[str, Any], stored: Mapping[str, Any], *, whole_plan: bool = False
) -> tuple[dict, list[str]]:
    """The `plan_overrides` to send and the fields that differ (nothing: Lago holds them).

    Charges are matched to the ones of the plan Lago bills the subscription on: by `id`
    (its own or its parent's), else by `code`, else the n-th on the same metric. When
    anything differs, every wanted part is sent, charges with their ids in Lago. With
    `whole_plan` (a `plan` wanted whole) a charge Lago holds and `want` lacks differs too.

    Raises:
        Unmapped: When a charge names no charge of the plan, or a value cannot be read.
    """
    changed: list[str] = []
    body: dict[str, Any] = {}
    for key in PLAN_FIELDS:
        if key in want:
            body[key] = want[key]
            if pairs(_plan_part(key, want[key])) != pairs(_plan_part(key, stored.get(key))):
                changed.append(key)
    if "tax_codes" in want:
        body["tax_codes"] = list(want["tax_codes"] or [])
        changed += differences(
            {"tax_codes": body["tax_codes"]},
            {"tax_codes": codes(stored, "tax_codes", "taxes") or []},
        )
    if "minimum_commitment" in want:
        mine = commitment(want["minimum_commitment"], "plan_overrides.minimum_commitment")
        held = stored.get("minimum_commitment")
        theirs = commitment(held, "minimum_commitment") if isinstance(held, Mapping) else {}
        if mine:
            body["minimum_commitment"] = mine
        if pairs(mine) != pairs(theirs):
            changed.append("minimum_commitment")
    if want.get("charges") is not None:
        charges, charge_changes = _charges(
            want["charges"], stored.get("charges") or [], whole_plan=whole_plan
        )
        body["charges"] = charges
        changed += charge_changes
    if want.get("fixed_charges") is not None:
        fixed, fixed_changes = _fixed_charges(
            want["fixed_charges"], stored.get("fixed_charges") or [], whole_plan=whole_plan
        )
        body["fixed_charges"] = fixed
        changed += fixed_changes
    if want.get("usage_thresholds") is not None:
        field = "plan_overrides.usage_thresholds"
        limits = listed(want["usage_thresholds"], field, threshold)
        held_limits = listed(stored.get("usage_thresholds") or [], "usage_thresholds", threshold)
        body["usage_thresholds"] = limits
        if pairs(limits) != pairs(held_limits):
            changed.append("usage_thresholds")
    return (body if changed else {}), changed


def _fixed_part(key: str, value: Any, field: str) -> Any:
    if key == "invoice_display_name":
        return text(value)
    if key == "units":
        return numeric(value or 0, field)
    if key == "properties":
        return properties(value, field)
    return value


def _fixed_charges(
    given: Any, held: list[Any], *, whole_plan: bool
) -> tuple[list[dict], list[str]]:
    """The fixed charges to send, each with its id in Lago, and the ones that differ.

    Matched by `id` (their own or their parent's), else `code`, else the n-th on the
    same add-on.
    """
    field = "plan_overrides.fixed_charges"
    if not isinstance(given, list) or not all(isinstance(f, Mapping) for f in given):
        raise Unmapped(field, f"'{field}' must be a list")
    held = [f for f in held if isinstance(f, Mapping)]
    by_id = {}
    for f in held:
        by_id[f.get("lago_id")] = f
        if f.get("lago_parent_id"):
            by_id[f["lago_parent_id"]] = f
    unnamed = [{**f, "add_on_code": str(f.get("add_on_code"))} for f in given if not f.get("id")]
    ids = iter(match(unnamed, held, "add_on_code"))
    out, changed = [], []
    for index, f in enumerate(given):
        field = f"plan_overrides.fixed_charges[{index}]"
        if f.get("id"):
            found = by_id.get(f["id"])
        else:
            lago_id = next(ids)
            found = next((h for h in held if h.get("lago_id") == lago_id), None)
        if found is None:
            name = f.get("id") or f.get("code") or f.get("add_on_code")
            raise Unmapped(
                field,
                f"'{field}' names fixed charge {name!r}, which the subscription's plan does "
                "not have (name it by id, code or add_on_code of a fixed charge of the plan)",
            )
        sent = {"id": found.get("lago_id")}
        mine: dict[str, Any] = {}
        theirs: dict[str, Any] = {}
        for key in FIXED_FIELDS:
            if key in f:
                sent[key] = f[key]
                held_value = (
                    codes(found, "tax_codes", "taxes") or []
                    if key == "tax_codes"
                    else found.get(key)
                )
                mine[key] = _fixed_part(key, f[key], f"{field}.{key}")
                theirs[key] = _fixed_part(key, held_value, f"{field}.{key}")
        if differences(mine, theirs):
            changed.append(f"fixed_charges[{index}]")
        out.append(sent)
    if whole_plan and len({s["id"] for s in out}) != len(held):
        changed.append("fixed_charges")
    return out, changed


def _charges(given: Any, held: list[Any], *, whole_plan: bool) -> tuple[list[dict], list[str]]:
    if not isinstance(given, list) or not all(isinstance(c, Mapping) for c in given):
        raise Unmapped("plan_overrides.charges", "'plan_overrides.charges' must be a list")
    held = [c for c in held if isinstance(c, Mapping)]
    by_id = {}
    for c in held:
        by_id[c.get("lago_id")] = c
        if c.get("lago_parent_id"):
            by_id[c["lago_parent_id"]] = c
    unnamed = [c for c in given if not c.get("id")]
    keyed = [{**c, "billable_metric_code": str(c.get("billable_metric_code"))} for c in unnamed]
    ids = iter(match(keyed, held, "billable_metric_code"))
    out, changed = [], []
    for index, c in enumerate(given):
        field = f"plan_overrides.charges[{index}]"
        found = by_id.get(c["id"]) if c.get("id") else None
        if not c.get("id"):
            lago_id = next(ids)
            found = next((h for h in held if h.get("lago_id") == lago_id), None)
        if found is None:
            name = c.get("id") or c.get("code") or c.get("billable_metric_code")
            raise Unmapped(
                field,
                f"'{field}' names charge {name!r}, which the subscription's plan does not "
                "have (name it by id, code or billable_metric_code of a charge of the plan)",
            )
        sent = {"id": found.get("lago_id")}
        mine, theirs = {}, _stored_charge(found)
        for key in CHARGE_FIELDS:
            if key in c:
                sent[key] = c[key]
                mine[key] = _charge_part(key, c[key], f"{field}.{key}")
                theirs[key] = _charge_part(key, theirs.get(key), f"{field}.{key}")
        if differences(mine, theirs):
            changed.append(f"charges[{index}]")
        out.append(sent)
    if whole_plan and len({s["id"] for s in out}) != len(held):
        changed.append("charges")  # a charge to remove, or two rows on one charge
    return out, changed
