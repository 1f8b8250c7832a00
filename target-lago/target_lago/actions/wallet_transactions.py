"""`wallet_transactions`: top-ups (paid), grants and voids, `POST /wallet_transactions`.

Lago has no idempotency key for a transaction, so each record carries its own: a stable id
derived from the stream's key columns (like events' transaction ids), sent as the metadata
pair `target_lago_id`. Before every attempt, and again after any attempt whose answer was
lost, the wallet's transactions are read back with `?metadata[target_lago_id]=<id>`
(lago-api v1.51.0 and later): when they are there, the record is settled and nothing is
posted. The POST itself is never retried blindly.
"""

from __future__ import annotations

import decimal
import typing as t
import urllib.parse
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from target_lago.actions.events import transaction_id
from target_lago.actions.wallets import active_wallet, list_all
from target_lago.client import LagoError, LagoUnavailableError, encode
from target_lago.mapping import (
    RecordRejected,
    RecordSkipped,
    decimal_text,
    missing,
    plain,
    refuse_unsendable,
)
from target_lago.sinks import Item, OneByOneSink, StreamSetupError

if t.TYPE_CHECKING:
    pass

ID_KEY = "target_lago_id"
"""Metadata key holding the record's id (Lago: keys of at most 20 characters)."""
CREDITS = ("paid_credits", "granted_credits", "voided_credits")
TRANSACTION_FIELDS = frozenset(
    {*CREDITS, "wallet_id", "name", "metadata", "invoice_requires_successful_payment",
     "ignore_paid_top_up_limits", "priority"}
)  # fmt: skip
WALLET_REFERENCE = frozenset({"external_customer_id", "wallet_code"})
METADATA_MAX = 15  # Lago's limit, our pair included


class LagoFilterUnsupported(LagoError):
    """Lago ignored the metadata filter (older than v1.51.0): replays cannot be recognised."""


def transaction_payload(record: Mapping[str, Any], columns: t.Sequence[str]) -> dict:
    """Build the body of one record: wallet reference, credits as decimal strings, metadata.

    The wallet is `wallet_id`, or `external_customer_id` + `wallet_code` (resolved when
    delivered). Numbers become the exact decimal strings Lago requires.

    Raises:
        RecordSkipped: When no amount is above zero (Lago would create nothing).
        RecordRejected: Naming the field, for a missing wallet or key column, or an amount
            that is not a decimal of at least zero.
    """
    details: dict[str, list[str]] = {}
    reasons: list[str] = []
    body: dict[str, Any] = {}
    if not missing(record.get("wallet_id")):
        body["wallet_id"] = str(record["wallet_id"])
    else:
        for field in ("external_customer_id", "wallet_code"):
            if missing(record.get(field)):
                details[field] = ["value_is_mandatory"]
                reasons.append(f"'{field}' is missing or empty (and there is no wallet_id)")
            else:
                body[field] = str(record[field])
    positive = False
    for field in CREDITS:
        value = record.get(field)
        if value is None or value == "":
            continue
        try:
            number = decimal.Decimal(decimal_text(value))
            if number < 0:
                raise ValueError(f"{value!r} is negative")
        except ValueError as exc:
            details[field] = [f"invalid_{field}", "invalid_amount"]
            reasons.append(f"'{field}' {exc}")
            continue
        # Plain notation, as the spec's pattern wants ("1e3" -> "1000", "-0" -> "0").
        body[field] = format(abs(number) if number == 0 else number, "f")
        positive = positive or number > 0
    for field in ("name", "invoice_requires_successful_payment", "ignore_paid_top_up_limits",
                  "priority"):  # fmt: skip
        if record.get(field) is not None:
            body[field] = record[field]
    metadata = _metadata(record.get("metadata"))
    if metadata is None:
        details["metadata"] = ["invalid_key_value_pair"]
        reasons.append("'metadata' must be a list of {key, value} or an object of text values")
    elif len(metadata) >= METADATA_MAX:
        details["metadata"] = ["too_many_keys"]
        reasons.append(f"'metadata' has {len(metadata)} pairs; at most {METADATA_MAX - 1} fit")
    try:
        tid = transaction_id("wallet_transactions", record, columns)
    except RecordRejected as exc:
        details.update(exc.details)
        reasons.append(exc.message)
        tid = None
    if details:
        raise RecordRejected(details, "; ".join(reasons))
    if not positive:
        raise RecordSkipped("no amount above zero (Lago would create no transaction)")
    assert tid is not None and metadata is not None
    body["metadata"] = [*metadata, {"key": ID_KEY, "value": tid}]
    refuse_unsendable(body)
    return t.cast("dict", plain(body))


