"""Deterministic seed data: a realistic Lago organisation of configurable size.

``generate(options)`` returns every resource of :data:`objects.RESOURCES` as a list of
API-shape objects. The same options always give the same organisation:

* the catalog (taxes, billable metrics, plans, coupons, add-ons, and the organisation
  settings of ``organisation.fill``) depends only on ``seed`` (and on ``anchor`` for its
  timestamps), never on ``customers`` or ``events``;
* customers and what hangs off them (subscriptions, invoices, fees, credit notes, applied
  coupons, wallets, wallet transactions, and the payments and the rest of
  ``cash.fill``) depend on ``seed``, ``customers`` and ``anchor``;
* events depend on all options; they are spread over the last ``months`` calendar months
  before the anchor, on active and terminated subscriptions, within each subscription's
  life, with codes of its plan's metrics and properties fitting each metric.

Events fall in ``[anchor - months, anchor)`` (the anchor is midnight UTC of its date), and
there are exactly ``events`` of them as soon as there is one customer (events need a
subscription: with ``customers: 0`` there are none). Their ``properties`` dicts come from
small per-subscription pools and are shared between events: treat them as read-only.

``customers: 0, events: 0`` yields the catalog only; with ``catalog: false`` as well, an
empty organisation. Events are returned in the order of
the real list endpoint (``timestamp DESC, transaction_id ASC``); the other lists follow
the customers one by one (``sequential_id`` order), and the store sorts them as each
endpoint does.
"""

from __future__ import annotations

import bisect
import itertools
import random
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from tests.lago_sandbox import cash, organisation
from tests.lago_sandbox import objects as o

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "customers": 20,
    "events": 2000,
    "months": 3,
    "anchor": None,
    "unattached_events": 0,
    "catalog": True,
}

Org = dict[str, list[dict[str, Any]]]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DAY = timedelta(days=1)
_HISTORY_MONTHS = 12  # invoices cover at most this many months before the anchor


_UUID_KEEP = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def _clone(value: Any) -> Any:
    """Copy a JSON-like value (dicts, lists, scalars); much faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone(item) for item in value]
    return value


class _Ids:
    """Deterministic UUID4 strings drawn from an RNG."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self) -> str:
        # The bits of a version 4, RFC 4122 variant UUID, formatted by hand (it is hot).
        bits = self._rng.getrandbits(128) & _UUID_KEEP | _UUID_SET
        text = f"{bits:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown seed option {key!r}; expected one of {sorted(DEFAULTS)}")
        if value is not None:
            merged[key] = value
    for key in ("seed", "customers", "events", "months", "unattached_events"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value))
            except ValueError:
                raise ValueError(f"seed option {key!r} must be an integer, got {value!r}") from None
        if value < 0 or (key == "months" and value < 1):
            raise ValueError(f"seed option {key!r} is out of range: {value!r}")
        merged[key] = value
    if not isinstance(merged["catalog"], bool):
        raise ValueError(f"seed option 'catalog' must be true or false, got {merged['catalog']!r}")
    if not merged["catalog"] and (merged["customers"] or merged["unattached_events"]):
        raise ValueError("seed option 'catalog': false needs customers 0 (they use the catalog)")
    anchor = merged["anchor"]
    if anchor is None:
        anchor = datetime.now(timezone.utc).date()
    elif isinstance(anchor, datetime):
        anchor = o._utc(anchor).date()
    elif not isinstance(anchor, date):
        try:
            anchor = date.fromisoformat(str(anchor)[:10])
        except ValueError:
            raise ValueError(f"seed option 'anchor' must be an ISO date, got {anchor!r}") from None
    merged["anchor"] = anchor
    return merged


def generate(options: dict[str, Any] | None = None) -> Org:
    """Return a whole organisation, ``{resource: [API-shape objects]}``, from seed options.

    Raises:
        ValueError: for an unknown option or a value of the wrong type or range.
    """
    opts = _options(options)
    seed = opts["seed"]
    anchor = datetime.combine(opts["anchor"], datetime.min.time(), timezone.utc)
    org: Org = {resource: [] for resource in o.RESOURCES}
    catalog = _Catalog(seed, anchor)
    if not opts["catalog"]:
        return org  # an empty organisation
    catalog.fill(org)
    people = _People(seed, anchor, catalog, org)
    for index in range(opts["customers"]):
        people.add_customer(index, opts["customers"])
    people.finish()
    organisation.fill(org, seed=seed, anchor=anchor)
    cash.fill(org, seed=seed, anchor=anchor)
    org["events"] = _events(seed, anchor, opts["months"], opts["events"], catalog=catalog, org=org)
    if opts["unattached_events"]:
        org["events"] = _with_unattached_events(
            org["events"],
            seed=seed,
            anchor=anchor,
            months=opts["months"],
            count=opts["unattached_events"],
            catalog=catalog,
        )
    return org


def _with_unattached_events(
    events: list[dict[str, Any]],
    *,
    seed: int,
    anchor: datetime,
    months: int,
    count: int,
    catalog: _Catalog,
) -> list[dict[str, Any]]:
    """``events`` plus ``count`` sent without ``external_subscription_id``, in list order.

    Lago stores such events (the field is not validated) and lists them with
    ``"external_subscription_id": null``; no subscription bills them.
    """
    rng = random.Random(f"lago-sandbox:{seed}:unattached-events")
    start = o.add_months(anchor, -months)
    span = int((anchor - start).total_seconds())
    codes = sorted(catalog.metrics)
    added: list[dict[str, Any]] = []
    for index in range(count):
        moment = start + timedelta(seconds=rng.randrange(span), milliseconds=rng.randrange(1000))
        added.append(
            {
                "lago_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "transaction_id": f"unattached_{seed}_{index:05d}",
                "lago_customer_id": None,
                "code": rng.choice(codes),
                "timestamp": o.iso_ms(moment),
                "precise_total_amount_cents": f"{rng.randrange(1, 100000)}.{rng.randrange(100)}",
                "properties": {},
                "lago_subscription_id": None,
                "external_subscription_id": None,
                "created_at": o.iso(moment + timedelta(seconds=1)),
            }
        )
    merged = events + added
    merged.sort(key=lambda event: event["transaction_id"])
    merged.sort(key=lambda event: event["timestamp"], reverse=True)
    return merged


# ------------------------------------------------------------------------------- catalog

_TAXES = (
    ("vat_fr", "VAT France", 20.0, "French standard VAT", True),
    ("vat_de", "VAT Germany", 19.0, "German standard VAT", False),
    ("vat_es", "VAT Spain", 21.0, "Spanish standard VAT", False),
    ("us_sales_ny", "NY Sales Tax", 8.875, "New York state and city sales tax", False),
    ("exempt", "Tax exempt", 0.0, None, False),
)

# code, name, aggregation, field_name, recurring, rounding, filters
_METRICS: tuple[tuple[Any, ...], ...] = (
    ("api_calls", "API calls", "count_agg", None, False, None,
     {"region": ["eu-west", "us-east", "ap-south"]}),
    ("storage_gb", "Storage (GB)", "sum_agg", "gb", False, ("round", 2), None),
    ("seats", "Seats", "max_agg", "seats", False, None, None),
    ("active_users", "Monthly active users", "unique_count_agg", "user_id", False, None, None),
    ("cpu_cores", "Provisioned CPU cores", "latest_agg", "cores", False, None, None),
    ("gpu_instances", "GPU instances", "weighted_sum_agg", "instances", True, None, None),
    ("llm_tokens", "LLM tokens", "sum_agg", "tokens", False, ("ceil", 0),
     {"model": ["small", "large"]}),
)  # fmt: skip

