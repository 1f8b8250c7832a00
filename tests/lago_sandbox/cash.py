"""Cash collection in the sandbox: payments, payment requests, payment receipts and
customers' payment methods (lago-api v1.51.0, LAGO_API_READS.md sections 1, 2, 3 and 10).

Three parts: builders of the API objects (for ``objects.complete``), the seed (payments tied
to the seeded invoices, see :func:`fill`) and the read routes (``ROUTES``, registered by
``server.py``). The tables live in the store like every other resource. Choices where the
notes are silent are listed in the README.
"""

from __future__ import annotations

import copy
import random
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from tests.lago_sandbox import objects as o
from tests.lago_sandbox.store import (
    INVOICE_VISIBLE_STATUSES,
    RESOURCE_DEFS,
    JsonObj,
    Store,
    dumps,
    not_found,
    page_window,
    unprocessable,
)

IdFactory = Callable[[], str]
Handler = Callable[[Any], bytes]

#: The store tables this module seeds and serves.
RESOURCES = ("payments", "payment_requests", "payment_receipts", "payment_methods")

#: ``payment_provider_type`` of a payment: the provider's STI class name (READS section 1).
PROVIDER_CLASSES = {
    "stripe": "PaymentProviders::StripeProvider",
    "gocardless": "PaymentProviders::GocardlessProvider",
    "adyen": "PaymentProviders::AdyenProvider",
}
#: The provider's display name (``payment_provider_name`` of a payment method).
PROVIDER_NAMES = {"stripe": "Stripe", "gocardless": "GoCardless", "adyen": "Adyen"}
#: The provider's raw status for each normalized ``payment_status`` (choice per provider).
RAW_STATUSES = {
    "stripe": {"succeeded": "succeeded", "failed": "canceled", "processing": "processing"},
    "gocardless": {"succeeded": "paid_out", "failed": "failed", "processing": "pending_submission"},
    "adyen": {"succeeded": "Authorised", "failed": "Refused", "processing": "Pending"},
}
#: Fields of an invoice as a payment request embeds it (``V1::InvoiceSerializer`` without
#: includes: no customer, fees, metadata or applied taxes).
EMBEDDED_INVOICE_KEYS = (
    "lago_id", "billing_entity_code", "sequential_id", "number", "issuing_date",
    "payment_due_date", "payment_overdue", "net_payment_term", "invoice_type", "status",
    "payment_status", "currency", "fees_amount_cents", "coupons_amount_cents",
    "credit_notes_amount_cents", "sub_total_excluding_taxes_amount_cents",
    "taxes_amount_cents", "sub_total_including_taxes_amount_cents",
    "prepaid_credit_amount_cents", "prepaid_granted_credit_amount_cents",
    "prepaid_purchased_credit_amount_cents", "progressive_billing_credit_amount_cents",
    "total_amount_cents", "version_number", "self_billed", "file_url", "voided_at",
    "created_at", "updated_at",
)  # fmt: skip
#: Receipts exist only once the organisation turned ``issue_receipts`` on: this long
#: before the anchor, in the seed.
RECEIPTS_SINCE = timedelta(days=120)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


# ------------------------------------------------------------------------------ builders


def _payment(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    """A manual payment (what ``POST /payments`` records) unless told otherwise."""
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "lago_customer_id": new_id(),
        "external_customer_id": "",
        "invoice_ids": [],
        "invoice_numbers": [],
        "lago_payable_id": new_id(),
        "payable_type": "Invoice",
        "amount_cents": 0,
        "amount_currency": o.DEFAULT_CURRENCY,
        "status": "succeeded",
        "payment_status": "succeeded",
        "type": "manual",
        "reference": "manual",
        "payment_provider_code": None,
        "payment_provider_type": None,
        "external_payment_id": None,
        "provider_payment_id": None,
        "provider_customer_id": None,
        "next_action": {},
        "created_at": o.iso(now),
    }


def _payment_request(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "email": "billing@example.com",
        "amount_cents": 0,
        "amount_currency": o.DEFAULT_CURRENCY,
        "payment_status": "pending",
        "created_at": o.iso(now),
        "customer": o.complete("customers", {}, now=now, new_id=new_id),
        "invoices": [],
    }


def _payment_receipt(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "number": "RCT-000001",
        "file_url": None,
        "xml_url": None,
        "payment": _payment({}, now, new_id),
        "created_at": o.iso(now),
    }