def _metadata(value: Any) -> list[dict] | None:
    """The record's own pairs (any earlier `target_lago_id` pair dropped), or None."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [{"key": k, "value": v} for k, v in value.items()]
    if not isinstance(value, list):
        return None
    pairs = []
    for item in value:
        if not isinstance(item, Mapping) or isinstance(item.get("value"), (dict, list)):
            return None
        if item.get("key") != ID_KEY:
            pairs.append({"key": str(item.get("key")), "value": str(item.get("value"))})
    return pairs


def _carries(transaction: dict, tid: str) -> bool:
    return any(
        isinstance(m, Mapping) and m.get("key") == ID_KEY and m.get("value") == tid
        for m in transaction.get("metadata") or []
    )


def record_id(payload: Mapping[str, Any] | None) -> str | None:
    """The `target_lago_id` of a built body."""
    pairs = (payload or {}).get("metadata") or []
    return next((p["value"] for p in pairs if p.get("key") == ID_KEY), None)


class WalletTransactionsSink(OneByOneSink):
    """`POST /wallet_transactions`, each record exactly once through its metadata id."""

    action = "wallet_transactions"
    endpoint = "/wallet_transactions"
    root_key = "wallet_transaction"
    rank = 80
    self_parsed = ("metadata", *CREDITS)

    def setup(self) -> None:
        """Refuse a stream whose rows would get no stable id.

        Raises:
            StreamSetupError: When the stream has no key properties and no
                `transaction_id_columns` entry.
        """
        self.id_columns = self.identifying_columns()
        if not self.id_columns:
            name = self.stream_name
            msg = (
                f"Stream '{name}' has no key properties, so its rows cannot get a "
                "stable id and a replayed top-up would credit twice. Declare the stream's "
                "key properties upstream, or name the columns that identify a row in the "
                f'transaction_id_columns setting, e.g. {{"{name}": ["id"]}}.'
            )
            raise StreamSetupError(msg)
        # (customer, code) -> wallet lago_id, shared by every wallet_transactions sink.
        self._wallet_ids = self.lago.wallet_ids

    def build(self, record: dict) -> tuple[dict, str]:
        """Map a record to a transaction body."""
        payload = transaction_payload(record, self.id_columns)
        self.warn_ignored(
            [
                c
                for c in record
                if c not in TRANSACTION_FIELDS
                and c not in WALLET_REFERENCE
                and c not in self.id_columns
                and not c.startswith("_sdc_")
            ]
        )
        tid = record_id(payload)
        where = payload.get("wallet_id") or (
            f"{payload['wallet_code']!r} of customer {payload['external_customer_id']!r}"
        )
        return payload, f"wallet transaction {tid!r} (wallet {where})"

    def reject(
        self,
        record: dict,
        status: int | None,
        code: str | None,
        details: Any,
        message: str,
        *,
        payload: dict | None = None,
    ) -> None:
        """Dead-letter a record with its `target_lago_id` as the transaction id."""
        tid = record_id(payload)
        super().reject(
            record, status, code, details, message,
            payload={"transaction_id": tid} if tid else None,
        )  # fmt: skip

    def deliver(self, items: list[Item]) -> None:
        """Send each wallet's records in order (a void after its grant), wallets in parallel."""
        groups: dict[Any, list[Item]] = defaultdict(list)
        for item in items:
            p = item.payload
            groups[p.get("wallet_id") or (p["external_customer_id"], p["wallet_code"])].append(item)
        self.lago.inflight.run_all(self._deliver_group, list(groups.values()))

    def _deliver_group(self, group: list[Item]) -> None:
        for item in group:
            self._deliver_one(item)

    def _wallet_id(self, item: Item) -> str | None:
        """The wallet's lago_id (looked up once per run), or None after a rejection."""
        payload = item.payload
        if "wallet_id" in payload:
            return str(payload["wallet_id"])
        ref = (payload["external_customer_id"], payload["wallet_code"])
        if ref in self._wallet_ids:
            return self._wallet_ids[ref]
        wallet, refused = active_wallet(self.lago.client, *ref)
        if refused is not None:
            self.reject_response(item, refused, refused.error_details or refused.body)
            return None
        if wallet is None:
            self.reject(
                item.record,
                None,
                "wallet_not_found",
                {"wallet_code": ["wallet_not_found"]},
                f"{item.key}: customer {ref[0]!r} has no active wallet with code {ref[1]!r}",
                payload=payload,
            )
            return None
        self._wallet_ids[ref] = str(wallet["lago_id"])
        return self._wallet_ids[ref]

    def _settled(self, item: Item, wallet_id: str) -> bool | None:
        """Whether the record's transactions exist (None: the wallet is refused)."""
        tid = str(record_id(item.payload))
        path = f"/wallets/{urllib.parse.quote(wallet_id, safe='')}/wallet_transactions"
        found, refused = list_all(
            self.lago.client, path, {f"metadata[{ID_KEY}]": tid}, "wallet_transactions"
        )
        if refused is not None:
            self.reject_response(item, refused, refused.error_details or refused.body)
            return None
        if not all(_carries(f, tid) for f in found):
            msg = (
                f"GET {path} ignored the metadata[{ID_KEY}] filter: this Lago is older "
                "than v1.51.0, so a replayed wallet transaction cannot be recognised and "
                "would credit twice. Upgrade Lago before sending wallet_transactions."
            )
            raise LagoFilterUnsupported(msg)
        return bool(found)

    def _deliver_one(self, item: Item) -> None:
        wallet_id = self._wallet_id(item)
        if wallet_id is None:
            return
        body = {k: v for k, v in item.payload.items() if k not in WALLET_REFERENCE}
        body["wallet_id"] = wallet_id
        data = encode({self.root_key: body})
        client = self.lago.client
        posted = False
        for attempt in range(client.max_retries + 1):
            settled = self._settled(item, wallet_id)
            if settled is None:
                return
            if settled:
                self.stats.add("delivered" if posted else "already_present")
                return
            try:
                # One attempt only: a retry must follow a fresh read-back.
                response = client.request("POST", self.endpoint, data, max_retries=0)
            except LagoUnavailableError as exc:
                posted = True  # it may have been applied
                self.logger.warning("%s: %s; reading back before retrying", item.key, exc)
                client.pause(attempt)
                continue
            if response.ok:
                self.stats.add("delivered")
            else:
                self.reject_response(item, response, response.error_details or response.body)
            return
        msg = (
            f"POST {client.api_url}{self.endpoint} for {item.key} still failing after "
            f"{client.max_retries} retries. Nothing after the last STATE message is "
            "acknowledged; rerun the same input: transactions already made are recognised."
        )
        raise LagoUnavailableError(msg)