# code, name, interval, amount_cents, trial days, charges: (metric, model, properties)
_PLANS: tuple[tuple[Any, ...], ...] = (
    ("starter", "Starter", "monthly", 2900, 14.0, (
        ("api_calls", "standard", {"amount": "0.002"}),
        ("storage_gb", "standard", {"amount": "0.10"}),
        ("active_users", "standard", {"amount": "1.50"}),
    )),
    ("growth", "Growth", "monthly", 9900, 0.0, (
        ("api_calls", "standard", {"amount": "0.0015"}),
        ("storage_gb", "graduated", {"graduated_ranges": [
            {"from_value": 0, "to_value": 100, "flat_amount": "0", "per_unit_amount": "0.08"},
            {"from_value": 101, "to_value": None, "flat_amount": "5", "per_unit_amount": "0.05"},
        ]}),
        ("active_users", "standard", {"amount": "1.20"}),
        ("seats", "standard", {"amount": "12"}),
        ("llm_tokens", "package", {"amount": "0.02", "package_size": 1000, "free_units": 10000}),
    )),
    ("scale", "Scale", "monthly", 29900, 0.0, (
        ("api_calls", "standard", {"amount": "0.001"}),
        ("storage_gb", "standard", {"amount": "0.05"}),
        ("seats", "standard", {"amount": "10"}),
        ("cpu_cores", "volume", {"volume_ranges": [
            {"from_value": 0, "to_value": 8, "flat_amount": "0", "per_unit_amount": "20"},
            {"from_value": 9, "to_value": None, "flat_amount": "0", "per_unit_amount": "15"},
        ]}),
        ("gpu_instances", "standard", {"amount": "250"}),
        ("llm_tokens", "package", {"amount": "0.015", "package_size": 1000, "free_units": 50000}),
    )),
    ("starter_yearly", "Starter (yearly)", "yearly", 29000, 14.0, (
        ("api_calls", "standard", {"amount": "0.002"}),
        ("storage_gb", "standard", {"amount": "0.09"}),
        ("active_users", "standard", {"amount": "1.40"}),
    )),
    ("growth_yearly", "Growth (yearly)", "yearly", 99000, 0.0, (
        ("api_calls", "standard", {"amount": "0.0012"}),
        ("storage_gb", "standard", {"amount": "0.07"}),
        ("active_users", "standard", {"amount": "1.10"}),
        ("seats", "standard", {"amount": "11"}),
        ("llm_tokens", "package", {"amount": "0.018", "package_size": 1000, "free_units": 20000}),
    )),
    ("enterprise_yearly", "Enterprise (yearly)", "yearly", 480000, 0.0, (
        ("api_calls", "standard", {"amount": "0.0008"}),
        ("storage_gb", "standard", {"amount": "0.04"}),
        ("seats", "standard", {"amount": "9"}),
        ("cpu_cores", "standard", {"amount": "14"}),
        ("gpu_instances", "standard", {"amount": "220"}),
        ("llm_tokens", "package", {"amount": "0.012", "package_size": 1000, "free_units": 100000}),
    )),
)  # fmt: skip

# code, name, type, amount_cents | percentage, frequency, duration, expiration days, terminated
_COUPONS: tuple[tuple[Any, ...], ...] = (
    ("welcome_10", "Welcome 10 EUR", "fixed_amount", 1000, "once", None, None, False),
    ("spring_20", "Spring 20%", "percentage", "20.0", "recurring", 3, 420, False),
    ("loyalty_5", "Loyalty 5%", "percentage", "5.0", "forever", None, None, False),
    ("launch_50", "Launch 50 EUR", "fixed_amount", 5000, "once", None, None, True),
    ("startup_credit", "Startup programme", "fixed_amount", 50000, "recurring", 6, None, False),
)

_ADD_ONS = (
    ("setup_fee", "Setup fee", 50000, "One-time platform setup", "vat_fr"),
    ("onboarding", "Onboarding package", 150000, "Guided onboarding, 4 sessions", None),
    ("premium_support", "Premium support", 30000, None, None),
    ("data_migration", "Data migration", 80000, "Import of historical data", "vat_fr"),
)


class _Catalog:
    """The organisation's catalog; depends only on the seed (timestamps on the anchor)."""

    def __init__(self, seed: int, anchor: datetime) -> None:
        self.rng = random.Random(f"lago-sandbox:{seed}:catalog")
        self.new_id = _Ids(self.rng)
        self.start = anchor - timedelta(days=760)
        self.clock = self.start
        self.taxes: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.plans: dict[str, dict[str, Any]] = {}
        self.coupons: dict[str, dict[str, Any]] = {}
        self.add_ons: dict[str, dict[str, Any]] = {}

    def _tick(self, hours: float = 6.0) -> datetime:
        self.clock += timedelta(seconds=int(self.rng.uniform(0.2, 1.0) * hours * 3600) + 1)
        return self.clock

    def fill(self, org: Org) -> None:
        rng, new_id = self.rng, self.new_id
        for code, name, rate, description, organization_wide in _TAXES:
            self.taxes[code] = o.tax_object(
                new_id,
                self._tick(),
                code,
                name,
                rate,
                description=description,
                applied_to_organization=organization_wide,
            )
        for code, name, aggregation, field, recurring, rounding, filters in _METRICS:
            self.metrics[code] = o.complete(
                "billable_metrics",
                {
                    "code": code,
                    "name": name,
                    "description": f"{name}, aggregated with {aggregation}",
                    "aggregation_type": aggregation,
                    "field_name": field,
                    "recurring": recurring,
                    "rounding_function": rounding[0] if rounding else None,
                    "rounding_precision": rounding[1] if rounding else None,
                    "filters": [
                        {"key": key, "values": list(values)}
                        for key, values in (filters or {}).items()
                    ],
                },
                now=self._tick(),
                new_id=new_id,
            )
        for code, name, interval, amount, trial, charges in _PLANS:
            created = self._tick(24)
            plan_id = new_id()
            fields: dict[str, Any] = {
                "lago_id": plan_id,
                "code": code,
                "name": name,
                "invoice_display_name": name,
                "description": f"{name} plan, billed {interval}",
                "interval": interval,
                "amount_cents": amount,
                "trial_period": trial,
                "bill_charges_monthly": True if interval == "yearly" else None,
                # What lago-api stores for a yearly plan created without the option.
                "bill_fixed_charges_monthly": False if interval == "yearly" else None,
                "charges": [
                    o.charge_object(
                        new_id,
                        created,
                        self.metrics[metric],
                        model,
                        dict(properties),
                        invoice_display_name=self.metrics[metric]["name"],
                    )
                    for metric, model, properties in charges
                ],
            }
            if code == "enterprise_yearly":
                fields["minimum_commitment"] = {
                    "lago_id": new_id(),
                    "plan_code": code,
                    "amount_cents": 1_200_000,
                    "invoice_display_name": "Minimum commitment",
                    "interval": "yearly",
                    "created_at": o.iso(created),
                    "updated_at": o.iso(created),
                    "taxes": [],
                }
                fields["metadata"] = {"sales_owner": "enterprise-team"}
            if code == "scale":
                fields["usage_thresholds"] = [
                    {
                        "lago_id": new_id(),
                        "threshold_display_name": "Usage over 1,000 EUR",
                        "amount_cents": 100_000,
                        "recurring": True,
                        "created_at": o.iso(created),
                        "updated_at": o.iso(created),
                    }
                ]
            self.plans[code] = o.complete("plans", fields, now=created, new_id=new_id)
        for code, name, kind, value, frequency, duration, expires, terminated in _COUPONS:
            created = self._tick(48)
            fixed = kind == "fixed_amount"
            self.coupons[code] = o.complete(
                "coupons",
                {
                    "code": code,
                    "name": name,
                    "description": None if rng.random() < 0.5 else f"{name} coupon",
                    "coupon_type": kind,
                    "amount_cents": value if fixed else None,
                    "amount_currency": o.DEFAULT_CURRENCY if fixed else None,
                    "percentage_rate": None if fixed else value,
                    "frequency": frequency,
                    "frequency_duration": duration,
                    "reusable": code != "launch_50",
                    "limited_plans": code == "startup_credit",
                    "plan_codes": ["starter", "growth"] if code == "startup_credit" else [],
                    "expiration": "time_limit" if expires else "no_expiration",
                    "expiration_at": o.iso(created + timedelta(days=expires)) if expires else None,
                    "terminated_at": o.iso(created + timedelta(days=90)) if terminated else None,
                },
                now=created,
                new_id=new_id,
            )
        for code, name, amount, description, tax in _ADD_ONS:
            self.add_ons[code] = o.complete(
                "add_ons",
                {
                    "code": code,
                    "name": name,
                    "invoice_display_name": name if description else None,
                    "amount_cents": amount,
                    "description": description,
                    "taxes": [dict(self.taxes[tax])] if tax else [],
                },
                now=self._tick(24),
                new_id=new_id,
            )
        org["taxes"] = list(self.taxes.values())
        org["billable_metrics"] = list(self.metrics.values())
        org["plans"] = list(self.plans.values())
        org["coupons"] = list(self.coupons.values())
        org["add_ons"] = list(self.add_ons.values())


# ----------------------------------------------------------------------------- customers

