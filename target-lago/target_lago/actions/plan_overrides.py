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


def _named_parts(
    given: Any, held: list[Any], lists: str, noun: str, code_key: str
) -> tuple[list[Mapping], list[tuple[int, Mapping, Mapping]]]:
    """The plan's parts (charges or fixed charges) and, for each given one, the one it names.

    Matched by `id` (their own or their parent's), else `code`, else the n-th on the same
    `code_key` (billable metric or add-on). Returns the plan's parts and (index, given
    part, plan's part) per given part.

    Raises:
        Unmapped: When `given` is not a list of objects, or a part names none of the plan's.
    """
    field = f"plan_overrides.{lists}"
    if not isinstance(given, list) or not all(isinstance(g, Mapping) for g in given):
        raise Unmapped(field, f"'{field}' must be a list")
    held = [h for h in held if isinstance(h, Mapping)]
    by_id = {}
    for h in held:
        by_id[h.get("lago_id")] = h
        if h.get("lago_parent_id"):
            by_id[h["lago_parent_id"]] = h
    unnamed = [{**g, code_key: str(g.get(code_key))} for g in given if not g.get("id")]
    ids = iter(match(unnamed, held, code_key))
    named = []
    for index, g in enumerate(given):
        if g.get("id"):
            found = by_id.get(g["id"])
        else:
            lago_id = next(ids)
            found = next((h for h in held if h.get("lago_id") == lago_id), None)
        if found is None:
            where = f"{field}[{index}]"
            name = g.get("id") or g.get("code") or g.get(code_key)
            raise Unmapped(
                where,
                f"'{where}' names {noun} {name!r}, which the subscription's plan does not "
                f"have (name it by id, code or {code_key} of a {noun} of the plan)",
            )
        named.append((index, g, found))
    return held, named


def _fixed_charges(
    given: Any, held: list[Any], *, whole_plan: bool
) -> tuple[list[dict], list[str]]:
    """The fixed charges to send, each with its id in Lago, and the ones that differ."""
    held, named = _named_parts(given, held, "fixed_charges", "fixed charge", "add_on_code")
    out, changed = [], []
    for index, f, found in named:
        field = f"plan_overrides.fixed_charges[{index}]"
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
    """The charges to send, each with its id in Lago, and the ones that differ."""
    held, named = _named_parts(given, held, "charges", "charge", "billable_metric_code")
    out, changed = [], []
    for index, c, found in named:
        field = f"plan_overrides.charges[{index}]"
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
