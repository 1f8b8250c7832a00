"""Organisation settings in the sandbox: billing entities, features, plan entitlements and
webhook endpoints (lago-api v1.51.0, LAGO_API_READS.md sections 4, 5 and 6).

Like ``cash.py``: builders (for ``objects.complete``), the seed (:func:`fill`, part of the
catalog: it depends only on the seed and the anchor) and the read routes (``ROUTES``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.cash import page_body, selected, single
from tests.lago_sandbox.store import JsonObj, dumps, not_found

IdFactory = Callable[[], str]
Handler = Callable[[Any], bytes]

#: The store tables this module seeds and serves.
RESOURCES = ("billing_entities", "features", "entitlements", "webhook_endpoints")

#: Fields ``GET /billing_entities/{code}`` adds to the list item.
BILLING_ENTITY_SHOW_ONLY = ("taxes", "selected_invoice_custom_sections")

# (code, name, description, privileges as (code, name, value_type, select options))
_FEATURES: tuple[tuple[str, str | None, str | None, tuple], ...] = (
    (
        "seats",
        "Seats",
        "Number of users of the account",
        (("max", "Maximum", "integer", None), ("max_admins", "Max admins", "integer", None)),
    ),
    (
        "sso",
        "Single sign-on",
        None,
        (
            ("provider", "SSO provider", "select", ["google", "okta", "azure_ad"]),
            ("enforced", None, "boolean", None),
        ),
    ),
    ("api_access", "API access", "Access to the public API", ()),
    ("support", None, None, (("channel", "Support channel", "string", None),)),
)
# plan code -> {feature code: {privilege code: value}}
_ENTITLEMENTS: dict[str, dict[str, dict[str, Any]]] = {
    "growth": {"api_access": {}, "seats": {"max": 10}, "support": {"channel": "email"}},
    "scale": {
        "api_access": {},
        "seats": {"max": 50, "max_admins": 5},
        "sso": {"provider": "google", "enforced": False},
        "support": {"channel": "slack"},
    },
    "growth_yearly": {"api_access": {}, "seats": {"max": 10}, "support": {"channel": "email"}},
    "enterprise_yearly": {
        "api_access": {},
        "seats": {"max": 500, "max_admins": 25},
        "sso": {"provider": "okta", "enforced": True},
        "support": {"channel": "dedicated"},
    },
}
# (url, signature algo, name, event types: None = every event)
_WEBHOOKS = (
    ("https://hooks.acme.example.com/lago", "hmac", "Production", None),
    (
        "https://billing-sync.acme.example.com/webhooks",
        "jwt",
        None,
        ["invoice.created", "invoice.payment_status_updated", "payment_receipt.created"],
    ),
    ("https://staging.acme.example.com/lago", "hmac", "Staging", ["customer.created"]),
)


# ------------------------------------------------------------------------------ builders


def _billing_entity(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    created = o.iso(now)
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "code": "entity",
        "name": "Entity",
        "default_currency": o.DEFAULT_CURRENCY,
        "created_at": created,
        "updated_at": created,
        # Nullable, but the spec says so with a `nullable` beside a $ref, which 3.1 ignores.
        "country": "FR",
        "address_line1": None,
        "address_line2": None,
        "phone": None,
        "city": None,
        "state": None,
        "zipcode": None,
        "einvoicing": False,
        "email": None,
        "legal_name": None,
        "legal_number": None,
        "timezone": "UTC",
        "net_payment_term": 0,
        "email_settings": [],
        "document_numbering": "per_customer",
        "document_number_prefix": None,
        "tax_identification_number": None,
        "finalize_zero_amount_invoice": True,
        "invoice_footer": None,
        "invoice_grace_period": 0,
        "subscription_invoice_issuing_date_adjustment": "align_with_finalization_date",
        "subscription_invoice_issuing_date_anchor": "next_period_start",
        "document_locale": "en",
        "is_default": False,
        "eu_tax_management": False,
        "logo_url": None,
    }


def _feature(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    return {
        "code": "feature",
        "name": None,
        "description": None,
        "privileges": [],
        "created_at": o.iso(now),
    }


def _entitlement(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    """Stored with ``plan_code`` (its plan), which the API does not show."""
    return {"plan_code": "", "code": "feature", "name": None, "description": None, "privileges": []}


def _webhook_endpoint(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_organization_id": new_id(),
        "webhook_url": "https://hooks.example.test/lago",
        "signature_algo": "hmac",
        "name": None,
        "event_types": None,
        "created_at": o.iso(now),
    }


BUILDERS: dict[str, Callable[[JsonObj, datetime, IdFactory], JsonObj]] = {
    "billing_entities": _billing_entity,
    "features": _feature,
    "entitlements": _entitlement,
    "webhook_endpoints": _webhook_endpoint,
}


# ---------------------------------------------------------------------------------- seed


def fill(org: dict[str, list[JsonObj]], *, seed: int, anchor: datetime) -> None:
    """Add the organisation's settings: two billing entities (``acme_corp``, the default
    one every seeded customer, subscription, invoice and wallet names, and ``acme_us``),
    four features, the entitlements of the plans above starter, three webhook endpoints.
    """
    rng = random.Random(f"lago-sandbox:{seed}:organisation")

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def moment(days_before: float) -> datetime:
        return anchor - timedelta(days=days_before, seconds=rng.randint(0, 86399))

    org_id = new_id()
    default = _billing_entity({}, moment(761), new_id)
    default.update(
        code=o.BILLING_ENTITY_CODE,
        name="Acme Corp",
        updated_at=o.iso(moment(rng.randint(20, 200))),
        country="FR",
        address_line1="5 rue de la Paix",
        phone="+33140000000",
        city="Paris",
        zipcode="75002",
        email="billing@acme.example.com",
        legal_name="Acme Corp SAS",
        legal_number="912345678",
        timezone="Europe/Paris",
        email_settings=["invoice.finalized", "credit_note.created", "payment_receipt.created"],
        document_number_prefix=o.ORGANIZATION_PREFIX,
        tax_identification_number="FR12912345678",
        invoice_footer="Thank you for your business.",
        is_default=True,
        eu_tax_management=True,
        logo_url="https://lago.example.test/logos/acme_corp.png",
    )
    second = _billing_entity({}, moment(rng.randint(150, 300)), new_id)
    second.update(
        code="acme_us",
        name="Acme Corp US",
        default_currency="USD",
        country="US",
        address_line1="100 Market Street",
        address_line2="Suite 300",
        city="San Francisco",
        state="CA",
        zipcode="94105",
        timezone="America/Los_Angeles",
        net_payment_term=30,
        document_numbering="per_billing_entity",
        document_number_prefix="ACU",
        finalize_zero_amount_invoice=False,
        invoice_grace_period=2,
        subscription_invoice_issuing_date_adjustment="keep_anchor",
        subscription_invoice_issuing_date_anchor="current_period_end",
    )
    org["billing_entities"] += [default, second]

    features: dict[str, JsonObj] = {}
    for days, (code, name, description, privileges) in zip(
        (700, 650, 420, 90), _FEATURES, strict=True
    ):
        features[code] = {
            "code": code,
            "name": name,
            "description": description,
            "privileges": [
                {
                    "code": p_code,
                    "name": p_name,
                    "value_type": kind,
                    "config": {"select_options": options} if options else {},
                }
                for p_code, p_name, kind, options in privileges
            ],
            "created_at": o.iso(moment(days)),
        }
    org["features"] += list(features.values())
    for plan_code, granted in _ENTITLEMENTS.items():
        for code, given in granted.items():
            feature = features[code]
            values = dict(given)
            if "max" in values:  # seats: a few more or fewer per seed
                values["max"] += rng.randint(-2, 2)
            org["entitlements"].append(
                {
                    "plan_code": plan_code,
                    "code": code,
                    "name": feature["name"],
                    "description": feature["description"],
                    "privileges": [
                        {**privilege, "value": values[privilege["code"]]}
                        for privilege in feature["privileges"]
                        if privilege["code"] in values
                    ],
                }
            )
    for days, (url, algo, name, event_types) in zip((600, 300, 45), _WEBHOOKS, strict=True):
        endpoint = _webhook_endpoint({}, moment(days), new_id)
        endpoint.update(
            lago_organization_id=org_id,
            webhook_url=url,
            signature_algo=algo,
            name=name,
            event_types=event_types,
        )
        org["webhook_endpoints"].append(endpoint)


# -------------------------------------------------------------------------------- routes


def list_billing_entities(ctx: Any) -> bytes:
    """``GET /billing_entities``: every entity, ``created_at ASC``, no pagination, no meta."""
    with ctx.store.lock:
        items = selected(ctx.store, "billing_entities", lambda e: True)
    return b'{"billing_entities":[' + b",".join(items) + b"]}"


def get_billing_entity(ctx: Any) -> bytes:
    """``GET /billing_entities/{code}``, with the show-only fields."""
    store = ctx.store
    with store.lock:
        entity = store.find_one("billing_entities", code=ctx.path_params["code"])
        if entity is None:
            raise not_found("billing_entity")
        shown = {**entity, **{key: entity.get(key, []) for key in BILLING_ENTITY_SHOW_ONLY}}
        return dumps({"billing_entity": shown})


def list_webhook_endpoints(ctx: Any) -> bytes:
    """``GET /webhook_endpoints``: ``webhook_url ASC, created_at DESC, id ASC``."""
    with ctx.store.lock:
        items = selected(ctx.store, "webhook_endpoints", lambda e: True)
    return page_body(ctx.query, "webhook_endpoints", items)


def get_webhook_endpoint(ctx: Any) -> bytes:
    """``GET /webhook_endpoints/{lago_id}``."""
    return single(ctx.store, "webhook_endpoints", ctx.path_params["lago_id"], "webhook_endpoint")


ROUTES: Iterable[tuple[str, str, Handler]] = (
    ("GET", "/billing_entities", list_billing_entities),
    ("GET", "/billing_entities/{code}", get_billing_entity),
    ("GET", "/webhook_endpoints", list_webhook_endpoints),
    ("GET", "/webhook_endpoints/{lago_id}", get_webhook_endpoint),
)
