"""Wallet writes of the sandbox: ``POST /wallets``, ``PUT /wallets/{lago_id}`` and
``POST /wallet_transactions`` (lago-api v1.51.0, LAGO_API_WRITES.md sections 4 and 5).

Kept apart from ``store.py``: these functions take the store, hold its lock and use its
tables. Choices where the notes are silent are listed in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tests.lago_sandbox.store import (
    CURRENCIES,
    JsonObj,
    Store,
    iso,
    not_found,
    parse_datetime,
    unprocessable,
)

WALLETS_PER_CUSTOMER_MAX = 6
MAX_CREDITS = Decimal(10) ** 25
TRANSACTION_METADATA_MAX = 15
WALLET_TRANSACTION_METADATA_MAX = 5  # transaction_metadata on POST /wallets
WALLET_UPDATABLE = (
    "name",
    "code",
    "priority",
    "expiration_at",
    "invoice_requires_successful_payment",
    "paid_top_up_min_amount_cents",
    "paid_top_up_max_amount_cents",
    "metadata",
    "applies_to",
)
Complete = Callable[[str, JsonObj], JsonObj]


def decimal_text(value: Decimal) -> str:
    """A decimal as the server renders it: ``10`` -> ``"10.0"``, ``2.50`` -> ``"2.5"``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0")
        return text + "0" if text.endswith(".") else text
    return text + ".0"


def _credits(value: Any) -> Decimal | None:
    """``DecimalAmountService#valid_decimal?``: a JSON string holding a decimal in range."""
    if not isinstance(value, str):
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0 or number >= MAX_CREDITS:
        return None
    return number


