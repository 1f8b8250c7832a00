"""Catalog writes: taxes, billable metrics, add-ons, coupons, plans, features, entitlements.

lago-api v1.51.0 semantics (README "Catalog writes" lists every choice):

* ``POST /<resource>`` creates (``code`` unique: 422 ``value_already_exist``);
  ``PUT /<resource>/{code}`` changes the keys given; ``DELETE /<resource>/{code}``.
* An object in use keeps some fields whatever the request says, silently, as the server
  does: a billable metric used by a plan keeps all but ``name``, ``description`` and
  ``filters``; a plan with subscriptions keeps ``code``, ``interval``, ``pay_in_advance``,
  ``amount_currency``, ``trial_period`` and ``bill_*_monthly`` (and its charges their model,
  metric and billing options); a coupon applied once keeps all but ``name``,
  ``description``, ``expiration`` and ``expiration_at``.
* Premium-only parts (the ``premium`` setting, off by default) are dropped silently
  without a licence: a plan's ``minimum_commitment`` and ``usage_thresholds``, a charge's
  ``invoiceable``, ``regroup_paid_fees`` and ``min_amount_cents``; the
  ``graduated_percentage`` model becomes no model (422). Features answer 403 without it.
* Features and plan entitlements are kept here, beside the store's tables (they are reset
  with them), and served by ``GET /features`` and ``GET /plans/{code}/entitlements``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.store import (
    CURRENCIES,
    ApiError,
    JsonObj,
    Store,
    dumps,
    forbidden,
    iso,
    not_allowed,
    not_found,
    page_window,
    parse_datetime,
    unprocessable,
)

if TYPE_CHECKING:
    from tests.lago_sandbox.server import RequestContext

Handler = Callable[["RequestContext"], bytes]
ROUTES: list[tuple[str, str, Handler]] = []

AGGREGATIONS = frozenset(o.AGGREGATION_TYPES)
INTERVALS = frozenset({"weekly", "monthly", "quarterly", "semiannual", "yearly"})
CHARGE_MODELS = frozenset(
    {"standard", "graduated", "graduated_percentage", "package", "percentage", "volume", "dynamic"}
)
FIXED_CHARGE_MODELS = frozenset({"standard", "graduated", "volume"})
VALUE_TYPES = frozenset({"integer", "boolean", "string", "select"})
# The properties each charge model keeps (Charges::FilterChargeModelPropertiesService).
MODEL_PROPERTIES: dict[str, tuple[str, ...]] = {
    "standard": ("amount", "grouped_by", "pricing_group_keys"),
    "graduated": ("graduated_ranges", "pricing_group_keys"),
    "graduated_percentage": ("graduated_percentage_ranges", "pricing_group_keys"),
    "package": ("amount", "free_units", "package_size", "pricing_group_keys"),
    "percentage": (
        "rate",
        "fixed_amount",
        "free_units_per_events",
        "free_units_per_total_aggregation",
        "per_transaction_max_amount",
        "per_transaction_min_amount",
        "pricing_group_keys",
    ),
    "volume": ("volume_ranges", "pricing_group_keys"),
    "dynamic": ("pricing_group_keys",),
}
_ZERO_RANGE = {"from_value": 0, "to_value": None, "flat_amount": "0", "per_unit_amount": "0"}
DEFAULT_PROPERTIES: dict[str, JsonObj] = {
    "standard": {"amount": "0"},
    "graduated": {"graduated_ranges": [_ZERO_RANGE]},
    "graduated_percentage": {
        "graduated_percentage_ranges": [
            {"from_value": 0, "to_value": None, "rate": "0", "flat_amount": "0"}
        ]
    },
    "package": {"amount": "0", "free_units": 0, "package_size": 1},
    "percentage": {"rate": "0"},
    "volume": {"volume_ranges": [_ZERO_RANGE]},
    "dynamic": {},
}
_DECIMAL = re.compile(r"^\s*\d+(\.\d*)?\s*$")


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Register a handler (server.py adds ``ROUTES`` to its table)."""

    def register(fn: Handler) -> Handler:
        fn.__name__ = f"catalog_{fn.__name__}"
        ROUTES.append((method, pattern, fn))
        return fn

    return register


# ---------------------------------------------------------------------------------- helpers


def _answer(root: str, obj: Any) -> bytes:
    return dumps({root: obj})


def _premium(ctx: RequestContext) -> bool:
    return bool(ctx.state.settings.get("premium"))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _mandatory(payload: JsonObj, fields: Iterable[str], errors: JsonObj) -> None:
    for field in fields:
        if _blank(payload.get(field)):
            errors[field] = ["value_is_mandatory"]


def _check_code(store: Store, resource: str, code: Any, errors: JsonObj, mine: Any = None) -> None:
    if _blank(code):
        errors["code"] = ["value_is_mandatory"]
    elif any(obj is not mine for obj in store.find_all(resource, code=code)):
        errors["code"] = ["value_already_exist"]


def _fail(errors: JsonObj) -> None:
    if errors:
        raise unprocessable(errors)


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    text = str(value)
    if not _DECIMAL.match(text):
        return None
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _taxes(store: Store, codes: Any) -> list[JsonObj]:
    """The taxes of ``tax_codes`` (404 ``tax_not_found`` for an unknown one)."""
    out = []
    for code in codes if isinstance(codes, list) else []:
        tax = store.find_one("taxes", code=code)
        if tax is None:
            raise not_found("tax")
        out.append(dict(tax))
    return out


def _walk_taxes(value: Any, change: Callable[[list], bool]) -> bool:
    """Apply ``change`` to every ``taxes`` list inside a value; whether any changed."""
    changed = False
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "taxes" and isinstance(item, list):
                changed = change(item) or changed
            else:
                changed = _walk_taxes(item, change) or changed
    elif isinstance(value, list):
        for item in value:
            changed = _walk_taxes(item, change) or changed
    return changed


def _retax(store: Store, tax: JsonObj, *, remove: bool) -> None:
    """Refresh (or drop) a tax wherever customers, add-ons and plans embed it."""

    def change(items: list) -> bool:
        hits = [i for i, t in enumerate(items) if t.get("lago_id") == tax["lago_id"]]
        for index in reversed(hits):
            if remove:
                del items[index]
            else:
                items[index] = dict(tax)
        return bool(hits)

    for resource in ("customers", "add_ons", "plans"):
        for obj in store.find_all(resource):
            if _walk_taxes(obj, change):
                store.changed(resource, obj)


def _find(store: Store, resource: str, code: str, what: str) -> JsonObj:
    obj = store.find_one(resource, code=code)
    if obj is None:
        raise not_found(what)
    return obj


# ------------------------------------------------------------------------------------ taxes


def _tax_fields(payload: JsonObj, errors: JsonObj) -> JsonObj:
    fields: JsonObj = {}
    for key in ("name", "code", "description"):
        if key in payload:
            fields[key] = payload[key]
    if "rate" in payload:
        rate = _decimal(payload["rate"])
        if rate is None:
            errors["rate"] = ["value_is_invalid"]
        else:
            fields["rate"] = float(rate)
    if "applied_to_organization" in payload:
        fields["applied_to_organization"] = bool(payload["applied_to_organization"])
    return fields


