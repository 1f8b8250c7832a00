"""`wallets`: create or update a customer's wallet, keyed on (`external_customer_id`, `code`).

The active wallet with that code is looked up first (`GET /wallets?external_customer_id=`);
it is updated with `PUT /wallets/{lago_id}` only when a field differs, else created with
`POST /wallets`. Credits are never sent here: `paid_credits` and `granted_credits` columns
are ignored (with a warning), so a retried creation cannot grant twice. Credits go through
the `wallet_transactions` action, which is exactly once.
"""

from __future__ import annotations

import decimal
import typing as t
import urllib.parse
from collections.abc import Mapping
from typing import Any

from target_lago.client import encode
from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    decimal_text,
    missing,
    plain,
    refuse_unsendable,
    to_iso,
)
from target_lago.sinks import Item, OneByOneSink

if t.TYPE_CHECKING:
    from target_lago.client import LagoClient, LagoResponse

# `PUT /wallets/{lago_id}` takes these; `POST /wallets` takes them and the CREATE_ONLY ones.
WALLET_UPDATABLE = (
    "name",
    "priority",
    "expiration_at",
    "invoice_requires_successful_payment",
    "paid_top_up_min_amount_cents",
    "paid_top_up_max_amount_cents",
    "metadata",
    "applies_to",
)
WALLET_CREATE_ONLY = ("external_customer_id", "code", "rate_amount", "currency")
WALLET_CREDITS = frozenset({"paid_credits", "granted_credits"})
WALLET_READ_ONLY = frozenset(
    {
        "lago_id",
        "lago_customer_id",
        "status",
        "billing_entity_code",
        "credits_balance",
        "balance",
        "balance_cents",
        "consumed_credits",
        "created_at",
        "last_balance_sync_at",
        "last_consumed_credit_at",
        "terminated_at",
        "ongoing_balance_cents",
        "ongoing_usage_balance_cents",
        "credits_ongoing_balance",
        "credits_ongoing_usage_balance",
        "applied_invoice_custom_sections",
        "recurring_transaction_rules",
        "purchase_order_number",
    }
)
PAGE = 100


