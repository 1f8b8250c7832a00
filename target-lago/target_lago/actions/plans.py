"""`plans`: `POST /plans`, `PUT /plans/{code}` when it differs (see `catalog`).

A plan is written whole with its charges, fixed charges, minimum commitment and usage
thresholds. Charges name their billable metric by `billable_metric_code` and fixed charges
their add-on by `add_on_code` (tap-lago's read shape; ids differ between organisations):
the target looks the ids up in Lago. On update, each charge is matched to one Lago holds
(by `code`, else by metric in order) and sent with its `id`, so an unchanged charge keeps
its id; charges Lago holds and the record does not are removed by Lago.

A record with `entitlements` (tap-lago's list of features with privilege values, or
`{feature_code: {privilege_code: value}}`) sets the plan's entitlements to exactly those:
`POST /plans/{code}/entitlements` when they differ.
"""

from __future__ import annotations

import typing as t
import urllib.parse
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from target_lago.actions.catalog import (
    DECIMAL_KEYS,
    Canonical,
    CatalogSink,
    Resolver,
    Unmapped,
    as_object,
    codes,
    differences,
    flag,
    number,
    numeric,
    pairs,
    put,
    shown,
    text,
    whole,
)
from target_lago.sinks import Item

if t.TYPE_CHECKING:
    from target_lago.client import LagoResponse

# Parts of charges and fixed charges that Lago fills in when a write leaves them out.
OPTIONAL = frozenset({"code", "invoice_display_name"})


def properties(value: Any, field: str) -> dict:
    """Charge properties as written, their decimal amounts checked."""

    def walk(item: Any, key: str) -> Any:
        if isinstance(item, Mapping):
            return {str(k): walk(v, str(k)) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, key) for v in item]
        if key in DECIMAL_KEYS:
            return number(item, f"{field}.{key}")
        return item

    value = as_object(value, field)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {value!r}")
    return t.cast("dict", walk(value, ""))


def charge_filters(value: Any, field: str) -> list[dict]:
    """`[{invoice_display_name, properties, values}]`."""
    out = []
    for item in value or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("values"), Mapping):
            raise Unmapped(field, f"'{field}' must be a list of {{properties, values}}")
        out.append(
            {
                "invoice_display_name": text(item.get("invoice_display_name")),
                "properties": properties(item.get("properties"), f"{field}.properties"),
                "values": {str(k): [str(v) for v in vs] for k, vs in item["values"].items()},
            }
        )
    return out