@route("POST", "/taxes")
def post_tax(ctx: RequestContext) -> bytes:
    """``POST /taxes``."""
    payload = ctx.root("tax")
    store = ctx.store
    with store.lock:
        errors: JsonObj = {}
        _mandatory(payload, ("name", "rate"), errors)
        _check_code(store, "taxes", payload.get("code"), errors)
        fields = _tax_fields(payload, errors)
        _fail(errors)
        now = store.clock()
        tax = o.tax_object(
            o.new_lago_id, now, fields.pop("code"), fields.pop("name"), fields.pop("rate"), **fields
        )
        store._insert("taxes", tax)
        return _answer("tax", tax)


@route("PUT", "/taxes/{code}")
def put_tax(ctx: RequestContext) -> bytes:
    """``PUT /taxes/{code}``: the keys given; embedded copies follow."""
    payload = ctx.root("tax")
    store = ctx.store
    with store.lock:
        tax = _find(store, "taxes", ctx.path_params["code"], "tax")
        errors: JsonObj = {}
        if "code" in payload:
            _check_code(store, "taxes", payload["code"], errors, mine=tax)
        for field in ("name", "rate"):
            if field in payload and _blank(payload[field]):
                errors[field] = ["value_is_mandatory"]
        fields = _tax_fields(payload, errors)
        _fail(errors)
        tax.update(fields)
        store.changed("taxes", tax)
        _retax(store, tax, remove=False)
        return _answer("tax", tax)


@route("DELETE", "/taxes/{code}")
def delete_tax(ctx: RequestContext) -> bytes:
    """``DELETE /taxes/{code}``: gone, and removed from what applied it."""
    store = ctx.store
    with store.lock:
        tax = _find(store, "taxes", ctx.path_params["code"], "tax")
        _retax(store, tax, remove=True)
        store._discard("taxes", tax)
        return _answer("tax", tax)


# --------------------------------------------------------------------------- billable metrics


def _metric_in_use(store: Store, metric: JsonObj) -> bool:
    return any(
        charge.get("lago_billable_metric_id") == metric["lago_id"]
        for plan in store.find_all("plans")
        for charge in plan.get("charges") or []
    )


def _metric_filters(value: Any, errors: JsonObj) -> list[JsonObj]:
    filters = []
    for item in value if isinstance(value, list) else []:
        values = item.get("values") if isinstance(item, dict) else None
        if _blank(item.get("key") if isinstance(item, dict) else None) or not isinstance(
            values, list
        ):
            errors["filters"] = ["value_is_invalid"]
            continue
        filters.append({"key": str(item["key"]), "values": [str(v) for v in values]})
    return filters


def _metric_fields(payload: JsonObj, errors: JsonObj, *, full: bool) -> JsonObj:
    """The fields of a metric request (``full``: also those a metric in use keeps)."""
    fields: JsonObj = {k: payload[k] for k in ("name", "description") if k in payload}
    if "filters" in payload:
        fields["filters"] = _metric_filters(payload["filters"], errors)
    if not full:
        return fields
    for key in ("code", "field_name", "rounding_precision"):
        if key in payload:
            fields[key] = payload[key]
    if "aggregation_type" in payload:
        if payload["aggregation_type"] not in AGGREGATIONS:
            errors["aggregation_type"] = ["value_is_invalid"]
        fields["aggregation_type"] = payload["aggregation_type"]
    if "recurring" in payload:
        fields["recurring"] = bool(payload["recurring"])
    if "expression" in payload:
        fields["expression"] = payload["expression"] or ""
    if "rounding_function" in payload:
        if payload["rounding_function"] not in (None, "ceil", "floor", "round"):
            errors["rounding_function"] = ["value_is_invalid"]
        fields["rounding_function"] = payload["rounding_function"]
    if "weighted_interval" in payload:
        if payload["weighted_interval"] not in (None, "seconds"):
            errors["weighted_interval"] = ["value_is_invalid"]
        fields["weighted_interval"] = payload["weighted_interval"]
    return fields


def _check_metric(metric: JsonObj, errors: JsonObj) -> None:
    needs_field = metric.get("aggregation_type") != "count_agg" and not metric.get("expression")
    if needs_field and _blank(metric.get("field_name")):
        errors["field_name"] = ["value_is_mandatory"]
    if metric.get("aggregation_type") == "weighted_sum_agg" and not metric.get("weighted_interval"):
        metric["weighted_interval"] = "seconds"


@route("POST", "/billable_metrics")
def post_billable_metric(ctx: RequestContext) -> bytes:
    """``POST /billable_metrics``."""
    payload = ctx.root("billable_metric")
    store = ctx.store
    with store.lock:
        errors: JsonObj = {}
        _mandatory(payload, ("name", "aggregation_type"), errors)
        _check_code(store, "billable_metrics", payload.get("code"), errors)
        fields = _metric_fields(payload, errors, full=True)
        fields.setdefault("recurring", False)
        fields.setdefault("field_name", None)
        fields.setdefault("filters", [])
        fields.setdefault("weighted_interval", None)
        metric = o.complete("billable_metrics", fields, now=store.clock())
        metric["name"] = fields.get("name")
        metric["description"] = fields.get("description")
        _check_metric(metric, errors)
        _fail(errors)
        store._insert("billable_metrics", metric)
        return _answer("billable_metric", metric)


@route("PUT", "/billable_metrics/{code}")
def put_billable_metric(ctx: RequestContext) -> bytes:
    """``PUT /billable_metrics/{code}`` (a metric used by a plan keeps all but three)."""
    payload = ctx.root("billable_metric")
    store = ctx.store
    with store.lock:
        metric = _find(store, "billable_metrics", ctx.path_params["code"], "billable_metric")
        in_use = _metric_in_use(store, metric)
        errors: JsonObj = {}
        if "code" in payload and not in_use:
            _check_code(store, "billable_metrics", payload["code"], errors, mine=metric)
        fields = _metric_fields(payload, errors, full=not in_use)
        candidate = {**metric, **fields}
        _check_metric(candidate, errors)
        _fail(errors)
        metric.update(candidate)
        store.changed("billable_metrics", metric)
        _recode_charges(store, metric)
        return _answer("billable_metric", metric)


def _recode_charges(store: Store, metric: JsonObj) -> None:
    for plan in store.find_all("plans"):
        hits = [
            c
            for c in plan.get("charges") or []
            if c.get("lago_billable_metric_id") == metric["lago_id"]
            and c.get("billable_metric_code") != metric["code"]
        ]
        for charge in hits:
            charge["billable_metric_code"] = metric["code"]
        if hits:
            store.changed("plans", plan)


@route("DELETE", "/billable_metrics/{code}")
def delete_billable_metric(ctx: RequestContext) -> bytes:
    """``DELETE /billable_metrics/{code}``: gone, with the plan charges on it."""
    store = ctx.store
    with store.lock:
        metric = _find(store, "billable_metrics", ctx.path_params["code"], "billable_metric")
        for plan in store.find_all("plans"):
            kept = [
                c
                for c in plan.get("charges") or []
                if c.get("lago_billable_metric_id") != metric["lago_id"]
            ]
            if len(kept) != len(plan.get("charges") or []):
                plan["charges"] = kept
                store.changed("plans", plan)
        store._discard("billable_metrics", metric)
        return _answer("billable_metric", metric)


# ------------------------------------------------------------------------------------ add-ons