def wallet_payload(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Build the `wallet` body from a record (tap-lago wallet or warehouse row).

    Returns:
        The body (every create field the record has) and the ignored columns.

    Raises:
        RecordSkipped: For a terminated wallet (history, not something to create).
        RecordRejected: When the key is missing or a value cannot be sent as Lago reads it.
    """
    if record.get("status") == "terminated":
        raise RecordSkipped("status is terminated")
    details: dict[str, list[str]] = {}
    reasons: list[str] = []

    def bad(field: str, code: str, reason: str) -> None:
        details[field] = [code]
        reasons.append(f"'{field}' {reason}")

    for field in ("external_customer_id", "code"):
        if missing(record.get(field)):
            bad(field, "value_is_mandatory", "is missing or empty")
    body: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in record.items():
        if key in WALLET_UPDATABLE or key in WALLET_CREATE_ONLY:
            if value is not None or key in ("expiration_at", "name"):
                body[key] = value
        elif key not in WALLET_READ_ONLY and not key.startswith("_sdc_"):
            ignored.append(key)
    if body.get("rate_amount") is not None:
        try:
            body["rate_amount"] = decimal_text(body["rate_amount"])
        except ValueError as exc:
            bad("rate_amount", "value_is_invalid", str(exc))
    if body.get("expiration_at") is not None:
        try:
            body["expiration_at"] = to_iso(body["expiration_at"])
        except ValueError as exc:
            bad("expiration_at", "invalid_date", str(exc))
    for field in ("priority", "paid_top_up_min_amount_cents", "paid_top_up_max_amount_cents"):
        if field in body:
            value = _whole(body[field])
            if value is None:
                bad(field, "value_is_invalid", f"must be a whole number, got {body[field]!r}")
            else:
                body[field] = value
    if "metadata" in body:
        metadata = _metadata(body["metadata"])
        if metadata is None:
            bad("metadata", "value_is_invalid", "must be an object of text values")
        else:
            body["metadata"] = metadata
    if details:
        raise RecordRejected(details, "; ".join(reasons))
    for field in ("external_customer_id", "code"):
        body[field] = str(body[field])
    refuse_unsendable(body)
    return plain(body), ignored


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = decimal.Decimal(str(value).strip())
    except (decimal.InvalidOperation, ValueError):
        return None
    return int(number) if number.is_finite() and number == number.to_integral_value() else None


def _metadata(value: Any) -> dict | None:
    """Wallet metadata as Lago takes it: an object of text (or null) values."""
    if isinstance(value, list):  # [{key, value}] rows
        if not all(isinstance(item, Mapping) and "key" in item for item in value):
            return None
        value = {str(item["key"]): item.get("value") for item in value}
    if not isinstance(value, Mapping):
        return None
    out = {}
    for key, item in value.items():
        if isinstance(item, (dict, list)):
            return None
        out[str(key)] = None if item is None else str(item)
    return out


def same_value(field: str, wanted: Any, stored: Any) -> bool:
    """Whether a wallet field as stored already says what the record says."""
    if field in ("expiration_at",):
        if wanted is None or stored is None:
            return wanted is None and stored is None
        return bool(to_iso(wanted) == to_iso(stored))
    if field == "rate_amount":
        try:
            return decimal.Decimal(str(wanted)) == decimal.Decimal(str(stored))
        except decimal.InvalidOperation:
            return False
    if field == "metadata":
        return (wanted or {}) == (stored or {})
    if field == "applies_to":
        wanted = wanted or {}
        stored = stored or {}
        return all(
            sorted(wanted.get(k) or []) == sorted(stored.get(k) or [])
            for k in ("fee_types", "billable_metric_codes")
        )
    return bool(wanted == stored)


def list_all(
    client: LagoClient, path: str, params: dict[str, str], root: str
) -> tuple[list[dict], LagoResponse | None]:
    """Every object of a paginated list, or the refusal (e.g. 404) that ended the walk."""
    found: list[dict] = []
    page = 1
    while True:
        response = client.get(path, {**params, "per_page": str(PAGE), "page": str(page)})
        body = response.body if isinstance(response.body, dict) else {}
        if not response.ok:
            return found, response
        found.extend(o for o in body.get(root) or [] if isinstance(o, dict))
        following = (body.get("meta") or {}).get("next_page")
        if not following:
            return found, None
        page = int(following)


def active_wallet(
    client: LagoClient, customer: str, code: str
) -> tuple[dict | None, LagoResponse | None]:
    """The customer's active wallet with this code (or the refusal of the lookup)."""
    wallets, refused = list_all(client, "/wallets", {"external_customer_id": customer}, "wallets")
    match = [w for w in wallets if w.get("status") == "active" and w.get("code") == code]
    return (match[0] if match else None), refused


class WalletsSink(OneByOneSink):
    """`POST /wallets` or `PUT /wallets/{lago_id}`: one wallet per customer and `code`."""

    action = "wallets"
    endpoint = "/wallets"
    root_key = "wallet"
    rank = 50
    self_parsed = ("expiration_at", "metadata")
    _warned_credits = False

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a wallet body (credits left out)."""
        payload, ignored = wallet_payload(record)
        credits = sorted(WALLET_CREDITS & set(ignored))
        if credits and not self._warned_credits:
            self._warned_credits = True
            self.logger.warning(
                "Stream '%s': %s not sent: the wallets action never grants credits (a "
                "retried creation could grant them twice); send them as wallet_transactions",
                self.stream_name,
                credits,
            )
        self.warn_ignored([c for c in ignored if c not in WALLET_CREDITS])
        return payload, (
            f"wallet {payload['code']!r} of customer {payload['external_customer_id']!r}"
        )

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            self._deliver_one(item)

    def _deliver_one(self, item: Item) -> None:
        client = self.lago.client
        body = item.payload
        replayed = False
        for _ in range(2):  # a 422 value_already_exist sends us back to the lookup once
            wallet, refused = active_wallet(client, body["external_customer_id"], body["code"])
            if refused is not None:
                self.reject_response(item, refused, refused.error_details or refused.body)
                return
            if wallet is not None:
                self._update(item, wallet, created_by_us=replayed)
                return
            create = {k: v for k, v in body.items() if v is not None or k == "name"}
            response = client.post(self.endpoint, {self.root_key: create})
            if response.ok:
                self.stats.add("delivered")
                return
            details = response.error_details
            if not (isinstance(details, dict) and "value_already_exist" in details.get("code", [])):
                self.reject_response(item, response, details or response.body)
                return
            # Our own earlier attempt (lost answer) or a concurrent writer created it.
            replayed = response.replayed
        self.reject(item.record, None, "value_already_exist", {"code": ["value_already_exist"]},
                    f"{item.key}: Lago says the code is taken but lists no active wallet "
                    "with it", payload=body)  # fmt: skip

    def _update(self, item: Item, wallet: dict, *, created_by_us: bool) -> None:
        body = item.payload
        fixed = [
            f
            for f in ("rate_amount", "currency")
            if body.get(f) is not None and not same_value(f, body[f], wallet.get(f))
        ]
        if fixed:
            self.reject(
                item.record,
                None,
                "invalid_record",
                {f: ["not_updatable"] for f in fixed},
                f"{item.key} exists with {', '.join(f'{f}={wallet.get(f)!r}' for f in fixed)}"
                f"; Lago cannot change {', '.join(fixed)} of a wallet (the record says "
                f"{', '.join(repr(body[f]) for f in fixed)})",
                payload=body,
            )
            return
        changes = {
            f: body[f]
            for f in WALLET_UPDATABLE
            if f in body and not same_value(f, body[f], wallet.get(f))
        }
        if not changes:
            self.stats.add("delivered" if created_by_us else "already_present")
            return
        path = f"/wallets/{urllib.parse.quote(str(wallet['lago_id']), safe='')}"
        response = self.lago.client.request("PUT", path, encode({self.root_key: changes}))
        if response.ok:
            self.stats.add("delivered")
        else:
            self.reject_response(item, response, response.error_details or response.body)