def charge(item: Any, field: str) -> dict:
    """One charge in canonical form, unset options at Lago's defaults."""
    if not isinstance(item, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {item!r}")
    if not item.get("billable_metric_code"):
        reason = "ids differ between organisations" if item.get("billable_metric_id") else ""
        raise Unmapped(
            f"{field}.billable_metric_code",
            f"'{field}' must name its metric by billable_metric_code"
            + (f" ({reason})" if reason else ""),
        )
    out: Canonical = {
        "billable_metric_code": str(item["billable_metric_code"]),
        "charge_model": item.get("charge_model"),
        "pay_in_advance": bool(flag(item.get("pay_in_advance"), f"{field}.pay_in_advance")),
        "invoiceable": flag(item.get("invoiceable", True), f"{field}.invoiceable"),
        "regroup_paid_fees": item.get("regroup_paid_fees"),
        "invoice_display_name": text(item.get("invoice_display_name")),
        "prorated": bool(flag(item.get("prorated"), f"{field}.prorated")),
        "min_amount_cents": whole(item.get("min_amount_cents") or 0, f"{field}.min_amount_cents"),
        "properties": properties(item.get("properties"), f"{field}.properties"),
        "filters": charge_filters(as_object(item.get("filters"), field), f"{field}.filters"),
        "tax_codes": codes(item, "tax_codes", "taxes") or [],
    }
    if item.get("code"):
        out["code"] = str(item["code"])
    pricing = as_object(item.get("applied_pricing_unit"), f"{field}.applied_pricing_unit")
    if isinstance(pricing, Mapping):
        out["applied_pricing_unit"] = properties(pricing, f"{field}.applied_pricing_unit")
    if item.get("accepts_target_wallet") is not None:
        out["accepts_target_wallet"] = flag(item["accepts_target_wallet"], field)
    return out


def fixed_charge(item: Any, field: str) -> dict:
    """One fixed charge in canonical form."""
    if not isinstance(item, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {item!r}")
    if not item.get("add_on_code"):
        raise Unmapped(f"{field}.add_on_code", f"'{field}' must name its add-on by add_on_code")
    out: Canonical = {
        "add_on_code": str(item["add_on_code"]),
        "charge_model": item.get("charge_model"),
        "units": numeric(item.get("units") or 0, f"{field}.units"),
        "pay_in_advance": bool(flag(item.get("pay_in_advance"), f"{field}.pay_in_advance")),
        "prorated": bool(flag(item.get("prorated"), f"{field}.prorated")),
        "properties": properties(item.get("properties"), f"{field}.properties"),
        "tax_codes": codes(item, "tax_codes", "taxes") or [],
    }
    for key in ("code", "invoice_display_name"):
        if item.get(key):
            out[key] = str(item[key])
    return out


def listed(value: Any, field: str, one: t.Callable[[Any, str], dict]) -> list[dict]:
    """A list of nested objects in canonical form, in the record's order."""
    value = as_object(value, field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Unmapped(field, f"'{field}' must be a list, got {value!r}")
    return [one(item, f"{field}[{index}]") for index, item in enumerate(value)]


def commitment(value: Any, field: str) -> dict:
    """The minimum commitment (`{}`: none)."""
    value = as_object(value, field)
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {value!r}")
    out: Canonical = {"amount_cents": whole(value.get("amount_cents"), f"{field}.amount_cents")}
    if text(value.get("invoice_display_name")) is not None:
        out["invoice_display_name"] = str(value["invoice_display_name"])
    out["tax_codes"] = codes(value, "tax_codes", "taxes") or []
    return out


def threshold(item: Any, field: str) -> dict:
    """One usage threshold."""
    if not isinstance(item, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {item!r}")
    return {
        "threshold_display_name": text(item.get("threshold_display_name")),
        "amount_cents": whole(item.get("amount_cents"), f"{field}.amount_cents"),
        "recurring": bool(flag(item.get("recurring"), f"{field}.recurring")),
    }


def metadata(value: Any, field: str) -> dict:
    """Plan metadata: an object of text values (none: `{}`)."""
    value = as_object(value, field)
    if value is None:
        return {}
    if isinstance(value, list):  # [{key, value}] rows
        value = {str(i.get("key")): i.get("value") for i in value if isinstance(i, Mapping)}
    if not isinstance(value, Mapping):
        raise Unmapped(field, f"'{field}' must be an object, got {value!r}")
    return {str(k): None if v is None else str(v) for k, v in value.items()}


def entitlements(value: Any, field: str) -> dict:
    """`{feature_code: {privilege_code: value}}` from either shape."""
    value = as_object(value, field)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {
            str(code): {str(k): v for k, v in (values or {}).items()}
            for code, values in value.items()
        }
    if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
        raise Unmapped(field, f"'{field}' must be a list of features or an object")
    return {
        str(e.get("code")): {
            str(p.get("code")): p.get("value")
            for p in e.get("privileges") or []
            if isinstance(p, Mapping)
        }
        for e in value
    }


def match(wanted: list[dict], stored: list[dict], by: str) -> list[str | None]:
    """For each wanted item, the `lago_id` of the stored one it updates (None: new).

    By `code` when the wanted item has one, else the n-th item on the same `by` (metric or
    add-on code) takes the n-th stored one that no code claimed.
    """
    free = [s for s in stored if isinstance(s, Mapping)]
    out: list[str | None] = [None] * len(wanted)
    for index, item in enumerate(wanted):
        if item.get("code"):
            found = next((s for s in free if s.get("code") == item["code"]), None)
            if found is not None:
                free.remove(found)
                out[index] = found.get("lago_id")
    queues: dict[str, list[Mapping]] = defaultdict(list)
    for s in free:
        queues[str(s.get(by))].append(s)
    for index, item in enumerate(wanted):
        if out[index] is None and not item.get("code") and queues[item[by]]:
            out[index] = queues[item[by]].pop(0).get("lago_id")
    return out


class PlansSink(CatalogSink):
    """A plan per `code`, with its charges and their filters, fixed charges, commitment."""

    action = "plans"
    endpoint = "/plans"
    root_key = "plan"
    what = "plan"
    rank = 20
    self_parsed = (
        "charges", "fixed_charges", "minimum_commitment", "usage_thresholds", "metadata",
        "entitlements", "trial_period",
    )  # fmt: skip
    read_only = CatalogSink.read_only | {"taxes", "entitlements"}
    kept = (
        "a plan with subscriptions keeps its interval, pay_in_advance, currency, trial "
        "period and bill_charges_monthly, and its charges their model, metric and options "
        "(create a plan with a new code and move the subscriptions); minimum_commitment, "
        "usage_thresholds and the charge options invoiceable, regroup_paid_fees and "
        "min_amount_cents need a premium licence"
    )

    def setup(self) -> None:
        """Metric and add-on ids, looked up once per run."""
        self.ids = Resolver()

    def known(self) -> frozenset[str]:
        """The plan's fields."""
        return frozenset(
            {"code", "name", "invoice_display_name", "description", "interval", "amount_cents",
             "amount_currency", "trial_period", "pay_in_advance", "bill_charges_monthly",
             "bill_fixed_charges_monthly", "tax_codes", "minimum_commitment", "charges",
             "fixed_charges", "usage_thresholds", "metadata", "entitlements"}
        )  # fmt: skip

    def canonical(self, record: Mapping[str, Any]) -> Canonical:
        """The plan's write fields, nested parts included (entitlements kept apart)."""
        out: Canonical = {}
        for key in ("name", "interval", "amount_currency"):
            put(out, key, record)
        put(out, "invoice_display_name", record, text)
        put(out, "description", record, text)
        put(out, "amount_cents", record, whole)
        put(out, "trial_period", record, lambda v, f: numeric(v or 0, f))
        put(out, "pay_in_advance", record, flag)
        for key in ("bill_charges_monthly", "bill_fixed_charges_monthly"):  # null is false
            put(out, key, record, lambda v, f: bool(flag(v, f)))
        taxes = codes(record, "tax_codes", "taxes")
        if taxes is not None:
            out["tax_codes"] = taxes
        put(out, "minimum_commitment", record, commitment)
        put(out, "charges", record, lambda v, f: listed(v, f, charge))
        put(out, "fixed_charges", record, lambda v, f: listed(v, f, fixed_charge))
        put(out, "usage_thresholds", record, lambda v, f: listed(v, f, threshold))
        put(out, "metadata", record, metadata)
        put(out, "entitlements", record, entitlements)
        return out

    def compare(self, wanted: Canonical, stored: Canonical) -> list[str]:
        """The fields that differ; optional parts of charges only when the record gives them.

        Lago fills in a charge's `code` and a fixed charge's `code` and display name.
        """
        stored = dict(stored)
        for key in ("charges", "fixed_charges"):
            if isinstance(wanted.get(key), list) and isinstance(stored.get(key), list):
                given = {k for part in wanted[key] for k in part}
                stored[key] = [
                    {k: v for k, v in part.items() if k in given or k not in OPTIONAL}
                    for part in stored[key]
                ]
        return differences(wanted, stored)

    def read(self, obj: Any) -> Canonical:
        """Lago's plan; its entitlements are compared apart (their own endpoint)."""
        out = super().read(obj)
        out.pop("entitlements", None)
        return out

    def apply(self, item: Item) -> None:
        """Write the plan, then its entitlements (when the record has them)."""
        wanted = item.payload.pop("entitlements", None)
        item.aside = wanted
        super().apply(item)

    def body(self, item: Item, stored: dict | None) -> dict | None:
        """Codes become ids; charges Lago holds keep theirs."""
        body = dict(item.payload)
        for key, resource, root, by, id_key in (
            ("charges", "billable_metrics", "billable_metric", "billable_metric_code",
             "billable_metric_id"),
            ("fixed_charges", "add_ons", "add_on", "add_on_code", "add_on_id"),
        ):  # fmt: skip
            if key not in body:
                continue
            held = (stored or {}).get(key) or []
            ids = match(body[key], held, by)
            out = []
            for index, part in enumerate(body[key]):
                lago_id = self.ids.lago_id(self, resource, root, part[by])
                if lago_id is None:
                    self.reject(
                        item.record,
                        None,
                        f"{root}_not_found",
                        {f"{key}[{index}].{by}": [f"{root}_not_found"]},
                        f"{item.key}: {key}[{index}] names {root.replace('_', ' ')} "
                        f"{part[by]!r}, which Lago does not hold (send the {resource} first)",
                        payload=item.payload,
                    )
                    return None
                sent = {
                    k: v
                    for k, v in part.items()
                    if k != by and (v is not None or k == "regroup_paid_fees")
                }
                sent[id_key] = lago_id
                if ids[index] is not None:
                    sent["id"] = ids[index]
                out.append(sent)
            body[key] = out
        if "minimum_commitment" in body and not body["minimum_commitment"] and stored is None:
            del body["minimum_commitment"]
        return body

    def refusal(
        self, item: Item, stored: dict, response: LagoResponse
    ) -> tuple[dict[str, list[str]], str] | None:
        """A 422 on a plan whose charges change model, explained.

        Lago keeps the model of a charge of a plan with subscriptions, then checks the new
        properties against the old model (a standard charge given graduated ranges: 422
        `{"amount":["invalid_amount"]}`).
        """
        wanted = item.payload.get("charges")
        held = [dict(c) for c in stored.get("charges") or [] if isinstance(c, Mapping)]
        if response.status != 422 or not isinstance(wanted, list):
            return None
        by_id = {c.get("lago_id"): c for c in held}
        changes = {}
        for index, lago_id in enumerate(match(wanted, held, "billable_metric_code")):
            old = by_id.get(lago_id) or {}
            new = wanted[index].get("charge_model")
            if old and new and old.get("charge_model") != new:
                changes[f"charges[{index}].charge_model"] = (old["charge_model"], new)
        if not changes:
            return None
        said = ", ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in changes.items())
        return (
            {field: ["kept_while_plan_has_subscriptions"] for field in changes},
            f"the record changes {said}: a charge of a plan with subscriptions keeps its "
            "model, so Lago checked the new properties against the old model. Keep the "
            "model (change only its properties), or create a plan with a new code with the "
            "new model and move the subscriptions to it",
        )

    def then(self, item: Item, outcome: str) -> None:
        """Set the entitlements the record gives, then settle the record."""
        wanted = item.aside
        if wanted is None:
            self.stats.add(outcome)
            return
        path = f"{self.path(item.payload['code'])}/entitlements"
        client = self.lago.client
        listed = client.get(path)
        if not listed.ok:
            self.reject_response(item, listed, listed.error_details or listed.body)
            return
        held = entitlements((listed.body or {}).get("entitlements"), "entitlements")
        if pairs(held) == pairs(wanted):
            self.stats.add(outcome)
            return
        if wanted:
            response = client.post(path, {"entitlements": wanted})
        else:  # POST needs at least one feature: remove them one by one
            response = listed
            for code in held:
                response = client.request(
                    "DELETE", f"{path}/{urllib.parse.quote(code, safe='')}", None
                )
                if not response.ok:
                    break
        if not response.ok:
            self.reject_response(item, response, response.error_details or response.body)
            return
        now = entitlements((response.body or {}).get("entitlements"), "entitlements")
        if wanted and pairs(now) != pairs(wanted):
            self.reject(
                item.record,
                response.status,
                "change_not_applied",
                {"entitlements": ["not_applied"]},
                f"Lago did not apply the entitlements of {item.key}: it kept "
                f"{shown(now)} (the record says {shown(wanted)})",
                payload=item.payload,
            )
            return
        self.stats.add("delivered")