def _add_on_fields(store: Store, payload: JsonObj, errors: JsonObj) -> JsonObj:
    fields: JsonObj = {
        k: payload[k]
        for k in ("name", "code", "invoice_display_name", "description")
        if k in payload
    }
    if "amount_cents" in payload:
        amount = payload["amount_cents"]
        if not _whole(amount):
            errors["amount_cents"] = ["value_is_invalid"]
        elif amount < 0:
            errors["amount_cents"] = ["value_is_out_of_range"]
        fields["amount_cents"] = amount
    if "amount_currency" in payload:
        if payload["amount_currency"] not in CURRENCIES:
            errors["amount_currency"] = ["value_is_invalid"]
        fields["amount_currency"] = payload["amount_currency"]
    if isinstance(payload.get("tax_codes"), list):
        fields["taxes"] = _taxes(store, payload["tax_codes"])
    return fields


@route("POST", "/add_ons")
def post_add_on(ctx: RequestContext) -> bytes:
    """``POST /add_ons``."""
    payload = ctx.root("add_on")
    store = ctx.store
    with store.lock:
        errors: JsonObj = {}
        _mandatory(payload, ("name", "amount_cents", "amount_currency"), errors)
        _check_code(store, "add_ons", payload.get("code"), errors)
        fields = _add_on_fields(store, payload, errors)
        _fail(errors)
        add_on = o.complete("add_ons", fields, now=store.clock())
        store._insert("add_ons", add_on)
        return _answer("add_on", add_on)


@route("PUT", "/add_ons/{code}")
def put_add_on(ctx: RequestContext) -> bytes:
    """``PUT /add_ons/{code}``."""
    payload = ctx.root("add_on")
    store = ctx.store
    with store.lock:
        add_on = _find(store, "add_ons", ctx.path_params["code"], "add_on")
        errors: JsonObj = {}
        if "code" in payload:
            _check_code(store, "add_ons", payload["code"], errors, mine=add_on)
        fields = _add_on_fields(store, payload, errors)
        _fail(errors)
        add_on.update(fields)
        store.changed("add_ons", add_on)
        return _answer("add_on", add_on)


# ------------------------------------------------------------------------------------ coupons


def _coupon_in_use(store: Store, coupon: JsonObj) -> bool:
    return store.find_one("applied_coupons", coupon_code=coupon["code"]) is not None


def _expiration(payload: JsonObj, errors: JsonObj, store: Store) -> JsonObj:
    fields: JsonObj = {}
    if "expiration" in payload:
        if payload["expiration"] not in ("no_expiration", "time_limit"):
            errors["expiration"] = ["value_is_invalid"]
        fields["expiration"] = payload["expiration"]
    if "expiration_at" in payload:
        value = payload["expiration_at"]
        moment = parse_datetime(value) if value is not None else None
        if value is not None and (moment is None or moment.date() < store.clock().date()):
            errors["expiration_at"] = ["invalid_date"]  # Coupons::ValidateService
        fields["expiration_at"] = iso(moment) if moment else None
    return fields


def _coupon_terms(store: Store, payload: JsonObj, errors: JsonObj) -> JsonObj:
    """What a coupon applied once keeps: type, amounts, frequency, reuse, limits."""
    fields: JsonObj = {}
    for key in ("code", "amount_cents", "amount_currency", "frequency_duration"):
        if key in payload:
            fields[key] = payload[key]
    if "coupon_type" in payload:
        if payload["coupon_type"] not in ("fixed_amount", "percentage"):
            errors["coupon_type"] = ["value_is_invalid"]
        fields["coupon_type"] = payload["coupon_type"]
    if "frequency" in payload:
        if payload["frequency"] not in ("once", "recurring", "forever"):
            errors["frequency"] = ["value_is_invalid"]
        fields["frequency"] = payload["frequency"]
    if "percentage_rate" in payload:
        rate = payload["percentage_rate"]
        fields["percentage_rate"] = None if rate is None else o.decimal_str(_decimal(rate) or 0)
    if "reusable" in payload:
        fields["reusable"] = bool(payload["reusable"])
    limits = payload.get("applies_to")
    if isinstance(limits, dict):
        plans = [c for c in limits.get("plan_codes") or [] if c is not None]
        metrics = [c for c in limits.get("billable_metric_codes") or [] if c is not None]
        if plans and metrics:
            raise not_allowed("only_one_limitation_type_per_coupon_allowed")
        if any(store.find_one("plans", code=c) is None for c in plans):
            raise not_found("plans")
        if any(store.find_one("billable_metrics", code=c) is None for c in metrics):
            raise not_found("billable_metrics")
        if limits.get("plan_codes") is not None or not metrics:
            fields["plan_codes"] = list(dict.fromkeys(plans))
            fields["limited_plans"] = bool(plans)
        if limits.get("billable_metric_codes") is not None or not plans:
            fields["billable_metric_codes"] = list(dict.fromkeys(metrics))
            fields["limited_billable_metrics"] = bool(metrics)
    return fields


def _check_coupon(coupon: JsonObj, errors: JsonObj) -> None:
    if coupon.get("coupon_type") == "fixed_amount":
        if not _whole(coupon.get("amount_cents")):
            errors["amount_cents"] = ["value_is_mandatory"]
        if coupon.get("amount_currency") not in CURRENCIES:
            errors["amount_currency"] = ["value_is_invalid"]
        coupon["percentage_rate"] = None
    elif coupon.get("coupon_type") == "percentage":
        if coupon.get("percentage_rate") is None:
            errors["percentage_rate"] = ["value_is_mandatory"]
        coupon["amount_cents"] = coupon["amount_currency"] = None
    if coupon.get("frequency") == "recurring" and not _whole(coupon.get("frequency_duration")):
        errors["frequency_duration"] = ["is not a number"]
    if coupon.get("expiration") == "time_limit" and not coupon.get("expiration_at"):
        errors["expiration_at"] = ["value_is_mandatory"]


@route("POST", "/coupons")
def post_coupon(ctx: RequestContext) -> bytes:
    """``POST /coupons``."""
    payload = ctx.root("coupon")
    store = ctx.store
    with store.lock:
        errors: JsonObj = {}
        _mandatory(payload, ("name", "coupon_type", "frequency", "expiration"), errors)
        _check_code(store, "coupons", payload.get("code"), errors)
        fields = {k: payload[k] for k in ("name", "description") if k in payload}
        fields.update(_expiration(payload, errors, store))
        fields.update(_coupon_terms(store, payload, errors))
        coupon = o.complete("coupons", fields, now=store.clock())
        for key in ("amount_cents", "amount_currency", "percentage_rate"):
            coupon[key] = fields.get(key)
        _check_coupon(coupon, errors)
        _fail(errors)
        store._insert("coupons", coupon)
        return _answer("coupon", coupon)


@route("PUT", "/coupons/{code}")
def put_coupon(ctx: RequestContext) -> bytes:
    """``PUT /coupons/{code}`` (a coupon applied once keeps its terms)."""
    payload = ctx.root("coupon")
    store = ctx.store
    with store.lock:
        coupon = _find(store, "coupons", ctx.path_params["code"], "coupon")
        errors: JsonObj = {}
        fields = {k: payload[k] for k in ("name", "description") if k in payload}
        fields.update(_expiration(payload, errors, store))
        if not _coupon_in_use(store, coupon):
            if "code" in payload:
                _check_code(store, "coupons", payload["code"], errors, mine=coupon)
            fields.update(_coupon_terms(store, payload, errors))
        candidate = {**coupon, **fields}
        _check_coupon(candidate, errors)
        _fail(errors)
        coupon.update(candidate)
        store.changed("coupons", coupon)
        return _answer("coupon", coupon)


