"""Compare two Lago organisations object by object, as a whole-organisation copy sees them.

Shared by the console-script and the Meltano tests of `tap-lago | target-lago`. Objects are
matched by their natural key (a code, an external id, ...), never by `lago_id`; the ids
Lago assigns (`lago_id`, `lago_*_id`, a customer's `sequential_id` and `slug`) and its
bookkeeping timestamps are left out of the comparison.

`differences(source, copy)` lists every difference; `EXCLUSIONS` says which ones a copy
must show, with the reason the README gives (README "Copying an organisation").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.lago_sandbox import Sandbox

Org = dict[str, list[dict[str, Any]]]

# tap-lago's streams a copy selects, and the seed of the copied organisation.
COPIED = (
    "taxes", "billable_metrics", "features", "add_ons", "plans", "entitlements", "coupons",
    "customers", "wallets", "subscriptions", "subscription_plans", "applied_coupons", "events",
)  # fmt: skip
SOURCE_SEED = {"seed": 42, "customers": 10, "events": 300}
EMPTY = {"customers": 0, "events": 0, "catalog": False}
BALANCE = "25.0"


def organisations(factory: Callable[..., Sandbox]) -> tuple[Sandbox, Sandbox]:
    """A seeded premium organisation and an empty premium one.

    The source has one active wallet holding credits, one active subscription with plan
    overrides (its price, and its first charge's display name and properties) and one
    scheduled downgrade with plan overrides (its price and name).
    """
    source, destination = factory(seed=SOURCE_SEED), factory(seed=EMPTY)
    source.configure(premium=True)
    destination.configure(premium=True)
    override(source)
    override_downgrade(source)
    wallet = next(w for w in source.dump()["wallets"] if w["status"] == "active")
    source.upsert("wallets", {
        "lago_id": wallet["lago_id"], "credits_balance": BALANCE, "balance": BALANCE,
        "balance_cents": 2500, "ongoing_balance_cents": 2500, "credits_ongoing_balance": BALANCE,
    })  # fmt: skip
    return source, destination


def _request(org: Sandbox, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.request(
        method,
        f"{org.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {org.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return dict(response.json())


def override(org: Sandbox) -> dict[str, Any]:
    """Give one active subscription on a plan with charges its own plan; returns it.

    Its plan gains a fixed charge first; the overrides change the price and name, the
    first charge, the fixed charge's units and display name, and the usage thresholds.
    """
    data = org.dump()
    plans = {p["code"]: p for p in data["plans"] if p.get("charges")}
    sub = next(
        s for s in data["subscriptions"] if s["status"] == "active" and s["plan_code"] in plans
    )
    plan = _request(org, "PUT", f"/plans/{sub['plan_code']}", {"plan": {"fixed_charges": [
        {"add_on_code": data["add_ons"][0]["code"], "charge_model": "standard",
         "properties": {"amount": "10"}, "units": 1}]}})["plan"]  # fmt: skip
    charge = plans[sub["plan_code"]]["charges"][0]
    overrides = {
        "amount_cents": 12345,
        "name": "Negotiated",
        "charges": [{"id": charge["lago_id"], "invoice_display_name": "Negotiated usage",
                     "properties": charge["properties"]}],
        "fixed_charges": [{"id": plan["fixed_charges"][0]["lago_id"], "units": 3,
                           "invoice_display_name": "Negotiated seats"}],
        "usage_thresholds": [{"amount_cents": 50000, "threshold_display_name": "Negotiated"}],
    }  # fmt: skip
    response = requests.put(
        f"{org.url}/subscriptions/{sub['external_id']}",
        json={"subscription": {"plan_overrides": overrides}},
        headers={"Authorization": f"Bearer {org.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return dict(response.json()["subscription"])


def override_downgrade(org: Sandbox) -> dict[str, Any]:
    """Give one scheduled downgrade (pending, `previous_plan_code`) its own plan; returns it."""
    sub = next(
        s for s in org.dump()["subscriptions"]
        if s["status"] == "pending" and s.get("previous_plan_code")
    )  # fmt: skip
    overrides = {"amount_cents": 777, "name": "Downgraded"}
    path = f"/subscriptions/{sub['external_id']}?status=pending"
    return dict(_request(org, "PUT", path, {"subscription": {"plan_overrides": overrides}})[
        "subscription"])  # fmt: skip


def copy_settings() -> dict[str, Any]:
    """target-lago's settings for a copy, as meltano.yml gives them (the wallet balances)."""
    project = yaml.safe_load((Path(__file__).parents[1] / "meltano.yml").read_text())
    [plugin] = [p for p in project["plugins"]["loaders"] if p["name"] == "target-lago"]
    return dict(plugin["config"])


Difference = tuple[str, str, str]  # (resource, object key, field or "missing" / "extra")

# Identifiers Lago assigns in each organisation (customers are numbered in order).
LAGO_IDS = frozenset({"lago_id", "sequential_id", "slug"})
# Timestamps that are data a copy carries; every other `*_at` is Lago's bookkeeping.
DATA_TIMES = frozenset({"subscription_at", "ending_at", "expiration_at"})

KEYS: dict[str, Callable[[dict[str, Any]], tuple]] = {
    "taxes": lambda o: (o["code"],),
    "billable_metrics": lambda o: (o["code"],),
    "add_ons": lambda o: (o["code"],),
    "coupons": lambda o: (o["code"],),
    "plans": lambda o: (o["code"],),
    "features": lambda o: (o["code"],),
    "entitlements": lambda o: (o["plan_code"], o["code"]),
    "customers": lambda o: (o["external_id"],),
    "subscriptions": lambda o: (o["external_id"], o["status"], o["plan_code"]),
    "overridden_plans": lambda o: (o["external_subscription_id"], o["status"]),
    "wallets": lambda o: (o["external_customer_id"], o["code"], o["status"]),
    "applied_coupons": lambda o: (o["external_customer_id"], o["coupon_code"], o["status"]),
    "events": lambda o: (o["external_subscription_id"], o["transaction_id"]),
    "invoices": lambda o: (o["lago_id"],),
    "fees": lambda o: (o["lago_id"],),
    "credit_notes": lambda o: (o["lago_id"],),
    "wallet_transactions": lambda o: (o["lago_id"],),
}


def comparable(value: Any) -> Any:
    """A value without Lago's ids and bookkeeping timestamps (nested ones too)."""
    if isinstance(value, dict):
        return {
            k: comparable(v)
            for k, v in value.items()
            if not (k in LAGO_IDS or (k.startswith("lago_") and k.endswith("_id")))
            and not (k.endswith("_at") and k not in DATA_TIMES)
        }
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(source: Org, copy: Org) -> set[Difference]:
    """Every object missing from the copy, extra in it, or holding another field value."""
    out: set[Difference] = set()
    for resource, key in KEYS.items():
        mine = {key(o): comparable(o) for o in source.get(resource, [])}
        theirs = {key(o): comparable(o) for o in copy.get(resource, [])}
        for name in mine.keys() - theirs.keys():
            out.add((resource, "/".join(map(str, name)), "missing"))
        for name in theirs.keys() - mine.keys():
            out.add((resource, "/".join(map(str, name)), "extra"))
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field):
                    out.add((resource, "/".join(map(str, name)), field))
    return out


