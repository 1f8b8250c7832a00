"""Generate tap-lago's stream schemas from the official Lago OpenAPI spec.

Usage (from anywhere)::

    python tap-lago/scripts/generate_schemas.py            # write tap_lago/schemas/*.json
    python tap-lago/scripts/generate_schemas.py --check    # exit 1 if a file would change

The spec is read from ``$LAGO_OPENAPI_SPEC`` or ``<repo root>/../shared/lago-openapi.yaml``;
it is never copied into the repository. For each stream the item schema is taken from the
``200`` response of its list endpoint (wrapper key -> ``items``), every ``$ref`` and ``allOf``
is resolved, and only what a Singer schema needs is kept: property names, types, formats,
nullability and enums. Descriptions, examples and validation constraints (patterns,
bounds) are dropped.

Corrections to the spec, so that every value lago-api v1.51 sends validates:

- Nullability: every field except the key fields accepts ``null``, at every depth. The
  spec marks fields non-null that the server does send as null (event
  ``external_subscription_id``, the ones listed in LAGO_API_READS.md and the sandbox
  README), and a field it does not require may be left out; a warehouse column is
  nullable anyway. Key fields (primary keys and replication keys) stay non-null and
  required; the tap never emits a record with a null key (see ``tap_lago/records.py``).
- Decimal strings (``DECIMAL_FIELDS``: amounts, units, rates and balances that Lago
  serializes as JSON strings) are typed ``number``: the tap emits them as exact JSON
  numbers, so loaders make them ``numeric`` columns. Only top-level fields are retyped;
  nested objects keep the spec's strings (they land in one JSON column anyway).
- Fields the server sends that the spec lacks or leaves undefined (``EXTRA_PROPERTIES``).
- Rows flattened from an array of the listed object (``FLATTENED``: past usage is one row
  per charge of each period) merge the entry's fields with the object's other fields.
- Nested fields the server sends outside the spec's type or enum, or that the spec
  omits (``SERVER_FIELDS``).
- Nested objects accept properties they do not declare (``additionalProperties``), and
  every stream has an ``_unknown_fields`` object for top-level fields of a newer Lago.

The output is sorted and stable, so re-running the script on the same spec gives no diff.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import typing as t
from pathlib import Path

import yaml

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "tap_lago"
SCHEMAS_DIR = PACKAGE_DIR / "schemas"
REPO_ROOT = Path(__file__).resolve().parents[2]

# stream -> (list path, wrapper key in the 200 response, key fields kept non-null)
STREAMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "customers": ("/customers", "customers", ("lago_id",)),
    "subscriptions": ("/subscriptions", "subscriptions", ("lago_id",)),
    "invoices": ("/invoices", "invoices", ("lago_id", "updated_at")),
    "billable_metrics": ("/billable_metrics", "billable_metrics", ("lago_id",)),
    "plans": ("/plans", "plans", ("lago_id",)),
    "events": (
        "/events",
        "events",
        ("transaction_id", "external_subscription_id", "timestamp"),
    ),
    "coupons": ("/coupons", "coupons", ("lago_id",)),
    "add_ons": ("/add_ons", "add_ons", ("lago_id",)),
    "fees": ("/fees", "fees", ("lago_id", "created_at")),
    "credit_notes": ("/credit_notes", "credit_notes", ("lago_id", "updated_at")),
    "wallets": ("/wallets", "wallets", ("lago_id",)),
    "wallet_transactions": (
        "/wallets/{lago_id}/wallet_transactions",
        "wallet_transactions",
        ("lago_id",),
    ),
    "taxes": ("/taxes", "taxes", ("lago_id",)),
    "applied_coupons": ("/applied_coupons", "applied_coupons", ("lago_id",)),
    "customer_usage": (
        "/customers/{external_customer_id}/current_usage",
        "customer_usage",
        ("external_customer_id", "external_subscription_id", "from_datetime"),
    ),
    "payments": ("/payments", "payments", ("lago_id",)),
    "payment_requests": ("/payment_requests", "payment_requests", ("lago_id",)),
    "payment_receipts": ("/payment_receipts", "payment_receipts", ("lago_id", "created_at")),
    "payment_methods": (
        "/customers/{external_customer_id}/payment_methods",
        "payment_methods",
        ("lago_id",),
    ),
    "billing_entities": ("/billing_entities", "billing_entities", ("lago_id",)),
    "features": ("/features", "features", ("code",)),
    "entitlements": ("/plans/{code}/entitlements", "entitlements", ("plan_code", "code")),
    "webhook_endpoints": ("/webhook_endpoints", "webhook_endpoints", ("lago_id",)),
    "customer_past_usage": (
        "/customers/{external_customer_id}/past_usage",
        "usage_periods",
        ("external_subscription_id", "from_datetime", "lago_invoice_id", "lago_charge_id"),
    ),
    "subscription_lifetime_usage": (
        "/subscriptions/{external_id}/lifetime_usage",
        "lifetime_usage",
        ("lago_id",),
    ),
    "subscription_alerts": ("/subscriptions/{external_id}/alerts", "alerts", ("lago_id",)),
    "wallet_alerts": (
        "/customers/{external_customer_id}/wallets/{wallet_code}/alerts",
        "alerts",
        ("lago_id",),
    ),
    "gross_revenue": (
        "/analytics/gross_revenue",
        "gross_revenues",
        ("month", "currency", "billing_entity_id"),
    ),
    "invoiced_usage": (
        "/analytics/invoiced_usage",
        "invoiced_usages",
        ("month", "currency", "code"),
    ),
    "mrr": ("/analytics/mrr", "mrrs", ("month", "currency")),
    "overdue_balance": (
        "/analytics/overdue_balance",
        "overdue_balances",
        ("month", "currency", "billing_entity_id"),
    ),
    "invoice_collection": (
        "/analytics/invoice_collection",
        "invoice_collections",
        ("month", "payment_status", "currency"),
    ),
    "usage": (
        "/analytics/usage",
        "usages",
        ("start_of_period_dt", "end_of_period_dt", "billable_metric_code", "amount_currency"),
    ),
    "activity_logs": ("/activity_logs", "activity_logs", ("activity_id", "logged_at")),
    "api_logs": ("/api_logs", "api_logs", ("request_id", "logged_at")),
}

# Streams whose row is one entry of an array of the listed object, merged with that
# object's other fields: stream -> (array field, {object field: row column}). Past usage
# is one row per charge of each period; the period's amounts cover its whole invoice
# (LAGO_API_READS.md §7), hence the ``invoice_`` names.
FLATTENED: dict[str, tuple[str, dict[str, str]]] = {
    "customer_past_usage": (
        "charges_usage",
        {
            "amount_cents": "invoice_amount_cents",
            "taxes_amount_cents": "invoice_taxes_amount_cents",
            "total_amount_cents": "invoice_total_amount_cents",
        },
    ),
}

#: ``alert_type`` values of subscription alerts in v1.51 (the spec lacks the last one).
_SUBSCRIPTION_ALERT_TYPES = [
    "billable_metric_current_usage_amount",
    "billable_metric_current_usage_units",
    "billable_metric_lifetime_usage_units",
    "current_usage_amount",
    "lifetime_usage_amount",
]


# Fields missing from the spec's item schema: keys the tap adds to records (usage), and
# fields the v1.51 serializers send that the spec leaves out or never defines
# (LAGO_API_BEHAVIOUR.md §2, LAGO_API_READS.md §13, WalletObject's required ``balance``).
EXTRA_PROPERTIES: dict[str, dict[str, dict[str, t.Any]]] = {
    "invoices": {
        "voided_at": {"format": "date-time", "type": ["string", "null"]},
    },
    "wallets": {
        "balance": {"type": ["string", "null"]},
    },
    "wallet_transactions": {
        "billing_entity_code": {"type": ["string", "null"]},
    },
    "customer_usage": {
        "external_customer_id": {"type": "string"},
        "external_subscription_id": {"type": "string"},
    },
    # The parent, which the item lacks (the tap adds it).
    "payment_methods": {"external_customer_id": {"type": ["string", "null"]}},
    "entitlements": {"plan_code": {"type": "string"}},
    # Sent by v1.51, not in the spec (LAGO_API_READS.md sections 3 and 4).
    "payment_receipts": {
        "file_url": {"type": ["string", "null"]},
        "xml_url": {"type": ["string", "null"]},
    },
    "billing_entities": {
        "einvoicing": {"type": ["boolean", "null"]},
        "phone": {"type": ["string", "null"]},
    },
    "customer_past_usage": {
        "external_customer_id": {"type": ["string", "null"]},
        "external_subscription_id": {"type": "string"},
        "lago_charge_id": {"format": "uuid", "type": "string"},
        "billable_metric_code": {"type": ["string", "null"]},
    },
    # LAGO_API_READS.md §9: previous_value is a decimal string; alert_type lacks one value.
    "subscription_alerts": {
        "alert_type": {"enum": [*_SUBSCRIPTION_ALERT_TYPES, None], "type": ["string", "null"]},
        "previous_value": {"type": ["number", "null"]},
        "subscription_external_id": {"type": ["string", "null"]},
    },
    "wallet_alerts": {
        "previous_value": {"type": ["number", "null"]},
        "subscription_external_id": {"type": ["string", "null"]},
    },
    # LAGO_API_READS.md §11: amounts are floats or decimal strings, counts of gross revenue
    # decimal strings, billing_entity_id undocumented; currency and payment_status are null
    # in the row of a month without data (a key, so a plain string: "" stands in).
    "gross_revenue": {
        "amount_cents": {"type": ["number", "null"]},
        "billing_entity_id": {"type": "string"},
        "currency": {"type": "string"},
        "invoices_count": {"type": ["number", "null"]},
    },
    "invoiced_usage": {
        "amount_cents": {"type": ["number", "null"]},
        "currency": {"type": "string"},
    },
    "mrr": {
        "amount_cents": {"type": ["number", "null"]},
        "currency": {"type": "string"},
    },
    "overdue_balance": {
        "amount_cents": {"type": ["number", "null"]},
        "billing_entity_id": {"type": "string"},
        "currency": {"type": "string"},
    },
    "invoice_collection": {
        "amount_cents": {"type": ["number", "null"]},
        "currency": {"type": "string"},
        "payment_status": {"type": "string"},
    },
    "usage": {
        "amount_currency": {"type": "string"},
    },
    # LAGO_API_READS.md §12: the bodies are maps (the spec says strings; both accepted).
    "api_logs": {
        "request_body": {"additionalProperties": True, "type": ["object", "string", "null"]},
        "request_response": {"additionalProperties": True, "type": ["object", "string", "null"]},
    },
}

# Nested fields (dotted path from the record, through arrays) that v1.51 sends outside
# the spec's type or enum, or that the spec omits: a payment's ``payment_provider_type``
# is the provider's class name, e.g. ``PaymentProviders::StripeProvider``, not one of the
# spec's short names (LAGO_API_READS.md section 1), and invoices carry ``voided_at``.
SERVER_FIELDS: dict[str, dict[str, dict[str, t.Any]]] = {
    "payments": {"payment_provider_type": {"type": ["string", "null"]}},
    "payment_receipts": {"payment.payment_provider_type": {"type": ["string", "null"]}},
    "payment_requests": {
        "invoices.voided_at": {"format": "date-time", "type": ["string", "null"]}
    },
}

# Top-level fields Lago serializes as decimal strings (LAGO_API_CONTRACT.md, "Decimal
# strings"): besides these, every top-level string field named ``units``,
# ``total_aggregated_units``, ``precise_*`` or ``*_precise_*``.
DECIMAL_FIELDS: dict[str, tuple[str, ...]] = {
    "wallets": (
        "balance",
        "consumed_credits",
        "credits_balance",
        "credits_ongoing_balance",
        "credits_ongoing_usage_balance",
        "rate_amount",
    ),
    "wallet_transactions": ("amount", "credit_amount", "remaining_credit_amount"),
    "coupons": ("percentage_rate",),
    "applied_coupons": ("percentage_rate",),
}
_DECIMAL_NAMES = frozenset({"units", "total_aggregated_units"})

#: The column that keeps top-level fields a stream's schema does not declare.
UNKNOWN_FIELDS = "_unknown_fields"

# JSON Schema keywords carried over from the spec (everything else is dropped).
_PRIMITIVE_KEYWORDS = ("format", "enum")


def spec_path() -> Path:
    """Locate the OpenAPI spec: ``$LAGO_OPENAPI_SPEC`` or ``<repo>/../shared/``."""
    env = os.environ.get("LAGO_OPENAPI_SPEC")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "lago-openapi.yaml"


def load_spec(path: Path | None = None) -> dict[str, t.Any]:
    """Load the spec as a dict."""
    path = path or spec_path()
    if not path.is_file():
        msg = f"Lago OpenAPI spec not found at {path}; set LAGO_OPENAPI_SPEC"
        raise FileNotFoundError(msg)
    with path.open(encoding="utf-8") as fh:
        return t.cast("dict[str, t.Any]", yaml.safe_load(fh))


class _Resolver:
    """Turn spec fragments into plain, self-contained JSON Schema."""

    def __init__(self, spec: dict[str, t.Any]) -> None:
        self.spec = spec

    def deref(self, node: dict[str, t.Any], stack: tuple[str, ...]) -> tuple[dict, tuple]:
        """Follow ``$ref`` chains, returning the target and the updated ref stack."""
        while "$ref" in node:
            ref = node["$ref"]
            if ref in stack:
                msg = f"recursive $ref {ref} via {' -> '.join(stack)}"
                raise ValueError(msg)
            stack = (*stack, ref)
            target: t.Any = self.spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            # Sibling keywords next to $ref (3.1 allows it) override the target.
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings else target
        return node, stack

    def merge_all_of(self, node: dict[str, t.Any], stack: tuple[str, ...]) -> dict:
        """Flatten ``allOf`` into one object schema (union of properties and required)."""
        merged: dict[str, t.Any] = {k: v for k, v in node.items() if k != "allOf"}
        props: dict[str, t.Any] = dict(merged.pop("properties", {}) or {})
        required: list[str] = list(merged.pop("required", []) or [])
        for part in node["allOf"]:
            part, sub_stack = self.deref(part, stack)  # noqa: PLW2901
            if "allOf" in part:
                part = self.merge_all_of(part, sub_stack)  # noqa: PLW2901
            props.update(part.get("properties") or {})
            required.extend(part.get("required") or [])
            for key in ("type", "nullable", "additionalProperties"):
                if key in part and key not in merged:
                    merged[key] = part[key]
        merged["properties"] = props
        merged["required"] = sorted(set(required))
        merged.setdefault("type", "object")
        return merged

    def convert(self, node: dict[str, t.Any], stack: tuple[str, ...], *, nullable: bool) -> dict:
        """Convert one schema node; ``nullable`` adds ``null`` to its type."""
        node, stack = self.deref(node, stack)
        if "allOf" in node:
            node = self.merge_all_of(node, stack)
        nullable = nullable or bool(node.get("nullable"))

        for key in ("oneOf", "anyOf"):
            if key in node:
                return self._convert_union(node[key], stack, nullable=nullable)

        types = _types(node)
        if "null" in types:
            nullable = True
            types = [x for x in types if x != "null"]
        if not types:
            types = ["object"] if "properties" in node else ["string"]

        out: dict[str, t.Any] = {}
        for key in _PRIMITIVE_KEYWORDS:
            if key in node:
                out[key] = copy.deepcopy(node[key])
        if "enum" in out and nullable and None not in out["enum"]:
            out["enum"].append(None)
        if "enum" in out:
            out["enum"] = sorted(out["enum"], key=lambda v: (v is None, str(v)))

        if "object" in types:
            props = node.get("properties") or {}
            if props:
                # Any field may be null or absent (see the module docstring).
                out["properties"] = {
                    name: self.convert(prop, stack, nullable=True)
                    for name, prop in sorted(props.items())
                }
            extra = node.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                out["additionalProperties"] = self.convert(extra, stack, nullable=False)
            elif props:
                # A field a newer Lago adds to a nested object is kept, not dropped.
                out["additionalProperties"] = True
        if "array" in types:
            items = node.get("items")
            out["items"] = self.convert(items, stack, nullable=False) if items else {}

        out["type"] = _type_value(types, nullable=nullable)
        return out

    def _convert_union(
        self, branches: list[dict], stack: tuple[str, ...], *, nullable: bool
    ) -> dict:
        converted = [self.convert(b, stack, nullable=False) for b in branches]
        if all(set(c) == {"type"} for c in converted):
            # A union of bare primitives is a type list.
            types: list[str] = []
            for c in converted:
                for x in c["type"] if isinstance(c["type"], list) else [c["type"]]:
                    if x != "null" and x not in types:
                        types.append(x)
                    nullable = nullable or x == "null"
            return {"type": _type_value(types, nullable=nullable)}
        if nullable:
            converted.append({"type": "null"})
        return {"anyOf": converted}


def _types(node: dict[str, t.Any]) -> list[str]:
    raw = node.get("type")
    if raw is None:
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def _type_value(types: list[str], *, nullable: bool) -> str | list[str]:
    order = ["object", "array", "string", "integer", "number", "boolean"]
    ordered = sorted(set(types), key=lambda x: order.index(x) if x in order else len(order))
    if nullable:
        return [*ordered, "null"]
    return ordered[0] if len(ordered) == 1 else ordered


def _item_schema(spec: dict[str, t.Any], path: str, wrapper: str) -> dict[str, t.Any]:
    """The raw spec schema of one record of a list (or single-object) endpoint."""
    response = spec["paths"][path]["get"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    resolver = _Resolver(spec)
    body, stack = resolver.deref(schema, ())
    if "allOf" in body:
        body = resolver.merge_all_of(body, stack)
    item = body["properties"][wrapper]
    if item.get("type") == "array":
        item = item["items"]
    return t.cast("dict[str, t.Any]", item)


def build_schema(spec: dict[str, t.Any], stream: str) -> dict[str, t.Any]:
    """Build the Singer JSON schema of one stream."""
    path, wrapper, keys = STREAMS[stream]
    item = _item_schema(spec, path, wrapper)
    resolver = _Resolver(spec)
    schema = resolver.convert(item, (), nullable=False)
    if stream in FLATTENED:
        schema = _flatten(schema, *FLATTENED[stream])
    schema["type"] = "object"
    # Top-level fields the schema lacks go to UNKNOWN_FIELDS (the tap moves them there).
    schema.pop("additionalProperties", None)
    props = schema.setdefault("properties", {})
    for name, prop in EXTRA_PROPERTIES.get(stream, {}).items():
        props[name] = copy.deepcopy(prop)
    for name in _decimal_fields(stream, props):
        props[name] = {"type": ["number", "null"]}
    for path, prop in SERVER_FIELDS.get(stream, {}).items():
        *parents, name = path.split(".")
        node = props
        for parent in parents:
            if parent not in node:
                msg = f"stream {stream}: {path!r}: no {parent!r} in the schema"
                raise KeyError(msg)
            parent_schema = node[parent].get("items") or node[parent]
            node = parent_schema["properties"]
        node[name] = copy.deepcopy(prop)
    props[UNKNOWN_FIELDS] = {"additionalProperties": True, "type": ["object", "null"]}
    for key in keys:
        if key not in props:
            msg = f"stream {stream}: key field {key!r} is not in the spec's item schema"
            raise KeyError(msg)
        prop = props[key]
        if isinstance(prop.get("type"), list):
            non_null = [x for x in prop["type"] if x != "null"]
            prop["type"] = non_null[0] if len(non_null) == 1 else non_null
        if "enum" in prop:
            prop["enum"] = [v for v in prop["enum"] if v is not None]
    schema["properties"] = dict(sorted(props.items()))
    schema["required"] = sorted(keys)
    return schema


def _flatten(schema: dict[str, t.Any], array: str, renamed: dict[str, str]) -> dict[str, t.Any]:
    """The schema of one entry of ``array`` with the enclosing object's other fields."""
    props = dict(schema["properties"])
    entry = props.pop(array)["items"]
    row = {renamed.get(name, name): prop for name, prop in props.items()}
    clashes = set(row) & set(entry["properties"])
    if clashes:
        msg = f"{array}: rename the enclosing fields {sorted(clashes)}"
        raise ValueError(msg)
    row.update(entry["properties"])
    return {**entry, "properties": row}