# -------------------------------------------------------------------------------------- plans


def _plan_in_use(store: Store, plan: JsonObj) -> bool:
    return store.find_one("subscriptions", plan_code=plan["code"]) is not None


def _ranges(ranges: Any, rate_key: str | None) -> bool:
    """Whether tiers start at 0, follow each other and end open, amounts being decimals."""
    if not isinstance(ranges, list) or not ranges:
        return False
    expected = 0
    for index, tier in enumerate(ranges):
        if not isinstance(tier, dict) or tier.get("from_value") != expected:
            return False
        last = index == len(ranges) - 1
        upper = tier.get("to_value")
        if (upper is None) != last or (
            upper is not None and (not _whole(upper) or upper < expected)
        ):
            return False
        amounts = ("flat_amount", rate_key or "per_unit_amount")
        if any(_decimal(tier.get(key)) is None for key in amounts):
            return False
        expected = (upper or 0) + 1
    return True


def _properties(model: str, given: Any) -> JsonObj:
    """A charge's properties: the model's keys only, checked (422 naming the problem)."""
    source = given if isinstance(given, dict) and given else DEFAULT_PROPERTIES[model]
    kept = {k: v for k, v in source.items() if k in MODEL_PROPERTIES[model]}
    problems: JsonObj = {}
    if model in ("standard", "package") and _decimal(kept.get("amount")) is None:
        problems["amount"] = ["invalid_amount"]
    if model == "package":
        if not _whole(kept.get("package_size")) or kept["package_size"] < 1:
            problems["package_size"] = ["invalid_package_size"]
        if not _whole(kept.get("free_units", 0)) or kept.get("free_units", 0) < 0:
            problems["free_units"] = ["invalid_free_units"]
    if model == "percentage" and _decimal(kept.get("rate")) is None:
        problems["rate"] = ["invalid_rate"]
    for name, rate in (("graduated", None), ("volume", None), ("graduated_percentage", "rate")):
        key = f"{name}_ranges"
        if model == name and not _ranges(kept.get(key), rate):
            problems[key] = [f"invalid_{key}"]
    _fail(problems)
    return kept


def _charge_filters(value: Any) -> list[JsonObj]:
    filters = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("values"), dict):
            raise unprocessable({"filters": ["value_is_invalid"]})
        filters.append(
            {
                "invoice_display_name": item.get("invoice_display_name"),
                "properties": dict(item.get("properties") or {}),
                "values": {str(k): [str(v) for v in vs] for k, vs in item["values"].items()},
            }
        )
    return filters


def _model(given: JsonObj, premium: bool, allowed: frozenset[str]) -> str:
    model = given.get("charge_model")
    if model == "graduated_percentage" and not premium:
        model = None  # the server drops it without a licence, then the model is missing
    if _blank(model):
        raise unprocessable({"charge_model": ["value_is_mandatory"]})
    if model not in allowed:
        raise unprocessable({"charge_model": ["value_is_invalid"]})
    return str(model)


def _new_charge(
    store: Store, given: JsonObj, metrics: dict[str, JsonObj], premium: bool
) -> JsonObj:
    model = _model(given, premium, CHARGE_MODELS)
    charge = o.charge_object(
        o.new_lago_id,
        store.clock(),
        metrics[given["billable_metric_id"]],
        model,
        _properties(model, given.get("properties")),
        invoice_display_name=given.get("invoice_display_name"),
        pay_in_advance=bool(given.get("pay_in_advance") or False),
        prorated=bool(given.get("prorated") or False),
        filters=_charge_filters(given.get("filters")),
        taxes=_taxes(store, given.get("tax_codes")),
    )
    if not _blank(given.get("code")):
        charge["code"] = given["code"]
    if premium:
        _premium_charge(charge, given)
    return charge


def _premium_charge(charge: JsonObj, given: JsonObj) -> None:
    if given.get("invoiceable") is not None:
        charge["invoiceable"] = bool(given["invoiceable"])
    if "regroup_paid_fees" in given:
        charge["regroup_paid_fees"] = given["regroup_paid_fees"]
    charge["min_amount_cents"] = given.get("min_amount_cents") or 0


def _update_charge(
    store: Store,
    *,
    charge: JsonObj,
    given: JsonObj,
    metrics: dict[str, JsonObj],
    premium: bool,
    in_use: bool,
) -> None:
    model = _model(given, premium, CHARGE_MODELS) if "charge_model" in given else None
    if not in_use and model:
        charge["charge_model"] = model
    charge["invoice_display_name"] = given.get("invoice_display_name")
    charge["properties"] = _properties(charge["charge_model"], given.get("properties"))
    if given.get("filters") is not None:
        charge["filters"] = _charge_filters(given["filters"])
    if isinstance(given.get("tax_codes"), list):
        charge["taxes"] = _taxes(store, given["tax_codes"])
    if in_use:
        return  # "charges cannot be edited if plan is attached to a subscription"
    if premium:
        _premium_charge(charge, given)
    if not _blank(given.get("code")):
        charge["code"] = given["code"]
    for key in ("pay_in_advance", "prorated"):
        if key in given:
            charge[key] = bool(given[key])
    metric = metrics.get(given.get("billable_metric_id") or "")
    if metric is not None:
        charge["lago_billable_metric_id"] = metric["lago_id"]
        charge["billable_metric_code"] = metric["code"]


def _add_on_of(store: Store, given: JsonObj) -> JsonObj:
    add_on = None
    if not _blank(given.get("add_on_id")):
        add_on = store.find_one("add_ons", lago_id=given["add_on_id"])
    elif not _blank(given.get("add_on_code")):
        add_on = store.find_one("add_ons", code=given["add_on_code"])
    if add_on is None:
        raise not_found("add_ons")
    return add_on


def _fixed_units(value: Any) -> float:
    number = _decimal(value if value is not None else 0)
    if number is None:
        raise unprocessable({"units": ["value_is_invalid"]})
    return float(number)


def _new_fixed_charge(store: Store, plan_code: str, given: JsonObj, taken: set[str]) -> JsonObj:
    add_on = _add_on_of(store, given)
    model = _model(given, True, FIXED_CHARGE_MODELS)
    code = str(given.get("code") or add_on["code"])
    if code in taken:
        raise unprocessable({"code": ["value_already_exist"]})
    taken.add(code)
    return {
        "lago_id": o.new_lago_id(),
        "lago_add_on_id": add_on["lago_id"],
        "invoice_display_name": given.get("invoice_display_name") or add_on["name"],
        "add_on_code": add_on["code"],
        "created_at": iso(store.clock()),
        "code": code,
        "charge_model": model,
        "pay_in_advance": bool(given.get("pay_in_advance") or False),
        "prorated": bool(given.get("prorated") or False),
        "properties": _properties(model, given.get("properties")),
        "units": _fixed_units(given.get("units")),
        "lago_parent_id": None,
        "taxes": _taxes(store, given.get("tax_codes")),
    }


def _update_fixed_charge(store: Store, fixed: JsonObj, given: JsonObj, in_use: bool) -> None:
    if not in_use and "charge_model" in given:
        fixed["charge_model"] = _model(given, True, FIXED_CHARGE_MODELS)
    if given.get("invoice_display_name") is not None:
        fixed["invoice_display_name"] = given["invoice_display_name"]
    fixed["properties"] = _properties(fixed["charge_model"], given.get("properties"))
    if "units" in given:
        fixed["units"] = _fixed_units(given["units"])
    if isinstance(given.get("tax_codes"), list):
        fixed["taxes"] = _taxes(store, given["tax_codes"])
    if not in_use:
        for key in ("pay_in_advance", "prorated"):
            if key in given:
                fixed[key] = bool(given[key])