_COMPANY_FIRST = (
    "Acme", "Blue", "Nimbus", "Quantum", "Polar", "Silver", "Bright", "Vertex", "Cobalt",
    "Harbor", "Maple", "Orbit", "Pixel", "Summit", "Tidal", "Zephyr", "Lumen", "Granite",
)  # fmt: skip
_COMPANY_SECOND = (
    "Analytics", "Logistics", "Labs", "Robotics", "Health", "Media", "Foods", "Energy",
    "Systems", "Studio", "Finance", "Networks", "Mobility", "Retail",
)  # fmt: skip
_SUFFIXES = ("SAS", "GmbH", "S.L.", "Inc.", "Ltd", "B.V.")
_FIRST_NAMES = ("Alice", "Bruno", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines")
_LAST_NAMES = ("Martin", "Schmidt", "García", "Smith", "Jansen", "Dubois", "Rossi", "Novak")
# country, city, zipcode, state, timezone, tax code, street, suffix index, locale
_PLACES = (
    ("FR", "Paris", "75002", None, "Europe/Paris", "vat_fr", "12 rue de la Paix", 0, "fr"),
    ("DE", "Berlin", "10115", None, "Europe/Berlin", "vat_de", "Invalidenstraße 5", 1, "de"),
    ("ES", "Madrid", "28013", None, "Europe/Madrid", "vat_es", "Calle Mayor 10", 2, "es"),
    ("US", "New York", "10001", "NY", "America/New_York", "us_sales_ny", "350 5th Ave", 3, "en"),
    ("GB", "London", "EC1A 1BB", None, "Europe/London", "exempt", "1 Long Lane", 4, "en"),
    ("NL", "Amsterdam", "1012 JS", None, "Europe/Amsterdam", "exempt", "Damrak 70", 5, "en"),
)
_METADATA_KEYS = ("crm_id", "segment", "account_manager", "contract_ref", "region", "hubspot_id")
_SEGMENTS = ("smb", "mid-market", "enterprise", "startup")
# What happens to each customer, cycling; index 0 is always a plain long-lived active one.
_ROLES = (
    "active",
    "upgrade",
    "pending",
    "churned",
    "active",
    "downgrade",
    "active",
    "canceled",
    "addon",
    "active",
)
_MONTHLY_PLANS = ("starter", "growth", "scale")
_YEARLY_PLANS = ("starter_yearly", "growth_yearly", "enterprise_yearly")
_PROVIDERS = (
    ("stripe", "stripe_prod", ["card", "sepa_debit"]),
    ("gocardless", "gocardless_eu", None),
    ("adyen", "adyen_main", None),
)
_CREDIT_NOTE_REASONS = (
    "duplicated_charge",
    "product_unsatisfactory",
    "order_change",
    "order_cancellation",
    "fraudulent_charge",
    "other",
)


def _cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1)))