def _decimal_fields(stream: str, props: dict[str, t.Any]) -> list[str]:
    """Top-level decimal-string fields of a stream (``DECIMAL_FIELDS`` and the name rule)."""
    listed = DECIMAL_FIELDS.get(stream, ())
    found = []
    for name, prop in props.items():
        by_name = name in _DECIMAL_NAMES or name.startswith("precise_") or "_precise_" in name
        if name not in listed and not by_name:
            continue
        types = prop.get("type")
        types = types if isinstance(types, list) else [types]
        if "string" in types and "format" not in prop and "enum" not in prop:
            found.append(name)
        elif name in listed:
            msg = f"stream {stream}: decimal field {name!r} is not a plain string in the spec"
            raise ValueError(msg)
    missing = set(listed) - set(props)
    if missing:
        msg = f"stream {stream}: decimal fields {sorted(missing)} are not in the schema"
        raise KeyError(msg)
    return found


def render(schema: dict[str, t.Any]) -> str:
    """Serialize deterministically."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(spec: dict[str, t.Any]) -> dict[str, str]:
    """Return ``{file name: file text}`` for every stream."""
    return {f"{name}.json": render(build_schema(spec, name)) for name in sorted(STREAMS)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file would change")
    parser.add_argument("--out", type=Path, default=SCHEMAS_DIR, help="output directory")
    args = parser.parse_args(argv)

    files = generate(load_spec())
    drift = []
    for name, text in files.items():
        target = args.out / name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            drift.append(name)
            if not args.check:
                target.write_text(text, encoding="utf-8")
    if args.check and drift:
        print(f"schemas out of date: {', '.join(drift)}", file=sys.stderr)
        return 1
    print(f"{len(files)} schemas {'checked' if args.check else 'written'}; changed: {drift}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