def _metrics_of(store: Store, charges: Any) -> dict[str, JsonObj]:
    """The metrics charges name (404 ``billable_metrics_not_found`` for an unknown one)."""
    ids = {str(c["billable_metric_id"]) for c in charges if c.get("billable_metric_id")}
    found = {i: store.find_one("billable_metrics", lago_id=i) for i in ids}
    if any(m is None for m in found.values()):
        raise not_found("billable_metrics")
    return {i: m for i, m in found.items() if m is not None}


def _list_of_dicts(value: Any, field: str) -> list[JsonObj]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise unprocessable({field: ["value_is_invalid"]})
    return value


def _commitment(plan: JsonObj, given: Any, store: Store) -> None:
    if not isinstance(given, dict):
        return
    if not given:
        plan["minimum_commitment"] = None
        return
    now = iso(store.clock())
    current = plan.get("minimum_commitment") or {
        "lago_id": o.new_lago_id(),
        "plan_code": plan["code"],
        "interval": plan["interval"],
        "created_at": now,
        "taxes": [],
        "invoice_display_name": "",
    }
    current = dict(current)
    if "amount_cents" in given:
        if not _whole(given["amount_cents"]):
            raise unprocessable({"amount_cents": ["value_is_invalid"]})
        current["amount_cents"] = given["amount_cents"]
    if "invoice_display_name" in given:
        current["invoice_display_name"] = given["invoice_display_name"] or ""
    if isinstance(given.get("tax_codes"), list):
        current["taxes"] = _taxes(store, given["tax_codes"])
    current.setdefault("amount_cents", 0)
    current["updated_at"] = now
    plan["minimum_commitment"] = current


def _thresholds(value: Any, store: Store) -> list[JsonObj]:
    now = iso(store.clock())
    out = []
    for item in _list_of_dicts(value or [], "usage_thresholds"):
        if not _whole(item.get("amount_cents")):
            raise unprocessable({"amount_cents": ["value_is_mandatory"]})
        out.append(
            {
                "lago_id": o.new_lago_id(),
                "threshold_display_name": item.get("threshold_display_name"),
                "amount_cents": item["amount_cents"],
                "recurring": bool(item.get("recurring") or False),
                "created_at": now,
                "updated_at": now,
            }
        )
    return out


def _monthly(payload: JsonObj, key: str) -> bool | None:
    if payload.get("interval") not in ("yearly", "semiannual"):
        return None
    return bool(payload.get(key) or False)


def _currency_and_trial(payload: JsonObj, errors: JsonObj) -> JsonObj:
    """A plan's `amount_currency` and `trial_period`, as given (plan writes and overrides)."""
    fields: JsonObj = {}
    if "amount_currency" in payload:
        if payload["amount_currency"] not in CURRENCIES:
            errors["amount_currency"] = ["value_is_invalid"]
        fields["amount_currency"] = payload["amount_currency"]
    if "trial_period" in payload:
        trial = _decimal(payload["trial_period"] or 0)
        if trial is None:
            errors["trial_period"] = ["value_is_invalid"]
        fields["trial_period"] = float(trial or 0)
    return fields


def _plan_terms(payload: JsonObj, errors: JsonObj) -> JsonObj:
    """What a plan with subscriptions keeps: code, interval, billing, currency, trial."""
    fields: JsonObj = {}
    if "code" in payload:
        fields["code"] = payload["code"]
    if "interval" in payload:
        if payload["interval"] not in INTERVALS:
            errors["interval"] = ["value_is_invalid"]
        fields["interval"] = payload["interval"]
    if "pay_in_advance" in payload:
        fields["pay_in_advance"] = bool(payload["pay_in_advance"])
    fields.update(_currency_and_trial(payload, errors))
    fields["bill_charges_monthly"] = _monthly(payload, "bill_charges_monthly")
    fields["bill_fixed_charges_monthly"] = _monthly(payload, "bill_fixed_charges_monthly")
    return fields


def _plan_basics(store: Store, payload: JsonObj, errors: JsonObj) -> JsonObj:
    fields: JsonObj = {
        k: payload[k] for k in ("name", "invoice_display_name", "description") if k in payload
    }
    for key in ("invoice_display_name", "description"):  # the spec's strings are not null
        if key in fields and fields[key] is None:
            fields[key] = ""
    if "amount_cents" in payload:
        if not _whole(payload["amount_cents"]):
            errors["amount_cents"] = ["value_is_invalid"]
        fields["amount_cents"] = payload["amount_cents"]
    if isinstance(payload.get("tax_codes"), list):
        fields["taxes"] = _taxes(store, payload["tax_codes"])
    if "metadata" in payload:
        metadata = payload["metadata"]
        if metadata is not None and not isinstance(metadata, dict):
            errors["metadata"] = ["value_is_invalid"]
        fields["metadata"] = (
            {str(k): None if v is None else str(v) for k, v in metadata.items()}
            if isinstance(metadata, dict) and metadata
            else None
        )
    return fields


@route("POST", "/plans")
def post_plan(ctx: RequestContext) -> bytes:
    """``POST /plans`` with charges, fixed charges, commitment and thresholds."""
    payload = ctx.root("plan")
    store, premium = ctx.store, _premium(ctx)
    with store.lock:
        errors: JsonObj = {}
        _mandatory(payload, ("name", "interval", "amount_cents", "amount_currency"), errors)
        _check_code(store, "plans", payload.get("code"), errors)
        fields = _plan_basics(store, payload, errors)
        fields.update(_plan_terms(payload, errors))
        _fail(errors)
        charges = _list_of_dicts(payload.get("charges") or [], "charges")
        fixed = _list_of_dicts(payload.get("fixed_charges") or [], "fixed_charges")
        metrics = _metrics_of(store, charges)
        for add_on_ref in fixed:
            _add_on_of(store, add_on_ref)
        fields.setdefault("pay_in_advance", False)
        fields.setdefault("invoice_display_name", fields.get("name"))
        plan = o.complete("plans", fields, now=store.clock())
        plan["description"] = fields.get("description") or ""
        plan["charges"] = [_new_charge(store, c, metrics, premium) for c in charges]
        taken: set[str] = set()
        plan["fixed_charges"] = [_new_fixed_charge(store, plan["code"], f, taken) for f in fixed]
        if premium:
            _commitment(plan, payload.get("minimum_commitment"), store)
            if payload.get("usage_thresholds"):
                plan["usage_thresholds"] = _thresholds(payload["usage_thresholds"], store)
        store._insert("plans", plan)
        return _answer("plan", plan)