def _payment_method(f: JsonObj, now: datetime, new_id: IdFactory) -> JsonObj:
    """Stored with ``external_customer_id`` (its customer), which the API does not show."""
    return {
        "lago_id": f.get("lago_id") or new_id(),
        "external_customer_id": "",
        "is_default": False,
        "payment_provider_code": "stripe",
        "payment_provider_name": PROVIDER_NAMES["stripe"],
        "payment_provider_type": "stripe",
        "provider_method_id": "pm_sandbox",
        "created_at": o.iso(now),
    }


BUILDERS: dict[str, Callable[[JsonObj, datetime, IdFactory], JsonObj]] = {
    "payments": _payment,
    "payment_requests": _payment_request,
    "payment_receipts": _payment_receipt,
    "payment_methods": _payment_method,
}


# ---------------------------------------------------------------------------------- seed


def fill(org: dict[str, list[JsonObj]], *, seed: int, anchor: datetime) -> None:
    """Add payment methods, payments, payment requests and receipts to a seeded org.

    Everything follows the seeded invoices and customers, which it does not change:

    - each customer with a payment provider has one or two payment methods;
    - each finalized invoice paid (``succeeded``) has one succeeded payment of its total:
      a provider payment when the customer has a provider (but for one in ten, settled by
      bank transfer), else a manual one with a reference; a ``failed`` invoice of a
      customer with a provider has a failed one;
    - each customer with overdue invoices has one payment request for all of them
      (``failed`` when they all failed, else ``pending``), and a customer with a provider
      a ``processing`` payment on it;
    - succeeded payments made within :data:`RECEIPTS_SINCE` of the anchor have a receipt.
    """
    rng = random.Random(f"lago-sandbox:{seed}:cash")

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    last = anchor - timedelta(seconds=1)
    customers = {c["external_id"]: c for c in org["customers"]}
    invoices_of: dict[str, list[JsonObj]] = {}
    for invoice in sorted(org["invoices"], key=lambda i: (i["created_at"], i["lago_id"])):
        invoices_of.setdefault(invoice["customer"]["external_id"], []).append(invoice)
    payments: list[JsonObj] = []
    for ext, customer in customers.items():
        config = customer["billing_configuration"]
        provider = config.get("payment_provider")
        if provider:
            org["payment_methods"] += _methods(rng, new_id, customer, last)
        for invoice in invoices_of.get(ext, []):
            if invoice["status"] != "finalized" or not invoice["total_amount_cents"]:
                continue
            status = invoice["payment_status"]
            if status == "succeeded" or (status == "failed" and provider):
                payments.append(_invoice_payment(rng, new_id, customer, invoice, last))
        overdue = [
            i
            for i in invoices_of.get(ext, [])
            if i["status"] == "finalized" and i["payment_overdue"] and i["total_amount_cents"]
        ]
        if overdue:
            request = _request(rng, new_id, customer, overdue, last)
            org["payment_requests"].append(request)
            if provider:
                payments.append(_request_payment(rng, new_id, customer, request, last))
    org["payments"] += payments
    since = anchor - RECEIPTS_SINCE
    invoices = {i["lago_id"]: i for i in org["invoices"]}
    paid = sorted(
        (_paid_at(p, invoices), p["lago_id"], p)
        for p in payments
        if p["payment_status"] == "succeeded"
    )
    receipts: list[JsonObj] = []
    for paid_at, _, payment in paid:
        if paid_at >= since:
            moment = min(paid_at + timedelta(seconds=rng.randint(2, 90)), last)
            receipts.append(
                {
                    "lago_id": new_id(),
                    "number": f"{o.ORGANIZATION_PREFIX}-RCT-{len(receipts) + 1:06d}",
                    "file_url": None,
                    "xml_url": None,
                    "payment": copy.deepcopy(payment),
                    "created_at": o.iso(moment),
                }
            )
    # The files are generated after the receipt; the newest one's are not there yet.
    newest = max(receipts, key=lambda r: (r["created_at"], r["lago_id"]), default=None)
    for receipt in receipts:
        if receipt is not newest:
            receipt["file_url"] = f"https://lago.example.test/receipts/{receipt['lago_id']}.pdf"
    org["payment_receipts"] += receipts