def _rate(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _cents(credits: Decimal, rate: Decimal) -> Decimal:
    return (credits * rate * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)


def _check_priority(payload: JsonObj, errors: JsonObj) -> None:
    if "priority" in payload:
        priority = payload["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 50:
            errors["priority"] = ["value_is_invalid"]


def _check_expiration(store: Store, payload: JsonObj, errors: JsonObj) -> None:
    value = payload.get("expiration_at")
    if value is not None:
        moment = parse_datetime(value)
        if moment is None or moment <= store.clock():
            errors["expiration_at"] = ["invalid_date"]


def _code_taken(store: Store, customer_id: Any, code: Any, other_than: Any = None) -> bool:
    return any(
        w.get("status") == "active" and w.get("code") == code and w.get("lago_id") != other_than
        for w in store.find_all("wallets", external_customer_id=customer_id)
    )


def _metadata_errors(value: Any, limit: int, *, object_ok: bool) -> list[str]:
    """``Validators::MetadataValidator`` codes for a ``[{key, value}]`` list."""
    if object_ok and value == {}:
        return []
    if not isinstance(value, list):
        return ["invalid_type"]
    codes: list[str] = []
    if len(value) > limit:
        codes.append("too_many_keys")
    for item in value:
        if not isinstance(item, dict) or set(item) - {"key", "value"}:
            code = "invalid_key_value_pair"
        elif any(isinstance(v, (dict, list)) for v in item.values()):
            code = "nested_structure_not_allowed"
        elif not all(isinstance(item.get(k), str) and item[k].strip() for k in ("key", "value")):
            code = "invalid_key_value_pair"
        elif len(item["key"]) > 20:
            code = "key_too_long"
        elif len(item["value"]) > 100:
            code = "value_too_long"
        else:
            continue
        if code not in codes:
            codes.append(code)
    return codes


def create_wallet(store: Store, payload: JsonObj, complete: Complete) -> JsonObj:
    """``POST /wallets``: validate, create, then run the initial-credits job at once.

    Returns the wallet as the response shows it: before its initial credits.
    """
    with store.lock:
        ext = payload.get("external_customer_id")
        customer = store.customer(str(ext)) if isinstance(ext, (str, int)) and ext != "" else None
        if customer is None:
            raise unprocessable({"customer": ["customer_not_found"]})
        ext = customer["external_id"]
        errors: JsonObj = {}
        active = [w for w in store.find_all("wallets", external_customer_id=ext)
                  if w.get("status") == "active"]  # fmt: skip
        if len(active) >= WALLETS_PER_CUSTOMER_MAX:
            errors["customer"] = ["wallet_limit_reached"]
        rate = _rate(payload.get("rate_amount"))
        if rate is None:
            errors["rate_amount"] = ["is not a number"]
        elif rate <= 0:
            errors["rate_amount"] = ["value_is_out_of_range"]
        amounts: dict[str, Decimal] = {}
        for field in ("paid_credits", "granted_credits"):
            if payload.get(field) is None:
                continue
            number = _credits(payload[field])
            if number is None:
                errors[field] = [f"invalid_{field}", "invalid_amount"]
            elif number > 0 and rate is not None and rate > 0 and _cents(number, rate) == 0:
                errors[field] = ["amount_rounds_to_zero"]
            else:
                amounts[field] = number
        _check_expiration(store, payload, errors)
        _check_priority(payload, errors)
        low = payload.get("paid_top_up_min_amount_cents")
        high = payload.get("paid_top_up_max_amount_cents")
        if isinstance(low, int) and isinstance(high, int) and high < low:
            errors["paid_top_up_max_amount_cents"] = ["must_be_greater_than_or_equal_min"]
        if "transaction_metadata" in payload and payload["transaction_metadata"] is not None:
            codes = _metadata_errors(
                payload["transaction_metadata"], WALLET_TRANSACTION_METADATA_MAX, object_ok=True
            )
            if codes:
                errors["transaction_metadata"] = codes
        metadata = payload.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            errors["metadata"] = ["invalid_type"]
        code = payload.get("code")
        if code not in (None, "") and _code_taken(store, ext, code):
            errors["code"] = ["value_already_exist"]
        currency = customer.get("currency")
        given = payload.get("currency")
        if given not in (None, "") and currency and given != currency:
            errors["currency"] = ["currencies_does_not_match"]
        elif not currency and (given not in CURRENCIES):
            errors["currency"] = ["value_is_invalid"]
        if errors:
            raise unprocessable(errors)
        now = store.clock()
        if not currency:
            customer["currency"] = given
            customer["updated_at"] = iso(now)
            store.changed("customers", customer)
        if code in (None, ""):
            name = payload.get("name")
            base = str(name).strip().lower().replace(" ", "_") if name else "default"
            code = base if not _code_taken(store, ext, base) else f"{base}_{int(now.timestamp())}"
        assert rate is not None
        fields: JsonObj = {
            "external_customer_id": ext,
            "lago_customer_id": customer.get("lago_id"),
            "currency": customer["currency"],
            "name": payload.get("name"),
            "code": code,
            "priority": payload.get("priority", 50),
            "rate_amount": decimal_text(rate),
            "expiration_at": iso(parse_datetime(payload["expiration_at"]))  # type: ignore[arg-type]
            if payload.get("expiration_at") is not None
            else None,
            "invoice_requires_successful_payment": bool(
                payload.get("invoice_requires_successful_payment", False)
            ),
            "paid_top_up_min_amount_cents": low,
            "paid_top_up_max_amount_cents": high,
            "metadata": metadata if metadata else None,
            "created_at": iso(now),
        }
        if isinstance(payload.get("applies_to"), dict):
            fields["applies_to"] = {
                "fee_types": list(payload["applies_to"].get("fee_types") or []),
                "billable_metric_codes": list(
                    payload["applies_to"].get("billable_metric_codes") or []
                ),
            }
        if customer.get("billing_entity_code"):
            fields["billing_entity_code"] = customer["billing_entity_code"]
        wallet = complete("wallets", fields)
        store._insert("wallets", wallet)
        answer = dict(wallet)
        if amounts:  # WalletTransactions::CreateJob, enqueued after commit: run it now
            _create_transactions(
                store,
                wallet,
                amounts,
                name=payload.get("transaction_name"),
                metadata=payload.get("transaction_metadata") or [],
                complete=complete,
            )
        return answer


def update_wallet(store: Store, lago_id: str, payload: JsonObj) -> JsonObj:
    """``PUT /wallets/{lago_id}``: the permitted fields only; no status check."""
    with store.lock:
        wallet = store.find_one("wallets", lago_id=lago_id)
        if wallet is None:
            raise not_found("wallet")
        errors: JsonObj = {}
        _check_expiration(store, payload, errors)
        _check_priority(payload, errors)
        if payload.get("metadata") is not None and not isinstance(payload["metadata"], dict):
            errors["metadata"] = ["invalid_type"]
        code = payload.get("code")
        if code not in (None, "") and _code_taken(
            store, wallet["external_customer_id"], code, wallet["lago_id"]
        ):
            errors["code"] = ["value_already_exist"]
        if errors:
            raise unprocessable(errors)
        for field in WALLET_UPDATABLE:
            if field not in payload:
                continue
            value = payload[field]
            if field == "code" and value in (None, ""):
                continue  # a blank code keeps the current one
            if field == "expiration_at" and value is not None:
                value = iso(parse_datetime(value))  # type: ignore[arg-type]
            if field == "metadata":
                value = value or None
            if field == "applies_to":
                if not isinstance(value, dict):
                    continue
                value = {
                    "fee_types": list(value.get("fee_types") or []),
                    "billable_metric_codes": list(value.get("billable_metric_codes") or []),
                }
            wallet[field] = value
        store.changed("wallets", wallet)
        return wallet


def create_wallet_transactions(store: Store, payload: JsonObj, complete: Complete) -> list[JsonObj]:
    """``POST /wallet_transactions``: every check, then paid, granted, voided in that order."""
    with store.lock:
        errors: JsonObj = {}
        wallet_id = payload.get("wallet_id")
        wallet = (
            store.find_one("wallets", lago_id=wallet_id) if isinstance(wallet_id, str) else None
        )
        if wallet is None:
            errors["wallet_id"] = ["wallet_not_found"]
        elif wallet.get("status") != "active":
            errors["wallet_id"] = ["wallet_is_terminated"]
        rate = _rate(wallet.get("rate_amount")) if wallet is not None else None
        amounts: dict[str, Decimal] = {}
        for field in ("paid_credits", "granted_credits", "voided_credits"):
            if payload.get(field) is None:
                continue
            number = _credits(payload[field])
            if number is None:
                errors[field] = [f"invalid_{field}", "invalid_amount"]
            elif number > 0 and rate is not None and _cents(number, rate) == 0:
                errors[field] = ["amount_rounds_to_zero"]
            elif number > 0:
                amounts[field] = number
        balance = Decimal(wallet.get("credits_balance") or "0") if wallet is not None else None
        if balance is not None and amounts.get("voided_credits", 0) > balance:
            errors["voided_credits"] = ["insufficient_credits"]
        limits = wallet is not None and not payload.get("ignore_paid_top_up_limits")
        if limits and wallet is not None and "paid_credits" in amounts and rate is not None:
            cents = _cents(amounts["paid_credits"], rate)
            low = wallet.get("paid_top_up_min_amount_cents")
            high = wallet.get("paid_top_up_max_amount_cents")
            if isinstance(low, int) and cents < low:
                errors["paid_credits"] = ["amount_below_minimum"]
            elif isinstance(high, int) and cents > high:
                errors["paid_credits"] = ["amount_above_maximum"]
        name = payload.get("name")
        if name is not None and not isinstance(name, str):
            errors["name"] = ["invalid_value"]
        elif isinstance(name, str) and len(name) > 255:
            errors["name"] = ["too_long"]
        metadata = payload.get("metadata")
        if metadata is not None:
            codes = _metadata_errors(metadata, TRANSACTION_METADATA_MAX, object_ok=True)
            if codes:
                errors["metadata"] = codes
        if errors:
            raise unprocessable(errors)
        assert wallet is not None
        return _create_transactions(
            store, wallet, amounts, name=name, metadata=metadata or [], complete=complete
        )


def _create_transactions(
    store: Store,
    wallet: JsonObj,
    amounts: dict[str, Decimal],
    *,
    name: Any,
    metadata: Any,
    complete: Complete,
) -> list[JsonObj]:
    now = store.clock()
    rate = _rate(wallet.get("rate_amount")) or Decimal(1)
    balance = Decimal(wallet.get("credits_balance") or "0")
    created = []
    kinds = (
        ("paid_credits", "inbound", "purchased", "pending"),
        ("granted_credits", "inbound", "granted", "settled"),
        ("voided_credits", "outbound", "voided", "settled"),
    )
    for field, kind, transaction_status, status in kinds:
        credits = amounts.get(field)
        if credits is None or credits <= 0:
            continue
        if status == "settled":
            balance += credits if kind == "inbound" else -credits
        created.append(
            complete(
                "wallet_transactions",
                {
                    "lago_wallet_id": wallet["lago_id"],
                    "billing_entity_code": wallet.get("billing_entity_code"),
                    "status": status,
                    "transaction_status": transaction_status,
                    "transaction_type": kind,
                    "credit_amount": decimal_text(credits),
                    "amount": decimal_text((credits * rate).quantize(Decimal("0.01"))),
                    "metadata": list(metadata) if isinstance(metadata, list) else [],
                    "name": name,
                    "created_at": iso(now),
                },
            )
        )
    for obj in created:
        store._insert("wallet_transactions", obj)
    if any(t["status"] == "settled" for t in created):
        cents = int(_cents(balance, rate))
        wallet.update(
            {
                "credits_balance": decimal_text(balance),
                "balance": decimal_text(balance),
                "balance_cents": cents,
                "credits_ongoing_balance": decimal_text(balance),
                "ongoing_balance_cents": cents,
            }
        )
        store.changed("wallets", wallet)
    return created