class _People:
    """Customers and everything that belongs to them."""

    def __init__(self, seed: int, anchor: datetime, catalog: _Catalog, org: Org) -> None:
        self.rng = random.Random(f"lago-sandbox:{seed}:customers")
        self.new_id = _Ids(self.rng)
        self.anchor = anchor
        self.catalog = catalog
        self.org = org
        self.invoice_sequence = 0
        self.credit_note_sequence = 0
        self.earliest = anchor - timedelta(days=700)
        self.coupon_count = 0
        self.wallet_count = 0
        self.special_pool: list[dict[str, Any]] = []
        self.paid_invoices: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    # -- customers -------------------------------------------------------------------

    def add_customer(self, index: int, count: int) -> None:
        rng, new_id = self.rng, self.new_id
        sequence = index + 1
        role = _ROLES[index % len(_ROLES)]
        span = (self.anchor - timedelta(days=12) - self.earliest).total_seconds()
        if index == 0:
            created = self.earliest + timedelta(seconds=int(rng.random() * 86400))
        elif index % 10 == 9 and self.org["customers"]:
            # imported in bulk with the previous one: the same created_at (a tie)
            created = o.parse_iso(self.org["customers"][-1]["created_at"])
        else:
            # one slot of the history per customer, so sequential_id follows created_at
            slot = span / max(count, 1)
            created = self.earliest + timedelta(seconds=int((index + rng.random()) * slot))
        place = rng.choice(_PLACES)
        country, city, zipcode, province, tz, tax_code, street, suffix, locale = place
        individual = rng.random() < 0.15
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        company = f"{rng.choice(_COMPANY_FIRST)} {rng.choice(_COMPANY_SECOND)}"
        slug = company.lower().replace(" ", "-")
        name = f"{first} {last}" if individual else f"{company} {_SUFFIXES[suffix]}"
        external_id = f"cust_{sequence:05d}"
        updated = created + timedelta(
            seconds=int(rng.random() * (self.anchor - created).total_seconds() * 0.9)
        )
        provider = rng.choice(_PROVIDERS) if rng.random() < 0.85 else None
        billing: dict[str, Any] = {
            "invoice_grace_period": rng.choice((0, 0, 0, 3)),
            "document_locale": locale,
        }
        if provider is not None:
            billing.update(
                payment_provider=provider[0],
                payment_provider_code=provider[1],
                provider_customer_id=f"{provider[0][:3]}_{rng.getrandbits(48):012x}",
                sync=True,
                sync_with_provider=True,
                provider_payment_methods=provider[2],
            )
        metadata = [
            {
                "lago_id": new_id(),
                "key": key,
                "value": self._metadata_value(key, sequence),
                "display_in_invoice": rng.random() < 0.3,
                "created_at": o.iso(created),
            }
            for key in rng.sample(_METADATA_KEYS, rng.randint(0, 5))
        ]
        address = {
            "address_line1": street,
            "address_line2": None if rng.random() < 0.7 else f"Floor {rng.randint(1, 9)}",
            "city": city,
            "country": country,
            "state": province,
            "zipcode": zipcode,
        }
        customer = o.complete(
            "customers",
            {
                "sequential_id": sequence,
                "external_id": external_id,
                "name": name,
                "firstname": first if individual else None,
                "lastname": last if individual else None,
                "customer_type": "individual" if individual else "company",
                "legal_name": None if individual else name,
                "legal_number": None if individual else f"{rng.randint(10**8, 10**9 - 1)}",
                "tax_identification_number": None
                if individual or country == "US"
                else f"{country}{rng.randint(10**9, 10**10 - 1)}",
                "email": f"{first.lower()}.{last.lower()}@example.com".replace("é", "e").replace(
                    "í", "i"
                )
                if individual
                else f"billing@{slug}.example.com",
                "phone": None if rng.random() < 0.5 else f"+{rng.randint(10**9, 10**10 - 1)}",
                "url": None if individual else f"https://{slug}.example.com",
                "currency": o.DEFAULT_CURRENCY,
                "timezone": tz if rng.random() < 0.6 else None,
                "net_payment_term": rng.choice((None, None, 15, 30)),
                "created_at": o.iso(created),
                "updated_at": o.iso(updated),
                "billing_configuration": billing,
                "shipping_address": address if rng.random() < 0.6 else {},
                "metadata": metadata,
                "taxes": [dict(self.catalog.taxes[tax_code])],
                **{key: value for key, value in address.items()},
            },
            now=created,
            new_id=new_id,
        )
        customer["applicable_timezone"] = customer["timezone"] or "UTC"
        if rng.random() < 0.1:
            customer["integration_customers"] = [
                {
                    "lago_id": new_id(),
                    "type": "hubspot",
                    "integration_code": "hubspot_main",
                    "external_customer_id": f"{rng.randint(10**9, 10**10 - 1)}",
                    "sync_with_provider": True,
                    "targeted_object": "companies",
                    "email": customer["email"],
                }
            ]
        self.org["customers"].append(customer)
        snapshot = _clone({key: value for key, value in customer.items() if key != "taxes"})
        state = _CustomerState(customer, snapshot, tax=self.catalog.taxes[tax_code])
        self._subscriptions(index, role, state, created)
        self._applied_coupon(state)
        self._wallet(state)
        self._invoices(state)

    def _metadata_value(self, key: str, sequence: int) -> str:
        rng = self.rng
        if key == "crm_id":
            return f"0015g00000{rng.getrandbits(24):06X}"
        if key == "segment":
            return rng.choice(_SEGMENTS)
        if key == "account_manager":
            return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        if key == "contract_ref":
            return f"CTR-{2024 + sequence % 3}-{sequence:04d}"
        if key == "region":
            return rng.choice(("emea", "amer", "apac"))
        return str(rng.randint(10**8, 10**9 - 1))

    # -- subscriptions ---------------------------------------------------------------

    def _subscription(
        self,
        state: _CustomerState,
        external_id: str,
        plan_code: str,
        status: str,
        start: datetime,
        *,
        created: datetime | None = None,
        end: datetime | None = None,
        name: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        rng = self.rng
        plan = self.catalog.plans[plan_code]
        customer = state.customer
        created = created or start
        anniversary = rng.random() < 0.25
        started = None
        if status in ("active", "terminated"):
            started = o.iso_ms(start + timedelta(milliseconds=rng.randint(0, 999)))
        fields: dict[str, Any] = {
            "external_id": external_id,
            "lago_customer_id": customer["lago_id"],
            "external_customer_id": customer["external_id"],
            "billing_time": "anniversary" if anniversary else "calendar",
            "name": name,
            "plan_code": plan_code,
            "plan_amount_cents": plan["amount_cents"],
            "plan_amount_currency": plan["amount_currency"],
            "status": status,
            "created_at": o.iso(created),
            "subscription_at": o.iso(start),
            "started_at": started,
            "activated_at": o.iso(start) if started else None,
            "terminated_at": o.iso(end) if status == "terminated" and end else None,
            "canceled_at": o.iso(end) if status == "canceled" and end else None,
        }
        if plan["trial_period"] and started:
            fields["trial_ended_at"] = o.iso(start + timedelta(days=plan["trial_period"]))
        if status == "active":
            period = _billing_period(start, self.anchor, plan["interval"], anniversary)
            fields["current_billing_period_started_at"] = o.iso(period[0])
            fields["current_billing_period_ending_at"] = o.iso(period[1])
        fields.update(extra)
        subscription = o.complete("subscriptions", fields, now=created, new_id=self.new_id)
        self.org["subscriptions"].append(subscription)
        if status in ("active", "terminated"):
            state.billed.append((subscription, start, end or self.anchor))
        return subscription

    def _subscriptions(
        self, index: int, role: str, state: _CustomerState, created: datetime
    ) -> None:
        rng = self.rng
        sequence = state.customer["sequential_id"]
        main = f"sub_{sequence:05d}"
        start = created + timedelta(seconds=rng.randint(600, 3 * 86400))
        start = min(start, self.anchor - timedelta(days=2))
        yearly = rng.random() < 0.25
        plan = rng.choice(_YEARLY_PLANS if yearly else _MONTHLY_PLANS)
        name = rng.choice((None, "Production", "Main workspace", state.customer["name"]))
        if role == "upgrade":
            switch = start + (self.anchor - start) * rng.uniform(0.4, 0.8)
            switch = switch.replace(microsecond=0)
            self._subscription(state, main, "starter", "terminated", start, end=switch, name=name)
            self._subscription(
                state,
                main,
                rng.choice(("growth", "scale")),
                "active",
                switch,
                name=name,
                previous_plan_code="starter",
            )
        elif role == "downgrade":
            period = _billing_period(start, self.anchor, "monthly", False)
            next_start = period[1] + timedelta(seconds=1)
            self._subscription(
                state,
                main,
                "scale",
                "active",
                start,
                name=name,
                next_plan_code="growth",
                downgrade_plan_date=o.iso_date(next_start),
            )
            self._subscription(
                state,
                main,
                "growth",
                "pending",
                next_start,
                created=self.anchor - timedelta(seconds=rng.randint(3600, 5 * 86400)),
                name=name,
                previous_plan_code="scale",
            )
        elif role == "churned":
            end = self.anchor - timedelta(seconds=rng.randint(2 * 86400, 60 * 86400))
            if end <= start:
                end = start + (self.anchor - start) / 2
            end = end.replace(microsecond=0)
            self._subscription(state, main, plan, "terminated", start, end=end, name=name)
            later = end - timedelta(seconds=rng.randint(3600, 86400))
            self._subscription(
                state,
                f"{main}_renewal",
                plan,
                "canceled",
                end + timedelta(days=30),
                created=max(later, start + timedelta(seconds=60)),
                end=end,
            )
        else:
            self._subscription(state, main, plan, "active", start, name=name)
        if role == "pending" or (role == "active" and index % 20 == 14):
            created_at = self.anchor - timedelta(seconds=rng.randint(3600, 10 * 86400))
            self._subscription(
                state,
                f"{main}_b",
                rng.choice(_MONTHLY_PLANS),
                "pending",
                self.anchor + timedelta(days=rng.randint(3, 45)),
                created=created_at,
                name="Second workspace",
            )
        if role == "canceled":
            created_at = start + (self.anchor - start) * rng.uniform(0.2, 0.6)
            created_at = created_at.replace(microsecond=0)
            self._subscription(
                state,
                f"{main}_trial",
                "growth",
                "canceled",
                created_at + timedelta(days=14),
                created=created_at,
                end=created_at + timedelta(days=rng.randint(1, 10)),
            )

    # -- coupons and wallets ---------------------------------------------------------

    def _applied_coupon(self, state: _CustomerState) -> None:
        rng = self.rng
        if state.customer["sequential_id"] % 4 != 2 or not state.billed:
            return
        self.coupon_count += 1
        codes = ("welcome_10", "spring_20", "loyalty_5", "launch_50", "startup_credit")
        coupon = self.catalog.coupons[codes[self.coupon_count % len(codes)]]
        customer = state.customer
        # before the first subscription starts (at least 600 s after the customer)
        created = o.parse_iso(customer["created_at"]) + timedelta(seconds=rng.randint(60, 500))
        fixed = coupon["coupon_type"] == "fixed_amount"
        applied = o.complete(
            "applied_coupons",
            {
                "lago_coupon_id": coupon["lago_id"],
                "coupon_code": coupon["code"],
                "coupon_name": coupon["name"],
                "coupon_status": "terminated" if coupon["terminated_at"] else "active",
                "lago_customer_id": customer["lago_id"],
                "external_customer_id": customer["external_id"],
                "status": "active",
                "amount_cents": coupon["amount_cents"] if fixed else None,
                "amount_cents_remaining": coupon["amount_cents"] if fixed else None,
                "amount_currency": coupon["amount_currency"] if fixed else None,
                "percentage_rate": coupon["percentage_rate"],
                "frequency": coupon["frequency"],
                "frequency_duration": coupon["frequency_duration"],
                "frequency_duration_remaining": coupon["frequency_duration"],
                "expiration_at": coupon["expiration_at"],
                "created_at": o.iso(created),
                "terminated_at": None,
            },
            now=created,
            new_id=self.new_id,
        )
        self.org["applied_coupons"].append(applied)
        state.coupon = (applied, coupon)

    def _wallet(self, state: _CustomerState) -> None:
        rng, new_id = self.rng, self.new_id
        if state.customer["sequential_id"] % 3 != 2:
            return
        self.wallet_count += 1
        customer = state.customer
        created = o.parse_iso(customer["created_at"]) + timedelta(
            seconds=rng.randint(3600, 20 * 86400)
        )
        if created >= self.anchor:
            created = self.anchor - timedelta(hours=1)
        terminated = self.wallet_count % 4 == 2
        wallet = o.complete(
            "wallets",
            {
                "lago_customer_id": customer["lago_id"],
                "external_customer_id": customer["external_id"],
                "status": "terminated" if terminated else "active",
                "name": "Prepaid credits",
                "code": "prepaid",
                "priority": 50,
                "rate_amount": "1.0",
                "created_at": o.iso(created),
                "terminated_at": None,
                "invoice_requires_successful_payment": rng.random() < 0.3,
                "applies_to": {"fee_types": ["charge"], "billable_metric_codes": []},
                "metadata": {"purpose": "usage prepayment"} if rng.random() < 0.5 else None,
            },
            now=created,
            new_id=new_id,
        )
        if rng.random() < 0.5:
            wallet["recurring_transaction_rules"] = [
                {
                    "lago_id": new_id(),
                    "trigger": "interval",
                    "method": "fixed",
                    "interval": "monthly",
                    "status": "active",
                    "threshold_credits": "0.0",
                    "paid_credits": "100.0",
                    "granted_credits": "0.0",
                    "grants_target_top_up": False,
                    "started_at": o.iso(created),
                    "target_ongoing_balance": None,
                    "created_at": o.iso(created),
                    "expiration_at": None,
                    "invoice_requires_successful_payment": False,
                    "transaction_metadata": [],
                    "transaction_name": "Monthly top-up",
                    "ignore_paid_top_up_limits": False,
                }
            ]
        self.org["wallets"].append(wallet)
        state.wallet = wallet
        state.wallet_terminated_at = (
            created + (self.anchor - created) * rng.uniform(0.5, 0.9) if terminated else None
        )

    def _wallet_transaction(
        self, state: _CustomerState, when: datetime, **fields: Any
    ) -> dict[str, Any]:
        wallet = state.wallet
        assert wallet is not None
        transaction = o.complete(
            "wallet_transactions",
            {
                "lago_wallet_id": wallet["lago_id"],
                "billing_entity_code": wallet["billing_entity_code"],
                "created_at": o.iso(when),
                **fields,
            },
            now=when,
            new_id=self.new_id,
        )
        self.org["wallet_transactions"].append(transaction)
        return transaction

    # -- invoices ----------------------------------------------------------------------

    def _invoice(
        self,
        state: _CustomerState,
        issued: datetime,
        invoice_type: str,
        fees: list[dict[str, Any]],
        *,
        coupons_cents: int = 0,
        prepaid_cents: int = 0,
    ) -> dict[str, Any]:
        rng = self.rng
        customer = state.customer
        self.invoice_sequence += 1
        state.invoice_count += 1
        created = issued + timedelta(seconds=rng.randint(60, 4 * 3600))
        fees_cents = sum(fee["amount_cents"] for fee in fees)
        coupons_cents = min(coupons_cents, fees_cents)
        rate = state.tax["rate"]
        taxable = fees_cents - coupons_cents
        taxes_cents = int((Decimal(taxable) * Decimal(str(rate)) / 100).quantize(Decimal(1)))
        prepaid_cents = min(prepaid_cents, taxable + taxes_cents)
        term = customer["net_payment_term"] or 0
        invoice = o.complete(
            "invoices",
            {
                "sequential_id": self.invoice_sequence,
                "number": f"{o.ORGANIZATION_PREFIX}-{customer['sequential_id']:03d}-"
                f"{state.invoice_count:03d}",
                "issuing_date": o.iso_date(issued),
                "payment_due_date": o.iso_date(issued + timedelta(days=term)),
                "net_payment_term": term,
                "invoice_type": invoice_type,
                "status": "finalized",
                "payment_status": "succeeded",
                "currency": o.DEFAULT_CURRENCY,
                "fees_amount_cents": fees_cents,
                "coupons_amount_cents": coupons_cents,
                "taxes_amount_cents": taxes_cents,
                "prepaid_credit_amount_cents": prepaid_cents,
                "prepaid_granted_credit_amount_cents": 0,
                "prepaid_purchased_credit_amount_cents": prepaid_cents,
                "created_at": o.iso(created),
                "updated_at": o.iso(created),
                "customer": _clone(state.snapshot),
            },
            now=created,
            new_id=self.new_id,
        )
        if taxes_cents or rate == 0:
            invoice["applied_taxes"] = [
                {
                    "lago_id": self.new_id(),
                    "lago_tax_id": state.tax["lago_id"],
                    "tax_name": state.tax["name"],
                    "tax_code": state.tax["code"],
                    "tax_rate": state.tax["rate"],
                    "tax_description": state.tax["description"],
                    "amount_cents": taxes_cents,
                    "amount_currency": o.DEFAULT_CURRENCY,
                    "created_at": o.iso(created),
                    "lago_invoice_id": invoice["lago_id"],
                    "fees_amount_cents": taxable,
                }
            ]
        if rng.random() < 0.15:
            invoice["metadata"] = [
                {
                    "lago_id": self.new_id(),
                    "key": "po_number",
                    "value": f"PO-{rng.randint(10000, 99999)}",
                    "created_at": o.iso(created),
                }
            ]
        for position, fee in enumerate(fees):
            # Fees are written one after the other; the first two land in the same second.
            fee["lago_invoice_id"] = invoice["lago_id"]
            fee["created_at"] = o.iso(created + timedelta(seconds=max(0, position - 1)))
            self._tax_fee(fee, state, created)
        state.invoices.append((invoice, fees))
        self.org["invoices"].append(invoice)
        self.org["fees"].extend(fees)
        return invoice

    def _tax_fee(self, fee: dict[str, Any], state: _CustomerState, created: datetime) -> None:
        rate = state.tax["rate"]
        taxes = int((Decimal(fee["amount_cents"]) * Decimal(str(rate)) / 100).quantize(Decimal(1)))
        fee["taxes_rate"] = rate
        fee["taxes_amount_cents"] = taxes
        fee["taxes_precise_amount"] = o.decimal_str(Decimal(taxes) / 100)
        fee["total_amount_cents"] = fee["amount_cents"] + taxes
        fee["precise_total_amount"] = o.decimal_str(Decimal(fee["amount_cents"] + taxes) / 100)
        fee["applied_taxes"] = [
            {
                "lago_id": self.new_id(),
                "lago_fee_id": fee["lago_id"],
                "lago_tax_id": state.tax["lago_id"],
                "tax_name": state.tax["name"],
                "tax_code": state.tax["code"],
                "tax_rate": rate,
                "tax_description": state.tax["description"],
                "amount_cents": taxes,
                "amount_currency": o.DEFAULT_CURRENCY,
                "created_at": o.iso(created),
            }
        ]

    def _fee(self, state: _CustomerState, now: datetime, **fields: Any) -> dict[str, Any]:
        customer = state.customer
        fields.setdefault("lago_customer_id", customer["lago_id"])
        fields.setdefault("external_customer_id", customer["external_id"])
        return o.complete("fees", fields, now=now, new_id=self.new_id)

    def _subscription_fees(
        self,
        state: _CustomerState,
        subscription: dict[str, Any],
        period: tuple[datetime, datetime],
        usage_period: tuple[datetime, datetime] | None,
        with_plan_fee: bool,
    ) -> list[dict[str, Any]]:
        rng = self.rng
        plan = self.catalog.plans[subscription["plan_code"]]
        common = {
            "lago_subscription_id": subscription["lago_id"],
            "external_subscription_id": subscription["external_id"],
            "amount_currency": plan["amount_currency"],
        }
        fees = []
        if with_plan_fee:
            fees.append(
                self._fee(
                    state,
                    period[0],
                    **common,
                    amount_cents=plan["amount_cents"],
                    units="1.0",
                    events_count=None,
                    pay_in_advance=True,
                    from_date=o.iso(period[0]),
                    to_date=o.iso(period[1]),
                    item={
                        "type": "subscription",
                        "code": plan["code"],
                        "name": plan["name"],
                        "invoice_display_name": plan["invoice_display_name"],
                        "lago_item_id": subscription["lago_id"],
                        "item_type": "Subscription",
                    },
                    amount_details={"plan_amount_cents": plan["amount_cents"]},
                )
            )
        if usage_period is None:
            return fees
        scale = state.scale
        for charge in plan["charges"]:
            metric = self.catalog.metrics[charge["billable_metric_code"]]
            units, count = _fake_usage(rng, metric["aggregation_type"], scale)
            amount = o.charge_amount(charge["charge_model"], charge["properties"], units)
            fees.append(
                self._fee(
                    state,
                    usage_period[1],
                    **common,
                    lago_charge_id=charge["lago_id"],
                    amount_cents=_cents(amount),
                    precise_amount=o.decimal_str(amount.quantize(Decimal("0.000001"))),
                    units=o.decimal_str(units),
                    total_aggregated_units=o.decimal_str(units),
                    events_count=count,
                    pay_in_advance=False,
                    from_date=o.iso(usage_period[0]),
                    to_date=o.iso(usage_period[1]),
                    item={
                        "type": "charge",
                        "code": metric["code"],
                        "name": metric["name"],
                        "description": metric["description"],
                        "invoice_display_name": charge["invoice_display_name"],
                        "filters": None,
                        "lago_item_id": metric["lago_id"],
                        "item_type": "BillableMetric",
                        "grouped_by": {},
                    },
                )
            )
        return fees

    def _invoices(self, state: _CustomerState) -> None:
        rng = self.rng
        history_start = o.month_start(o.add_months(self.anchor, -_HISTORY_MONTHS))
        coupon_left = 0
        if state.coupon is not None:
            coupon_left = state.coupon[1]["amount_cents"] or 0
        uses_allowed = _coupon_uses(state.coupon[1]) if state.coupon is not None else 0
        for subscription, start, end in state.billed:
            plan = self.catalog.plans[subscription["plan_code"]]
            yearly = plan["interval"] == "yearly"
            month = o.month_start(max(start, history_start))
            while month < self.anchor and month <= end:
                next_month = o.add_months(month, 1)
                age = (month.year - start.year) * 12 + month.month - start.month
                first = age == 0
                period = (max(month, start), min(next_month, end) - timedelta(seconds=1))
                usage = (max(o.add_months(month, -1), start), month - timedelta(seconds=1))
                has_usage = not first and usage[0] < usage[1]
                with_plan_fee = not yearly or age % 12 == 0
                if with_plan_fee or has_usage:
                    fees = self._subscription_fees(
                        state, subscription, period, usage if has_usage else None, with_plan_fee
                    )
                    discount = 0
                    if state.coupon is not None and state.coupon_uses < uses_allowed:
                        coupon = state.coupon[1]
                        total = sum(fee["amount_cents"] for fee in fees)
                        if coupon["coupon_type"] != "fixed_amount":
                            discount = int(total * Decimal(coupon["percentage_rate"]) / 100)
                        elif coupon["frequency"] == "once":
                            # a fixed amount used once carries its remainder over
                            discount = min(coupon_left, total)
                            coupon_left -= discount
                        else:
                            discount = min(coupon["amount_cents"], total)
                    invoice = self._invoice(
                        state, max(month, start), "subscription", fees, coupons_cents=discount
                    )
                    if discount:
                        state.coupon_uses += 1
                        self._coupon_credit(state, invoice, discount)
                month = next_month
            if subscription["status"] == "active" and rng.random() < 0.1:
                when = start + timedelta(hours=2)
                add_on = self.catalog.add_ons[rng.choice(tuple(self.catalog.add_ons))]
                self._add_on_invoice(state, add_on, when, "add_on")
        if state.customer["sequential_id"] % 10 == 9 and state.billed:
            when = state.billed[0][1] + timedelta(hours=5)
            if when < self.anchor:
                self._add_on_invoice(state, self.catalog.add_ons["onboarding"], when, "one_off")
        if state.coupon is not None:
            self._close_coupon(state, coupon_left)
        self._wallet_history(state)
        self._statuses(state)

    def _close_coupon(self, state: _CustomerState, amount_left: int) -> None:
        """Bring the applied coupon up to date with the invoices it discounted."""
        assert state.coupon is not None
        applied, coupon = state.coupon
        once_fixed = coupon["coupon_type"] == "fixed_amount" and coupon["frequency"] == "once"
        if once_fixed:
            applied["amount_cents_remaining"] = amount_left
            used_up = amount_left == 0 and state.coupon_uses > 0
        else:
            used_up = state.coupon_uses >= _coupon_uses(coupon)
        if coupon["frequency"] == "recurring":
            applied["frequency_duration_remaining"] = max(
                0, coupon["frequency_duration"] - state.coupon_uses
            )
        if used_up and state.coupon_credits:
            last = max(
                (invoice for invoice, _ in state.invoices if invoice["coupons_amount_cents"]),
                key=lambda invoice: invoice["created_at"],
            )
            applied["status"] = "terminated"
            applied["terminated_at"] = o.iso(o.parse_iso(last["created_at"]) + timedelta(seconds=1))

    def _add_on_invoice(
        self, state: _CustomerState, add_on: dict[str, Any], when: datetime, kind: str
    ) -> None:
        fee = self._fee(
            state,
            when,
            amount_cents=add_on["amount_cents"],
            units="1.0",
            pay_in_advance=False,
            item={
                "type": "add_on",
                "code": add_on["code"],
                "name": add_on["name"],
                "description": add_on["description"],
                "invoice_display_name": add_on["invoice_display_name"] or add_on["name"],
                "lago_item_id": add_on["lago_id"],
                "item_type": "AddOn",
            },
        )
        self._invoice(state, when, kind, [fee])

    def _coupon_credit(self, state: _CustomerState, invoice: dict[str, Any], cents: int) -> None:
        assert state.coupon is not None
        applied, coupon = state.coupon
        applied["credits"].append(
            {
                "lago_id": self.new_id(),
                "amount_cents": cents,
                "amount_currency": o.DEFAULT_CURRENCY,
                "before_taxes": True,
                "item": {
                    "lago_item_id": coupon["lago_id"],
                    "type": "coupon",
                    "code": coupon["code"],
                    "name": coupon["name"],
                },
                "invoice": {"lago_id": invoice["lago_id"], "payment_status": "succeeded"},
            }
        )
        state.coupon_credits.append(applied["credits"][-1])

    def _wallet_history(self, state: _CustomerState) -> None:
        wallet = state.wallet
        if wallet is None:
            return
        rng = self.rng
        created = o.parse_iso(wallet["created_at"])
        purchased = Decimal(rng.choice((100, 200, 500, 1000)))
        granted = Decimal(rng.choice((0, 0, 25, 50)))
        fee = self._fee(
            state,
            created,
            amount_cents=int(purchased * 100),
            units=o.decimal_str(purchased),
            pay_in_advance=True,
            item={
                "type": "credit",
                "code": "credit",
                "name": "Prepaid credits",
                "invoice_display_name": "Prepaid credits",
                "lago_item_id": wallet["lago_id"],
                "item_type": "WalletTransaction",
            },
        )
        credit_invoice = self._invoice(state, created, "credit", [fee])
        inbound = self._wallet_transaction(
            state,
            created + timedelta(seconds=5),
            lago_invoice_id=credit_invoice["lago_id"],
            source="manual",
            transaction_status="purchased",
            transaction_type="inbound",
            status="settled",
            amount=o.decimal_str(purchased),
            credit_amount=o.decimal_str(purchased),
            settled_at=o.iso(created + timedelta(minutes=3)),
            name="Initial top-up",
            payment_method={"payment_method_type": "provider", "payment_method_id": self.new_id()},
        )
        fee["item"]["lago_item_id"] = inbound["lago_id"]
        if granted:
            self._wallet_transaction(
                state,
                created + timedelta(seconds=6),
                source="manual",
                transaction_status="granted",
                transaction_type="inbound",
                status="settled",
                amount=o.decimal_str(granted),
                credit_amount=o.decimal_str(granted),
                settled_at=o.iso(created + timedelta(seconds=6)),
                remaining_amount_cents=int(granted * 100),
                remaining_credit_amount=o.decimal_str(granted),
                name="Welcome credits",
                payment_method={"payment_method_type": "manual"},
                metadata=[{"key": "campaign", "value": "welcome"}],
            )
        balance = purchased + granted
        consumed = Decimal(0)
        last_consumed = None
        terminated_at = state.wallet_terminated_at
        for invoice, _ in state.invoices:
            issued = o.parse_iso(invoice["created_at"])
            if invoice["invoice_type"] != "subscription" or issued <= created or balance <= 0:
                continue
            if terminated_at is not None and issued >= terminated_at:
                continue
            due = Decimal(invoice["sub_total_including_taxes_amount_cents"]) / 100
            use = min(balance, due.quantize(Decimal("0.01")))
            if use <= 0:
                continue
            cents = int(use * 100)
            invoice["prepaid_credit_amount_cents"] = cents
            invoice["prepaid_purchased_credit_amount_cents"] = cents
            invoice["total_amount_cents"] = (
                invoice["sub_total_including_taxes_amount_cents"] - cents
            )
            balance -= use
            consumed += use
            last_consumed = issued
            self._wallet_transaction(
                state,
                issued + timedelta(seconds=1),
                lago_invoice_id=invoice["lago_id"],
                source="manual",
                transaction_status="invoiced",
                transaction_type="outbound",
                status="settled",
                amount=o.decimal_str(use),
                credit_amount=o.decimal_str(use),
                settled_at=o.iso(issued + timedelta(seconds=1)),
                payment_method={"payment_method_type": "manual"},
            )
        later = created + (self.anchor - created) * 0.5
        if rng.random() < 0.5 and terminated_at is None:
            self._wallet_transaction(
                state,
                later.replace(microsecond=0),
                source="interval" if wallet["recurring_transaction_rules"] else "manual",
                transaction_status="purchased",
                transaction_type="inbound",
                status=rng.choice(("pending", "failed")),
                amount="100.0",
                credit_amount="100.0",
                name="Top-up",
                payment_method={
                    "payment_method_type": "provider",
                    "payment_method_id": self.new_id(),
                },
            )
        balance_cents = int(balance * 100)
        wallet.update(
            credits_balance=o.decimal_str(balance),
            balance=o.decimal_str(balance),
            balance_cents=balance_cents,
            consumed_credits=o.decimal_str(consumed),
            ongoing_balance_cents=balance_cents,
            credits_ongoing_balance=o.decimal_str(balance),
            last_balance_sync_at=o.iso(last_consumed or created),
            last_consumed_credit_at=o.iso(last_consumed) if last_consumed else None,
        )
        if terminated_at is not None:
            wallet["status"] = "terminated"
            wallet["terminated_at"] = o.iso_ms(terminated_at)

    def _statuses(self, state: _CustomerState) -> None:
        """Set invoice and payment statuses, and issue credit notes, for one customer."""
        rng = self.rng
        grace = state.customer["billing_configuration"].get("invoice_grace_period", 0)
        this_month = o.month_start(self.anchor - timedelta(seconds=1))
        for invoice, fees in state.invoices:
            issued = o.parse_iso(invoice["issuing_date"])
            created = o.parse_iso(invoice["created_at"])
            recent = issued >= this_month
            if recent and grace and invoice["invoice_type"] == "subscription":
                invoice.update(status="draft", payment_status="pending")
                invoice["number"] = (
                    f"{o.ORGANIZATION_PREFIX}-{state.customer['sequential_id']:03d}-DRAFT"
                )
                invoice.pop("file_url", None)
                invoice["payment_due_date"] = invoice["issuing_date"]
            elif recent:
                invoice["payment_status"] = rng.choice(("pending", "pending", "succeeded"))
            else:
                roll = rng.random()
                if roll < 0.06:
                    invoice["payment_status"] = "failed"
                elif roll < 0.1:
                    invoice["payment_status"] = "pending"
            paid = invoice["payment_status"] == "succeeded"
            if invoice["status"] == "finalized" and not paid:
                due = o.parse_iso(invoice["payment_due_date"])
                invoice["payment_overdue"] = due < self.anchor
            if paid:
                when = created + timedelta(seconds=rng.randint(600, 5 * 86400))
                when = min(when, self.anchor - timedelta(seconds=1))
                invoice["updated_at"] = o.iso(when)
            for fee in fees:
                fee["payment_status"] = invoice["payment_status"]
                if paid:
                    fee["succeeded_at"] = invoice["updated_at"]
                elif invoice["payment_status"] == "failed":
                    fee["failed_at"] = invoice["updated_at"]
            for credit in state.coupon_credits:
                if credit["invoice"]["lago_id"] == invoice["lago_id"]:
                    credit["invoice"]["payment_status"] = invoice["payment_status"]
            if invoice["status"] == "finalized" and invoice["invoice_type"] == "subscription":
                self.special_pool.append(invoice)
                if paid and invoice["total_amount_cents"] > 0:
                    self.paid_invoices.append((invoice, fees))

    # -- organisation-wide finishing -------------------------------------------------

    def finish(self) -> None:
        """Spread special statuses and credit notes over the whole organisation."""
        rng = self.rng
        credited = self.paid_invoices[::9]
        credited_ids = {invoice["lago_id"] for invoice, _ in credited}
        pool = [
            invoice
            for invoice in self.special_pool
            if invoice["status"] == "finalized" and invoice["lago_id"] not in credited_ids
        ]
        rng.shuffle(pool)
        fees_by_invoice: dict[str, list[dict[str, Any]]] = {}
        for fee in self.org["fees"]:
            fees_by_invoice.setdefault(fee["lago_invoice_id"], []).append(fee)
        specials = ("voided", "failed", "pending", "generating", "open", "closed")
        count = max(1, len(pool) // 50) if len(pool) >= len(specials) else 0
        chosen = iter(pool)
        hidden_fees: set[str] = set()
        for status in specials:
            for invoice in itertools.islice(chosen, count):
                hidden_fees |= self._special_status(invoice, status, fees_by_invoice)
        if hidden_fees:
            self.org["fees"] = [
                fee for fee in self.org["fees"] if fee["lago_id"] not in hidden_fees
            ]
        # Credit notes on some paid invoices; one in four stays a draft (a tax error).
        for number, (invoice, fees) in enumerate(credited):
            self._credit_note(invoice, fees, draft=number % 4 == 3)

    def _special_status(
        self, invoice: dict[str, Any], status: str, fees_by_invoice: dict[str, list[dict[str, Any]]]
    ) -> set[str]:
        """Give ``invoice`` a special status; return the ids of fees that must go."""
        invoice["status"] = status
        invoice["payment_overdue"] = False  # only a finalized invoice can be overdue
        fees = fees_by_invoice.get(invoice["lago_id"], [])
        updated = o.parse_iso(invoice["created_at"]) + timedelta(hours=1)
        updated = min(updated, self.anchor - timedelta(seconds=1))
        if status == "voided":
            invoice["payment_status"] = "pending"
            invoice["voided_at"] = o.iso(updated)
        elif status in ("failed", "pending"):
            # failed: the tax provider refused; pending: waiting for it. Not yet payable.
            invoice["payment_status"] = "pending"
            invoice.pop("file_url", None)
        else:
            # Hidden from the list (generating/open/closed): no fees of their own.
            invoice["payment_status"] = "pending"
            invoice.pop("file_url", None)
            hidden = {fee["lago_id"] for fee in fees}
            invoice["updated_at"] = invoice["created_at"]
            return hidden
        for fee in fees:
            fee["payment_status"] = "pending"
            fee["succeeded_at"] = None
            fee["failed_at"] = None
        invoice["updated_at"] = o.iso(updated)
        return set()

    def _credit_note(
        self, invoice: dict[str, Any], fees: list[dict[str, Any]], draft: bool
    ) -> None:
        rng, new_id = self.rng, self.new_id
        self.credit_note_sequence += 1
        customer = invoice["customer"]
        paid_at = o.parse_iso(invoice["updated_at"])
        created = paid_at + timedelta(seconds=rng.randint(3600, 20 * 86400))
        created = min(created, self.anchor - timedelta(seconds=60))
        fee = max(fees, key=lambda item: item["amount_cents"])
        sub_total = max(1, fee["amount_cents"] * rng.choice((25, 50, 100)) // 100)
        rate = fee["taxes_rate"]
        taxes = int((Decimal(sub_total) * Decimal(str(rate)) / 100).quantize(Decimal(1)))
        total = sub_total + taxes
        refund = rng.random() < 0.4
        credit_note = o.complete(
            "credit_notes",
            {
                "sequential_id": self.credit_note_sequence,
                "number": f"{invoice['number']}-CN{self.credit_note_sequence:03d}",
                "lago_invoice_id": invoice["lago_id"],
                "invoice_number": invoice["number"],
                "issuing_date": o.iso_date(created),
                "credit_status": None if refund else rng.choice(("available", "consumed")),
                "refund_status": rng.choice(("succeeded", "pending")) if refund else None,
                "reason": rng.choice(_CREDIT_NOTE_REASONS),
                "description": rng.choice((None, "Goodwill gesture", "Billing error")),
                "currency": invoice["currency"],
                "total_amount_cents": total,
                "taxes_amount_cents": taxes,
                "taxes_rate": rate,
                "sub_total_excluding_taxes_amount_cents": sub_total,
                "balance_amount_cents": 0 if refund else total,
                "credit_amount_cents": 0 if refund else total,
                "refund_amount_cents": total if refund else 0,
                "created_at": o.iso(created),
                "updated_at": o.iso(created + timedelta(seconds=rng.randint(0, 3600))),
                "file_url": None
                if draft
                else f"https://lago.example.test/credit_notes/{self.credit_note_sequence}.pdf",
                "items": [
                    {
                        "lago_id": new_id(),
                        "amount_cents": sub_total,
                        "amount_currency": invoice["currency"],
                        "fee": _clone(fee),
                    }
                ],
                "applied_taxes": [
                    {
                        "lago_id": new_id(),
                        "lago_credit_note_id": None,
                        "lago_tax_id": tax["lago_tax_id"],
                        "tax_name": tax["tax_name"],
                        "tax_code": tax["tax_code"],
                        "tax_rate": tax["tax_rate"],
                        "tax_description": tax["tax_description"],
                        "amount_cents": taxes,
                        "amount_currency": invoice["currency"],
                        "base_amount_cents": sub_total,
                        "created_at": o.iso(created),
                    }
                    for tax in fee["applied_taxes"]
                ],
                "customer": _clone(
                    {
                        key: value
                        for key, value in customer.items()
                        if key != "integration_customers"
                    }
                ),
                "error_details": [
                    {
                        "lago_id": new_id(),
                        "error_code": "tax_error",
                        "details": {"tax_error": "taxDateTooFarInFuture"},
                    }
                ]
                if draft
                else None,
            },
            now=created,
            new_id=new_id,
        )
        for tax in credit_note["applied_taxes"]:
            tax["lago_credit_note_id"] = credit_note["lago_id"]
        if refund and credit_note["refund_status"] == "succeeded" and not draft:
            for refunded in (fee, credit_note["items"][0]["fee"]):
                refunded["refunded_at"] = credit_note["updated_at"]
                refunded["payment_status"] = "refunded"
        self.org["credit_notes"].append(credit_note)


class _CustomerState:
    """What is known about one customer while its history is generated."""

    def __init__(self, customer: dict[str, Any], snapshot: dict[str, Any], tax: dict[str, Any]):
        self.customer = customer
        self.snapshot = snapshot
        self.tax = tax
        self.billed: list[tuple[dict[str, Any], datetime, datetime]] = []
        self.invoices: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self.invoice_count = 0
        self.coupon: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.coupon_uses = 0
        self.coupon_credits: list[dict[str, Any]] = []
        self.wallet: dict[str, Any] | None = None
        self.wallet_terminated_at: datetime | None = None
        # how big a consumer the customer is (1-20), stable for its lago_id
        self.scale = 1 + sum(ord(char) for char in customer["lago_id"]) % 20


def _coupon_uses(coupon: dict[str, Any]) -> int:
    """How many invoices a coupon may discount."""
    if coupon["frequency"] == "once":
        return 1 if coupon["coupon_type"] == "percentage" else 10**6
    if coupon["frequency"] == "recurring":
        return int(coupon["frequency_duration"] or 1)
    return 10**6


def _billing_period(
    start: datetime, anchor: datetime, interval: str, anniversary: bool
) -> tuple[datetime, datetime]:
    """Return the billing period (first and last second) containing the instant before anchor."""
    now = anchor - timedelta(seconds=1)
    step = 12 if interval == "yearly" else 1
    if anniversary:
        origin = start.replace(hour=0, minute=0, second=0, microsecond=0)
        begin = origin
        while o.add_months(begin, step) <= now:
            begin = o.add_months(begin, step)
    elif step == 12:
        begin = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        begin = o.month_start(now)
    return begin, o.add_months(begin, step) - timedelta(seconds=1)


def _fake_usage(rng: random.Random, aggregation: str, scale: int) -> tuple[Decimal, int]:
    """Return plausible (units, events_count) of a past month for an invoice fee."""
    if aggregation == "count_agg":
        count = rng.randint(100, 4000) * scale
        return Decimal(count), count
    if aggregation == "sum_agg":
        count = rng.randint(20, 400) * scale
        return Decimal(rng.randint(100, 90000) * scale) / 100, count
    if aggregation == "max_agg":
        return Decimal(rng.randint(1, 12) + scale), rng.randint(5, 60)
    if aggregation == "unique_count_agg":
        return Decimal(rng.randint(5, 40) * scale), rng.randint(50, 900) * scale
    if aggregation == "latest_agg":
        return Decimal(rng.choice((2, 4, 8, 16))), rng.randint(1, 30)
    return Decimal(rng.randint(0, 300)) / 100, rng.randint(5, 80)


# ------------------------------------------------------------------------------- events


def _property_pool(metric: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Return the possible ``properties`` of one subscription's events of ``metric``.

    Events draw their properties from this pool, so many events share one dict: treat event
    properties as read-only (replace the dict to change it). Whole quantities are numeric
    strings and measures non-integral numbers, because the spec's
    ``oneOf [string, number, integer]`` rejects every JSON integer (an integer is also a
    number), although the server accepts both.
    """
    code = metric["code"]
    if code == "api_calls":
        regions = ("eu-west", "eu-west", "us-east", "ap-south")
        methods = ("GET", "GET", "GET", "POST", "DELETE")
        return [{"region": region, "method": method} for region in regions for method in methods]
    if code == "storage_gb":
        values = (round(0.05 + rng.random() * 12, 3) for _ in range(400))
        return [{"gb": value if value % 1 else value + 0.5} for value in values]
    if code == "seats":
        base = rng.randint(2, 40)
        return [{"seats": str(base + step)} for step in range(6)]
    if code == "active_users":
        users = rng.randint(5, 60)
        return [{"user_id": f"user_{rng.getrandbits(32):08x}"} for _ in range(users)]
    if code == "cpu_cores":
        return [{"cores": cores} for cores in ("2", "4", "4", "8", "8", "16")]
    if code == "gpu_instances":
        # Deltas: the first one must be an increase (see the walk in _events).
        return [{"instances": step} for step in ("1", "1", "-1", "2", "-1")]
    if code == "llm_tokens":
        models = ("small", "small", "large")
        return [
            {"tokens": str(50 + rng.randrange(8000)), "model": rng.choice(models)}
            for _ in range(600)
        ]
    field = metric.get("field_name")
    if field:
        return [{field: str(rng.randrange(100))} for _ in range(50)]
    return [{}]


def _events(
    seed: int, anchor: datetime, months: int, count: int, *, catalog: _Catalog, org: Org
) -> list[dict[str, Any]]:
    """Generate ``count`` events over the ``months`` months before the anchor."""
    if count <= 0:
        return []
    rng = random.Random(f"lago-sandbox:{seed}:events")
    window_start = o.add_months(anchor, -months)
    lo_ms = int((window_start - _EPOCH).total_seconds()) * 1000
    hi_ms = int((anchor - _EPOCH).total_seconds()) * 1000
    lives: list[tuple[dict[str, Any], int, int, float]] = []
    for subscription in org["subscriptions"]:
        if subscription["status"] not in ("active", "terminated"):
            continue
        begin = int((o.parse_iso(subscription["started_at"]) - _EPOCH).total_seconds() * 1000)
        end = hi_ms
        if subscription["terminated_at"]:
            end = int((o.parse_iso(subscription["terminated_at"]) - _EPOCH).total_seconds() * 1000)
        begin, end = max(begin, lo_ms), min(end, hi_ms)
        if end - begin < 60_000:
            continue
        weight = (end - begin) * rng.uniform(0.3, 3.0)
        lives.append((subscription, begin, end, weight))
    if not lives:
        return []
    shares = _apportion(count, [life[3] for life in lives])

    prefix = str(uuid.UUID(int=rng.getrandbits(128), version=4))[:24]
    day_prefix: dict[int, str] = {}
    minute_text: dict[int, str] = {}
    events: list[dict[str, Any]] = []
    append = events.append
    serial = 0
    for ordinal, ((subscription, begin, end, _), share) in enumerate(
        zip(lives, shares, strict=True)
    ):
        if not share:
            continue
        plan = catalog.plans[subscription["plan_code"]]
        metrics = [catalog.metrics[charge["billable_metric_code"]] for charge in plan["charges"]]
        pools = [_property_pool(metric, rng) for metric in metrics]
        sizes = [len(pool) for pool in pools]
        # A weighted sum is a running total of deltas: keep it from going below zero.
        walk = next(
            (
                i
                for i, metric in enumerate(metrics)
                if metric["aggregation_type"] == "weighted_sum_agg"
            ),
            -1,
        )
        running = 0
        codes = [metric["code"] for metric in metrics]
        weights = [6.0 if metric["aggregation_type"] == "count_agg" else 1.0 for metric in metrics]
        cumulative = [sum(weights[: i + 1]) for i in range(len(weights))]
        total_weight = cumulative[-1]
        picks = [bisect.bisect(cumulative, rng.random() * total_weight) for _ in range(share)]
        span = end - begin
        rand = rng.random
        stamps = sorted(begin + int(rand() * span) for _ in range(share))
        external_id = subscription["external_id"]
        tx_prefix = f"tx_{ordinal:04d}_"
        for k, (stamp, pick) in enumerate(zip(stamps, picks, strict=True)):
            day, rest = divmod(stamp, 86_400_000)
            head = day_prefix.get(day)
            if head is None:
                head = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
                day_prefix[day] = head
            seconds, millis = divmod(rest, 1000)
            minutes, second = divmod(seconds, 60)
            hour, minute = divmod(minutes, 60)
            ingested = stamp // 60_000 + 1  # stored in the next minute
            created = minute_text.get(ingested)
            if created is None:
                ingest_day, ingest_minute = divmod(ingested, 1440)
                ingest_head = day_prefix.get(ingest_day)
                if ingest_head is None:
                    ingest_head = (_EPOCH + timedelta(days=ingest_day)).strftime("%Y-%m-%dT")
                    day_prefix[ingest_day] = ingest_head
                created = f"{ingest_head}{ingest_minute // 60:02d}:{ingest_minute % 60:02d}:00Z"
                minute_text[ingested] = created
            properties = pools[pick][int(rand() * sizes[pick])]
            if pick == walk:
                step = int(properties["instances"])
                if running + step < 0:
                    properties = pools[pick][0]
                    step = 1
                running += step
            append(
                {
                    "lago_id": f"{prefix}{serial:012x}",
                    "transaction_id": f"{tx_prefix}{k:07d}",
                    "lago_customer_id": None,
                    "code": codes[pick],
                    "timestamp": f"{head}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z",
                    "precise_total_amount_cents": None,
                    "properties": properties,
                    "lago_subscription_id": None,
                    "external_subscription_id": external_id,
                    "created_at": created,
                }
            )
            serial += 1
    # The list order of the real server: timestamp DESC, transaction_id ASC.
    events.sort(key=lambda event: event["transaction_id"])
    events.sort(key=lambda event: event["timestamp"], reverse=True)
    return events


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    weight_sum = sum(weights)
    raw = [total * weight / weight_sum for weight in weights]
    shares = [int(value) for value in raw]
    remainder = total - sum(shares)
    order = sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in order[:remainder]:
        shares[i] += 1
    return shares