def _methods(
    rng: random.Random, new_id: IdFactory, customer: JsonObj, last: datetime
) -> list[JsonObj]:
    config = customer["billing_configuration"]
    provider = config["payment_provider"]
    count = 2 if rng.random() < 0.3 else 1
    methods = []
    moment = o.parse_iso(customer["created_at"])
    for number in range(count):
        moment = min(moment + timedelta(hours=rng.randint(1, 24 * 60)), last)
        if provider == "stripe":
            method_id = f"pm_{rng.getrandbits(96):024x}"
        elif provider == "gocardless":
            method_id = f"MD{rng.getrandbits(48):012X}"
        else:
            method_id = f"{rng.getrandbits(52):016d}"
        methods.append(
            {
                "lago_id": new_id(),
                "external_customer_id": customer["external_id"],
                # The newest method is the default one.
                "is_default": number == count - 1,
                "payment_provider_code": config["payment_provider_code"],
                "payment_provider_name": PROVIDER_NAMES[provider],
                "payment_provider_type": provider,
                "provider_method_id": method_id,
                "created_at": o.iso(moment),
            }
        )
    return methods


def _provider_fields(rng: random.Random, customer: JsonObj, status: str) -> JsonObj:
    """The fields of a provider payment with this normalized status."""
    config = customer["billing_configuration"]
    provider = config["payment_provider"]
    if provider == "stripe":
        payment_id = f"pi_{rng.getrandbits(96):024x}"
    elif provider == "gocardless":
        payment_id = f"PM{rng.getrandbits(48):012X}"
    else:
        payment_id = f"{rng.getrandbits(60):016X}"
    return {
        "type": "provider",
        "status": RAW_STATUSES[provider][status],
        "payment_status": status,
        "reference": None,
        "payment_provider_code": config["payment_provider_code"],
        "payment_provider_type": PROVIDER_CLASSES[provider],
        "external_payment_id": payment_id,
        "provider_payment_id": payment_id,
        "provider_customer_id": config["provider_customer_id"],
    }


def _invoice_payment(
    rng: random.Random, new_id: IdFactory, customer: JsonObj, invoice: JsonObj, last: datetime
) -> JsonObj:
    provider = customer["billing_configuration"].get("payment_provider")
    created = o.parse_iso(invoice["created_at"])
    # One paid invoice in ten of a customer with a provider was settled by bank transfer.
    by_hand = invoice["payment_status"] == "succeeded" and rng.random() < 0.1
    if provider and not by_hand:
        moment = created + timedelta(seconds=rng.randint(5, 300))
        fields = _provider_fields(rng, customer, invoice["payment_status"])
    else:  # recorded by hand once the transfer arrived (the invoice's last update)
        moment = o.parse_iso(invoice["updated_at"])
        fields = {"reference": f"WIRE-{rng.randint(100000, 999999)}"}
    payment = _payment({}, min(moment, last), new_id)
    payment.update(
        lago_customer_id=customer["lago_id"],
        external_customer_id=customer["external_id"],
        invoice_ids=[invoice["lago_id"]],
        invoice_numbers=[invoice["number"]],
        lago_payable_id=invoice["lago_id"],
        payable_type="Invoice",
        amount_cents=invoice["total_amount_cents"],
        amount_currency=invoice["currency"],
        **fields,
    )
    return payment


def _request(
    rng: random.Random,
    new_id: IdFactory,
    customer: JsonObj,
    invoices: list[JsonObj],
    last: datetime,
) -> JsonObj:
    due = max(o.parse_iso(i["payment_due_date"]) for i in invoices)
    moment = min(due + timedelta(days=rng.randint(1, 5), seconds=rng.randint(0, 86399)), last)
    failed = all(i["payment_status"] == "failed" for i in invoices)
    return {
        "lago_id": new_id(),
        "email": customer["email"],
        "amount_cents": sum(i["total_amount_cents"] for i in invoices),
        "amount_currency": invoices[0]["currency"],
        "payment_status": "failed" if failed else "pending",
        "created_at": o.iso(moment),
        # V1::CustomerSerializer without includes: no taxes, no integration customers.
        "customer": {
            k: copy.deepcopy(v)
            for k, v in customer.items()
            if k not in ("taxes", "integration_customers")
        },
        "invoices": [{k: i[k] for k in EMBEDDED_INVOICE_KEYS if k in i} for i in invoices],
    }