@route("PUT", "/plans/{code}")
def put_plan(ctx: RequestContext) -> bytes:
    """``PUT /plans/{code}``: charges matched by ``id``; absent ones are removed."""
    payload = ctx.root("plan")
    store, premium = ctx.store, _premium(ctx)
    with store.lock:
        plan = _find(store, "plans", ctx.path_params["code"], "plan")
        in_use = _plan_in_use(store, plan)
        errors: JsonObj = {}
        fields = _plan_basics(store, payload, errors)
        if not in_use:
            if "code" in payload:
                _check_code(store, "plans", payload["code"], errors, mine=plan)
            fields.update(_plan_terms(payload, errors))
        _fail(errors)
        charges = payload.get("charges")
        fixed = payload.get("fixed_charges")
        metrics = _metrics_of(store, _list_of_dicts(charges or [], "charges"))
        for add_on_ref in _list_of_dicts(fixed or [], "fixed_charges"):
            if not _blank(add_on_ref.get("add_on_id")) or not add_on_ref.get("id"):
                _add_on_of(store, add_on_ref)
        work = {**plan, **fields}
        work["charges"] = [dict(c) for c in plan.get("charges") or []]
        work["fixed_charges"] = [dict(f) for f in plan.get("fixed_charges") or []]
        if charges is not None:  # `if params[:charges]`: in Ruby an empty list removes all
            work["charges"] = _replace(
                work["charges"],
                charges,
                lambda c: _new_charge(store, c, metrics, premium),
                lambda old, c: _update_charge(
                    store, charge=old, given=c, metrics=metrics, premium=premium, in_use=in_use
                ),
            )
        if fixed is not None:
            taken = {f["code"] for f in work["fixed_charges"]}
            work["fixed_charges"] = _replace(
                work["fixed_charges"],
                fixed,
                lambda f: _new_fixed_charge(store, work["code"], f, taken),
                lambda old, f: _update_fixed_charge(store, old, f, in_use),
            )
        if premium:
            if "usage_thresholds" in payload:
                work["usage_thresholds"] = _thresholds(payload["usage_thresholds"], store)
            if payload.get("minimum_commitment") is not None:
                _commitment(work, payload["minimum_commitment"], store)
        if work.get("minimum_commitment"):
            work["minimum_commitment"] = {
                **work["minimum_commitment"],
                "plan_code": work["code"],
                "interval": work["interval"],
            }
        plan.clear()
        plan.update(work)
        store.changed("plans", plan)
        return _answer("plan", plan)


def _replace(
    current: list[JsonObj],
    given: list[JsonObj],
    create: Callable[[JsonObj], JsonObj],
    update: Callable[[JsonObj, JsonObj], None],
) -> list[JsonObj]:
    """The charges after an update: matched by ``id`` (updated), new ones, the rest gone."""
    by_id = {c["lago_id"]: c for c in current}
    out = []
    for item in given:
        old = by_id.pop(item.get("id"), None) if item.get("id") else None
        if old is not None:
            update(old, item)
            out.append(old)
        else:
            out.append(create(item))
    return out


# ----------------------------------------------------------------------- features, entitlements


def _box(store: Store) -> JsonObj:
    """Features (by code) and entitlements (by plan lago_id), reset with the store's tables.

    A new box starts from the seeded ``features`` and ``entitlements`` tables
    (``organisation.fill``); from then on it holds them, and the dump shows it.
    """
    box = getattr(store, "_catalog_box", None)
    if box is None or box[0] is not store.tables:
        features = {f["code"]: dict(f) for f in store.find_all("features")}
        plans = {p["code"]: p["lago_id"] for p in store.find_all("plans")}
        entitlements: dict[str, dict[str, dict[str, Any]]] = {}
        for row in store.find_all("entitlements"):
            plan_id = plans.get(row.get("plan_code"))
            if plan_id is not None and row.get("code") in features:
                values = {p["code"]: p.get("value") for p in row.get("privileges") or ()}
                entitlements.setdefault(plan_id, {})[row["code"]] = values
        box = (
            store.tables,
            {"features": features, "entitlements": entitlements, "overrides": {}, "units": {}},
        )
        store._catalog_box = box  # type: ignore[attr-defined]
    return box[1]


def _features(store: Store) -> dict[str, JsonObj]:
    return _box(store)["features"]


def _licensed(ctx: RequestContext) -> None:
    if not _premium(ctx):
        raise forbidden("feature_unavailable")


def _privilege(item: Any, errors: JsonObj) -> JsonObj | None:
    if not isinstance(item, dict) or _blank(item.get("code")):
        errors["privilege.code"] = ["value_is_mandatory"]
        return None
    value_type = item.get("value_type", "string")
    if value_type not in VALUE_TYPES:
        errors["privilege.value_type"] = ["value_is_invalid"]
    given = item.get("config")
    config: JsonObj = given if isinstance(given, dict) else {}
    if value_type == "select" and not config.get("select_options"):
        errors["privilege.config"] = ["invalid_format"]
    return {
        "code": str(item["code"]),
        "name": item.get("name"),
        "value_type": value_type,
        "config": {"select_options": list(config["select_options"])}
        if value_type == "select" and config.get("select_options")
        else {},
    }


def _privileges_given(value: Any, errors: JsonObj) -> list[JsonObj]:
    items = value if isinstance(value, list) else []
    codes = [i.get("code") for i in items if isinstance(i, dict)]
    if len(codes) != len(set(codes)):
        errors["privilege.code"] = ["value_is_duplicated"]
    return [p for p in (_privilege(i, errors) for i in items) if p is not None]


@route("GET", "/features")
def list_features(ctx: RequestContext) -> bytes:
    """``GET /features`` (newest first, paginated; ``search_term`` in name, code or
    description, case-insensitive; no licence needed to read)."""
    term = str((ctx.query.get("search_term") or [""])[0]).lower()

    def keep(feature: JsonObj) -> bool:
        texts = (feature.get("name"), feature.get("code"), feature.get("description"))
        return not term or any(term in str(text).lower() for text in texts if text)

    with ctx.store.lock:
        rows = sorted(
            (f for f in _features(ctx.store).values() if keep(f)),
            key=lambda f: f["created_at"],
            reverse=True,
        )
        offset, limit, meta = page_window(ctx.query, len(rows))
        page = rows[offset : offset + limit]
        return dumps({"features": page, "meta": meta})


@route("GET", "/features/{code}")
def get_feature(ctx: RequestContext) -> bytes:
    """``GET /features/{code}``."""
    with ctx.store.lock:
        feature = _features(ctx.store).get(ctx.path_params["code"])
        if feature is None:
            raise not_found("feature")
        return _answer("feature", feature)


@route("POST", "/features")
def post_feature(ctx: RequestContext) -> bytes:
    """``POST /features`` (premium)."""
    _licensed(ctx)
    payload = ctx.root("feature")
    store = ctx.store
    with store.lock:
        features = _features(store)
        errors: JsonObj = {}
        code = payload.get("code")
        if _blank(code):
            errors["code"] = ["value_is_mandatory"]
        elif code in features:
            errors["code"] = ["value_already_exist"]
        privileges = _privileges_given(payload.get("privileges"), errors)
        _fail(errors)
        feature = {
            "code": str(code),
            "name": payload.get("name"),
            "description": payload.get("description"),
            "privileges": privileges,
            "created_at": iso(store.clock()),
        }
        features[feature["code"]] = feature
        return _answer("feature", feature)