def _expired(coupon: dict[str, Any]) -> bool:
    at = coupon.get("expiration_at")
    if coupon.get("expiration") != "time_limit" or not at:
        return False
    return datetime.fromisoformat(at.replace("Z", "+00:00")) < datetime.now(timezone.utc)


# What a copy cannot reproduce, and why (the README's list).
EXCLUSIONS: dict[str, str] = {
    "invoices": "generated by Lago itself from subscriptions, usage and add-ons",
    "fees": "generated by Lago itself (the lines of its invoices)",
    "credit_notes": "generated by Lago itself against its invoices",
    "wallet_transactions": "a wallet's history; its balance is granted once instead",
    "ended": "terminated and canceled subscriptions, wallets and applied coupons are history",
    "coupons": "Lago cannot terminate a coupon or take an expiration date in the past",
    "downgrades": "a scheduled downgrade is scheduled again by Lago, which dates its pending "
    "subscription from the current one",
    "wallet history": "consumed credits are a wallet's past; recurring top-up rules would "
    "top it up again on their own schedule",
    "plan history": "an active subscription starts on its current plan (the one it was "
    "upgraded from is a terminated subscription)",
    "coupon credits": "the credits an applied coupon gave are lines of invoices",
}


def expected(source: Org, copy: Org) -> set[Difference]:
    """The differences `EXCLUSIONS` explains, for this source and its copy."""
    out: set[Difference] = set()

    def name(resource: str, obj: dict[str, Any]) -> str:
        return "/".join(map(str, KEYS[resource](obj)))

    for resource in ("invoices", "fees", "credit_notes", "wallet_transactions"):
        out |= {(resource, name(resource, o), "missing") for o in source.get(resource, [])}
    # The balances granted in the copy are its only wallet transactions.
    out |= {
        ("wallet_transactions", name("wallet_transactions", o), "extra")
        for o in copy.get("wallet_transactions", [])
        if o.get("transaction_type") == "inbound" and o.get("transaction_status") == "granted"
    }
    ended = {"subscriptions": ("terminated", "canceled"), "wallets": ("terminated",),
             "applied_coupons": ("terminated",)}  # fmt: skip
    for resource, statuses in ended.items():
        out |= {
            (resource, name(resource, o), "missing")
            for o in source.get(resource, [])
            if o.get("status") in statuses
        }
    out |= {
        ("coupons", name("coupons", o), "missing")
        for o in source.get("coupons", [])
        if o.get("terminated_at") or _expired(o)
    }
    live = {
        (s["external_id"], s["plan_code"]): s
        for s in source.get("subscriptions", [])
        if s.get("status") == "active"
    }
    for sub in source.get("subscriptions", []):
        current = live.get((sub["external_id"], sub.get("previous_plan_code")))
        moved = current is not None and sub.get("subscription_at") != current["subscription_at"]
        if sub.get("status") == "pending" and moved:
            out.add(("subscriptions", name("subscriptions", sub), "subscription_at"))
    for sub in source.get("subscriptions", []):
        if sub.get("status") == "active" and sub.get("previous_plan_code"):
            out.add(("subscriptions", name("subscriptions", sub), "previous_plan_code"))
    for applied in source.get("applied_coupons", []):
        if applied.get("status") == "active" and applied.get("credits"):
            out.add(("applied_coupons", name("applied_coupons", applied), "credits"))
    for wallet in source.get("wallets", []):
        if wallet.get("status") == "active":
            key = name("wallets", wallet)
            if wallet.get("consumed_credits") not in (None, "0.0"):
                out.add(("wallets", key, "consumed_credits"))
            if wallet.get("recurring_transaction_rules"):
                out.add(("wallets", key, "recurring_transaction_rules"))
    return out