def _request_payment(
    rng: random.Random, new_id: IdFactory, customer: JsonObj, request: JsonObj, last: datetime
) -> JsonObj:
    status = "failed" if request["payment_status"] == "failed" else "processing"
    moment = min(o.parse_iso(request["created_at"]) + timedelta(seconds=rng.randint(5, 60)), last)
    payment = _payment({}, moment, new_id)
    payment.update(
        lago_customer_id=customer["lago_id"],
        external_customer_id=customer["external_id"],
        invoice_ids=[i["lago_id"] for i in request["invoices"]],
        invoice_numbers=[i["number"] for i in request["invoices"]],
        lago_payable_id=request["lago_id"],
        payable_type="PaymentRequest",
        amount_cents=request["amount_cents"],
        amount_currency=request["amount_currency"],
        **_provider_fields(rng, customer, status),
    )
    return payment


def _paid_at(payment: JsonObj, invoices: dict[str, JsonObj]) -> datetime:
    """When a payment succeeded: a provider's when its invoice was marked paid."""
    invoice = invoices.get(payment["lago_payable_id"])
    if payment["type"] == "provider" and invoice is not None:
        return o.parse_iso(invoice["updated_at"])
    return o.parse_iso(payment["created_at"])


def spec_view(payment: JsonObj) -> JsonObj:
    """A payment as the spec can judge it: the values v1.51 sends outside the spec waived.

    ``PaymentObject`` types ``reference``, ``payment_provider_code``,
    ``payment_provider_type`` and ``provider_customer_id`` as non-null strings and
    ``payment_provider_type`` as a short name; the server sends null for the first of them
    on provider payments and for the other three on manual ones, and the class name.
    """
    view = dict(payment)
    for key in ("reference", "payment_provider_code", "provider_customer_id"):
        if view.get(key) is None:
            view[key] = ""
    short = {name: code for code, name in PROVIDER_CLASSES.items()}
    view["payment_provider_type"] = short.get(str(view.get("payment_provider_type")), "stripe")
    return view


# -------------------------------------------------------------------------------- routes


def page_body(query: dict[str, list[str]], wrapper: str, items: list[bytes]) -> bytes:
    """A paginated list body (``meta`` as for every list) of serialized items."""
    offset, limit, meta = page_window(query, len(items))
    page = items[offset : offset + limit]
    return b'{"' + wrapper.encode() + b'":[' + b",".join(page) + b'],"meta":' + dumps(meta) + b"}"


def selected(store: Store, resource: str, keep: Callable[[JsonObj], bool]) -> list[bytes]:
    """The serialized rows of ``resource`` that ``keep`` accepts, in list order."""
    return [r.json() for r in store.tables[resource].sorted_rows() if keep(r.obj)]


def first(query: dict[str, list[str]], name: str) -> str | None:
    """A query parameter's first non-empty value."""
    values = [v for v in query.get(name, []) if v != ""]
    return values[0] if values else None


def _visible(store: Store, payment: JsonObj) -> bool:
    """``PaymentsQuery#base_scope``: on a payment request, or on a visible-status invoice."""
    if payment.get("payable_type") == "PaymentRequest":
        return True
    invoice = store.find_one("invoices", lago_id=payment.get("lago_payable_id"))
    return invoice is not None and invoice.get("status") in INVOICE_VISIBLE_STATUSES


def _invoice_filter(query: dict[str, list[str]]) -> str | None:
    """``invoice_id``: must be a UUID (422 from the filters contract)."""
    value = first(query, "invoice_id")
    if value is not None and not _UUID.match(value):
        raise unprocessable({"invoice_id": ["is in invalid format"]})
    return value


def _customer_or_404(ctx: Any) -> str:
    ext = str(ctx.path_params["external_customer_id"])
    if ctx.store.customer(ext) is None:
        raise not_found("customer")
    return ext


def _payments(ctx: Any, customer: str | None) -> bytes:
    store, query = ctx.store, ctx.query
    invoice_id = _invoice_filter(query)
    if customer is None:
        customer = first(query, "external_customer_id")

    def keep(p: JsonObj) -> bool:
        return (
            (customer is None or p.get("external_customer_id") == customer)
            and (invoice_id is None or invoice_id in (p.get("invoice_ids") or []))
            and _visible(store, p)
        )

    with store.lock:
        return page_body(query, "payments", selected(store, "payments", keep))


def list_payments(ctx: Any) -> bytes:
    """``GET /payments`` (``external_customer_id``, ``invoice_id``)."""
    return _payments(ctx, None)


def customer_payments(ctx: Any) -> bytes:
    """``GET /customers/{external_customer_id}/payments`` (404 customer_not_found)."""
    return _payments(ctx, _customer_or_404(ctx))