@route("PUT", "/features/{code}")
def put_feature(ctx: RequestContext) -> bytes:
    """``PUT /features/{code}``: privileges not given are deleted (with their values)."""
    _licensed(ctx)
    payload = ctx.root("feature")
    store = ctx.store
    with store.lock:
        feature = _features(store).get(ctx.path_params["code"])
        if feature is None:
            raise not_found("feature")
        errors: JsonObj = {}
        given = _privileges_given(payload.get("privileges"), errors)
        _fail(errors)
        for key in ("name", "description"):
            if key in payload:
                feature[key] = payload[key]
        current = {p["code"]: p for p in feature["privileges"]}
        kept = []
        for item, raw in zip(given, payload.get("privileges") or [], strict=False):
            old = current.get(item["code"])
            if old is None:
                kept.append(item)
                continue
            if "name" in raw:
                old["name"] = item["name"]
            if old["value_type"] == "select" and item["config"].get("select_options"):
                old["config"] = item["config"]  # the value type itself never changes
            kept.append(old)
        gone = set(current) - {p["code"] for p in kept}
        feature["privileges"] = kept
        for values in _box(store)["entitlements"].values():
            for code in gone:
                values.get(feature["code"], {}).pop(code, None)
        return _answer("feature", feature)


@route("DELETE", "/features/{code}")
def delete_feature(ctx: RequestContext) -> bytes:
    """``DELETE /features/{code}``: gone, and from every plan's entitlements."""
    store = ctx.store
    with store.lock:
        feature = _features(store).pop(ctx.path_params["code"], None)
        if feature is None:
            raise not_found("feature")
        for values in _box(store)["entitlements"].values():
            values.pop(feature["code"], None)
        return _answer("feature", feature)


def _typed(value: Any, value_type: str) -> Any:
    if value is None:
        return None
    if value_type == "integer":
        return int(value)
    if value_type == "boolean":
        return value in (True, "true")
    return str(value)


def _check_value(value: Any, privilege: JsonObj) -> None:
    kind = privilege["value_type"]
    ok = (
        (kind == "select" and value in privilege["config"].get("select_options", []))
        or (kind == "boolean" and value in (True, False, "true", "false"))
        or (
            kind == "integer"
            and (_whole(value) or (isinstance(value, str) and str(_int(value)) == value))
        )
        or (kind == "string" and isinstance(value, str))
    )
    if not ok:
        code = "value_not_in_select_options" if kind == "select" else "value_is_invalid"
        raise unprocessable({f"{privilege['code']}_privilege_value": [code]})


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _entitlement_objects(store: Store, values: dict[str, dict[str, Any]]) -> list[JsonObj]:
    features = _features(store)
    out = []
    for code, privileges in values.items():
        feature = features.get(code)
        if feature is None:
            continue
        out.append(
            {
                "code": feature["code"],
                "name": feature["name"],
                "description": feature["description"],
                "privileges": [
                    {**p, "value": _typed(privileges[p["code"]], p["value_type"])}
                    for p in feature["privileges"]
                    if p["code"] in privileges
                ],
            }
        )
    return out


def _plan_values(ctx: RequestContext) -> tuple[JsonObj, dict[str, dict[str, Any]]]:
    plan = _find(ctx.store, "plans", ctx.path_params["code"], "plan")
    return plan, _box(ctx.store)["entitlements"].setdefault(plan["lago_id"], {})


def _set_values(ctx: RequestContext, *, replace: bool) -> bytes:
    body = ctx.root("entitlements")
    store = ctx.store
    with store.lock:
        _, values = _plan_values(ctx)
        features = _features(store)
        staged: dict[str, dict[str, Any]] = (
            {} if replace else {k: dict(v) for k, v in values.items()}
        )
        for code, given in body.items():
            feature = features.get(code)
            if feature is None:
                raise not_found("feature")
            privileges = {p["code"]: p for p in feature["privileges"]}
            target = staged.setdefault(code, {})
            for privilege_code, value in (given or {}).items():
                privilege = privileges.get(privilege_code)
                if privilege is None:
                    raise not_found("privilege")
                if value is not None:
                    _check_value(value, privilege)
                target[privilege_code] = value
        values.clear()
        values.update(staged)
        return dumps({"entitlements": _entitlement_objects(store, values)})


@route("GET", "/plans/{code}/entitlements")
def list_entitlements(ctx: RequestContext) -> bytes:
    """``GET /plans/{code}/entitlements`` (not paginated)."""
    with ctx.store.lock:
        _, values = _plan_values(ctx)
        return dumps({"entitlements": _entitlement_objects(ctx.store, values)})


@route("POST", "/plans/{code}/entitlements")
def post_entitlements(ctx: RequestContext) -> bytes:
    """``POST /plans/{code}/entitlements``: the given features replace every entitlement."""
    return _set_values(ctx, replace=True)


@route("PATCH", "/plans/{code}/entitlements")
def patch_entitlements(ctx: RequestContext) -> bytes:
    """``PATCH /plans/{code}/entitlements``: given features and privileges added or changed."""
    return _set_values(ctx, replace=False)


@route("GET", "/plans/{code}/entitlements/{feature_code}")
def get_entitlement(ctx: RequestContext) -> bytes:
    """``GET /plans/{code}/entitlements/{feature_code}``."""
    with ctx.store.lock:
        _, values = _plan_values(ctx)
        code = ctx.path_params["feature_code"]
        found = _entitlement_objects(ctx.store, {code: values[code]}) if code in values else []
        if not found:
            raise not_found("entitlement")
        return _answer("entitlement", found[0])


@route("DELETE", "/plans/{code}/entitlements/{feature_code}")
def delete_entitlement(ctx: RequestContext) -> bytes:
    """``DELETE /plans/{code}/entitlements/{feature_code}``."""
    with ctx.store.lock:
        _, values = _plan_values(ctx)
        code = ctx.path_params["feature_code"]
        found = _entitlement_objects(ctx.store, {code: values[code]}) if code in values else []
        if not found:
            raise not_found("entitlement")
        del values[code]
        return _answer("entitlement", found[0])


# ---------------------------------------------------------------------- subscription plan overrides


def _override_charge(store: Store, charge: JsonObj, given: JsonObj) -> None:
    """A charge's overridable parts (``Charges::OverrideService``): the keys given."""
    if "properties" in given:
        charge["properties"] = _properties(charge["charge_model"], given.get("properties"))
    if "min_amount_cents" in given:
        charge["min_amount_cents"] = given.get("min_amount_cents") or 0
    if "invoice_display_name" in given:
        charge["invoice_display_name"] = given.get("invoice_display_name")
    if given.get("filters") is not None:
        charge["filters"] = _charge_filters(given["filters"])
    if isinstance(given.get("tax_codes"), list):
        charge["taxes"] = _taxes(store, given["tax_codes"])


def _override_fields(store: Store, plan: JsonObj, given: JsonObj) -> None:
    errors: JsonObj = {}
    fields = _plan_basics(store, {k: v for k, v in given.items() if k != "metadata"}, errors)
    fields.update(_currency_and_trial(given, errors))
    _fail(errors)
    plan.update(fields)
    if given.get("minimum_commitment") is not None:
        _commitment(plan, given["minimum_commitment"], store)


def _override_fixed_charge(store: Store, fixed: JsonObj, given: JsonObj) -> None:
    """A fixed charge's overridable parts (``FixedCharges::OverrideService``): the keys given."""
    if "invoice_display_name" in given:
        fixed["invoice_display_name"] = given.get("invoice_display_name")
    if "units" in given:
        fixed["units"] = _fixed_units(given["units"])
    if "properties" in given:
        fixed["properties"] = _properties(fixed["charge_model"], given.get("properties"))
    if isinstance(given.get("tax_codes"), list):
        fixed["taxes"] = _taxes(store, given["tax_codes"])


UNITS_ONLY = frozenset({"id", "units", "apply_units_immediately"})


def _fixed_overrides(plan: JsonObj, given: JsonObj) -> list[JsonObj]:
    """``plan_overrides.fixed_charges``, each naming one of ``plan`` by (parent) ``id``.

    One naming none is 404 ``fixed_charge_not_found``.
    """
    items = _list_of_dicts(given.get("fixed_charges") or [], "fixed_charges")
    held = plan.get("fixed_charges") or []
    for item in items:
        if not any(item.get("id") in (f["lago_id"], f.get("lago_parent_id")) for f in held):
            raise not_found("fixed_charge")
    return items


def check_overrides(store: Store, plan_code: Any, given: Any) -> None:
    """Refuse, before a subscription is created, overrides its plan cannot take."""
    if not isinstance(given, dict):
        raise unprocessable({"plan_overrides": ["value_is_invalid"]})
    plan = store.find_one("plans", code=plan_code)
    if plan is not None:
        _fixed_overrides(plan, given)


def _units_only(given: JsonObj) -> bool:
    fixed = given.get("fixed_charges")
    return (
        set(given) == {"fixed_charges"}
        and isinstance(fixed, list)
        and all(isinstance(f, dict) and set(f) <= UNITS_ONLY for f in fixed)
    )


def override_plan(store: Store, sub: JsonObj, given: Any) -> None:
    """``plan_overrides`` of a subscription (licensed; the caller checks the licence).

    The first call gives the subscription its own plan (``Plans::OverrideService``): a copy
    of its plan with a new ``lago_id`` and the same ``code``, each charge copied with
    ``lago_parent_id`` naming the plan's charge and the overrides of the charge whose
    ``id`` is that charge's; unknown ids are ignored. Later calls update that plan
    (``Plans::UpdateService``): charges matched by their own ``id`` (or their parent's),
    charges not named are removed when ``charges`` is given; fixed charges likewise. A
    units-only ``fixed_charges`` override keeps the units for the subscription instead.
    The subscription's ``plan_amount_cents`` and ``plan_amount_currency`` follow its plan.
    """
    if not isinstance(given, dict):
        raise unprocessable({"plan_overrides": ["value_is_invalid"]})
    if isinstance(given.get("usage_thresholds"), list):
        _thresholds(given["usage_thresholds"], store)  # 422 before anything changes
    charges = _list_of_dicts(given.get("charges") or [], "charges")
    overrides = _box(store)["overrides"]
    held = plan_of(store, sub) or {}
    fixed = _fixed_overrides(held, given)
    if _units_only(given):
        units = _box(store)["units"].setdefault(sub["lago_id"], {})
        for item in fixed:
            found = next(
                f for f in held.get("fixed_charges") or []
                if item.get("id") in (f["lago_id"], f.get("lago_parent_id"))
            )  # fmt: skip
            units[found.get("lago_parent_id") or found["lago_id"]] = _fixed_units(
                item.get("units")
            )
        store.changed("subscriptions", sub)
        return
    units = _box(store)["units"].get(sub["lago_id"]) or {}
    plan = overrides.get(sub["lago_id"])
    if plan is None:
        parent = _find(store, "plans", sub["plan_code"], "plan")
        plan = copy.deepcopy(parent)
        now = iso(store.clock())
        plan.update({"lago_id": o.new_lago_id(), "created_at": now})
        by_id = {str(c.get("id")): c for c in charges if c.get("id")}
        plan["charges"] = []
        for charge in parent.get("charges") or []:
            mine = {**copy.deepcopy(charge), "lago_id": o.new_lago_id(), "created_at": now}
            mine["lago_parent_id"] = charge["lago_id"]
            _override_charge(store, mine, by_id.get(charge["lago_id"], {}))
            plan["charges"].append(mine)
        for own in plan.get("fixed_charges") or []:
            own.update({"lago_id": o.new_lago_id(), "lago_parent_id": own["lago_id"]})
            own["units"] = units.get(own["lago_parent_id"], own.get("units"))
            item = next((f for f in fixed if f.get("id") == own["lago_parent_id"]), {})
            _override_fixed_charge(store, own, item)
        if isinstance(given.get("usage_thresholds"), list):
            plan["usage_thresholds"] = _thresholds(given["usage_thresholds"], store)
    else:
        plan = copy.deepcopy(plan)
        for own in plan.get("fixed_charges") or []:
            own["units"] = units.get(own.get("lago_parent_id") or own["lago_id"], own["units"])
        if given.get("charges") is not None:
            kept = []
            for item in charges:
                found = next(
                    (
                        c
                        for c in plan.get("charges") or []
                        if item.get("id") in (c["lago_id"], c.get("lago_parent_id"))
                    ),
                    None,
                )
                if found is not None:
                    _override_charge(store, found, item)
                    kept.append(found)
            plan["charges"] = kept
        if given.get("fixed_charges") is not None:
            kept = []
            for item in fixed:
                found = next(
                    f for f in plan.get("fixed_charges") or []
                    if item.get("id") in (f["lago_id"], f.get("lago_parent_id"))
                )  # fmt: skip
                _override_fixed_charge(store, found, item)
                kept.append(found)
            plan["fixed_charges"] = kept
        if isinstance(given.get("usage_thresholds"), list):
            plan["usage_thresholds"] = _thresholds(given["usage_thresholds"], store)
    _override_fields(store, plan, given)
    _box(store)["units"].pop(sub["lago_id"], None)  # in its plan now
    overrides[sub["lago_id"]] = plan
    sub["plan_amount_cents"] = plan.get("amount_cents", 0)
    sub["plan_amount_currency"] = plan.get("amount_currency")
    store.changed("subscriptions", sub)


def plan_of(store: Store, sub: JsonObj) -> JsonObj | None:
    """The plan a subscription is billed on: its own when overridden, else its plan's."""
    box = _box(store)
    own = box["overrides"].get(sub.get("lago_id"))
    plan = own if own is not None else store.find_one("plans", code=sub.get("plan_code"))
    units = box["units"].get(sub.get("lago_id"))
    if plan is None or not units:
        return plan
    shown = dict(plan)
    shown["fixed_charges"] = [
        {**f, "units": units.get(f.get("lago_parent_id") or f["lago_id"], f.get("units"))}
        for f in plan.get("fixed_charges") or []
    ]
    return shown


def overridden_plans_of(store: Store) -> list[JsonObj]:
    """Each overridden subscription's own plan (for tests that compare organisations)."""
    with store.lock:
        subs = {s["lago_id"]: s for s in store.find_all("subscriptions")}
        return [
            {
                "external_subscription_id": subs[sub_id]["external_id"],
                "status": subs[sub_id]["status"],
                "plan": plan,
            }
            for sub_id, plan in _box(store)["overrides"].items()
            if sub_id in subs
        ]


def features_of(store: Store) -> list[JsonObj]:
    """Every feature (for tests that compare organisations)."""
    with store.lock:
        return sorted(_features(store).values(), key=lambda f: f["code"])


def entitlements_of(store: Store) -> dict[str, list[JsonObj]]:
    """Plan code -> its entitlements (for tests that compare organisations)."""
    with store.lock:
        plans = {p["lago_id"]: p["code"] for p in store.find_all("plans")}
        return {
            plans[plan_id]: _entitlement_objects(store, values)
            for plan_id, values in _box(store)["entitlements"].items()
            if plan_id in plans and values
        }


__all__ = [
    "ROUTES",
    "ApiError",
    "check_overrides",
    "entitlements_of",
    "features_of",
    "overridden_plans_of",
    "override_plan",
    "plan_of",
]