def get_payment(ctx: Any) -> bytes:
    """``GET /payments/{lago_id}``: wrapped in ``payment`` (the spec says unwrapped)."""
    store = ctx.store
    with store.lock:
        payment = store.find_one("payments", lago_id=ctx.path_params["lago_id"])
        if payment is None or not _visible(store, payment):
            raise not_found("payment")
        return b'{"payment":' + store.get_json("payments", payment) + b"}"


def _payment_requests(ctx: Any, customer: str | None) -> bytes:
    store, query = ctx.store, ctx.query
    if customer is None:
        customer = first(query, "external_customer_id")
    status = first(query, "payment_status")
    currency = first(query, "currency")
    codes = {c for c in query.get("billing_entity_codes[]", []) if c}
    with store.lock:
        if any(store.find_one("billing_entities", code=c) is None for c in codes):
            raise not_found("billing_entity")

        def keep(r: JsonObj) -> bool:
            return (
                (customer is None or (r.get("customer") or {}).get("external_id") == customer)
                and (status is None or r.get("payment_status") == status)
                and (currency is None or r.get("amount_currency") == currency)
                and (
                    not codes
                    or any(i.get("billing_entity_code") in codes for i in r.get("invoices") or [])
                )
            )

        return page_body(query, "payment_requests", selected(store, "payment_requests", keep))


def list_payment_requests(ctx: Any) -> bytes:
    """``GET /payment_requests``."""
    return _payment_requests(ctx, None)


def customer_payment_requests(ctx: Any) -> bytes:
    """``GET /customers/{external_customer_id}/payment_requests``."""
    return _payment_requests(ctx, _customer_or_404(ctx))


def get_payment_request(ctx: Any) -> bytes:
    """``GET /payment_requests/{lago_id}``."""
    return single(ctx.store, "payment_requests", ctx.path_params["lago_id"], "payment_request")


def list_payment_receipts(ctx: Any) -> bytes:
    """``GET /payment_receipts`` (``invoice_id``); no status rule."""
    store, query = ctx.store, ctx.query
    invoice_id = _invoice_filter(query)

    def keep(receipt: JsonObj) -> bool:
        payment = receipt.get("payment") or {}
        return invoice_id is None or invoice_id in (payment.get("invoice_ids") or [])

    with store.lock:
        return page_body(query, "payment_receipts", selected(store, "payment_receipts", keep))


def get_payment_receipt(ctx: Any) -> bytes:
    """``GET /payment_receipts/{lago_id}``: 404 ``invoice_not_found`` (the resource name)."""
    return single(ctx.store, "payment_receipts", ctx.path_params["lago_id"], "invoice")


def customer_payment_methods(ctx: Any) -> bytes:
    """``GET /customers/{external_customer_id}/payment_methods``, without the stored
    ``external_customer_id``."""
    store = ctx.store
    with store.lock:
        ext = _customer_or_404(ctx)
        items = [
            dumps(without(r.obj, "external_customer_id"))
            for r in store.tables["payment_methods"].sorted_rows()
            if r.obj.get("external_customer_id") == ext
        ]
        return page_body(ctx.query, "payment_methods", items)


def without(obj: JsonObj, key: str) -> JsonObj:
    """``obj`` as the API shows it: without a key the sandbox keeps for itself."""
    return {k: v for k, v in obj.items() if k != key}


def single(store: Store, resource: str, lago_id: str, missing: str) -> bytes:
    """One object by ``lago_id`` under its singular wrapper; 404 ``<missing>_not_found``."""
    with store.lock:
        obj = store.find_one(resource, lago_id=lago_id)
        if obj is None:
            raise not_found(missing)
        wrapper = RESOURCE_DEFS[resource].singular.encode()
        return b'{"' + wrapper + b'":' + store.get_json(resource, obj) + b"}"


ROUTES: Iterable[tuple[str, str, Handler]] = (
    ("GET", "/payments", list_payments),
    ("GET", "/payments/{lago_id}", get_payment),
    ("GET", "/customers/{external_customer_id}/payments", customer_payments),
    ("GET", "/payment_requests", list_payment_requests),
    ("GET", "/payment_requests/{lago_id}", get_payment_request),
    ("GET", "/customers/{external_customer_id}/payment_requests", customer_payment_requests),
    ("GET", "/payment_receipts", list_payment_receipts),
    ("GET", "/payment_receipts/{lago_id}", get_payment_receipt),
    ("GET", "/customers/{external_customer_id}/payment_methods", customer_payment_methods),
)
